#!/usr/bin/env bash
# The official MCP SDKs' refresh grant during a store outage at the gateway: a gateway on a
# PostgreSQL database of its own, which is made to refuse connections (the shared cluster keeps
# running) while the SDK refreshes, then allowed again. The TypeScript SDK (refresh-outage.mjs)
# and the Python SDK (refresh-outage.py) report what they do with 503 + Retry-After
# (`temporarily_unavailable`); the script fails when the gateway answers anything else, or the
# kept refresh token does not work once the database is back.
# Usage: tests/mcp-client/refresh-outage.sh [target dir with postern and mcp-fixture]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="$(cd "${1:-$root/target/debug}" && pwd)"
source "$root/.ci/tools.sh"
if [ -z "${POSTERN_TEST_POSTGRES_URL:-}" ]; then
  if [ -n "${CI:-}" ]; then echo "POSTERN_TEST_POSTGRES_URL is not set" >&2; exit 1; fi
  echo "SKIPPED: POSTERN_TEST_POSTGRES_URL is not set (bash .ci/postgres.sh prints it)" >&2
  exit 0
fi
work="$(mktemp -d)"
db="postern_outage_$$"
port=$(free_port); up=$(free_port)
psql "$POSTERN_TEST_POSTGRES_URL" -qc "CREATE DATABASE $db" >/dev/null
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; psql "$POSTERN_TEST_POSTGRES_URL" -qc "ALTER DATABASE $db ALLOW_CONNECTIONS true" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
export OUTAGE_CMD="psql '$POSTERN_TEST_POSTGRES_URL' -qAtc 'ALTER DATABASE $db ALLOW_CONNECTIONS false' -c \"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$db'\" >/dev/null"
export RESTORE_CMD="psql '$POSTERN_TEST_POSTGRES_URL' -qc 'ALTER DATABASE $db ALLOW_CONNECTIONS true'"
"$bin/mcp-fixture" "$up" 2>"$work/fixture.log" & pids+=($!)
hash=$(echo -n outage-password | "$bin/postern" hash-password)
echo "- {email: ada@example.com, password_hash: '$hash'}" >"$work/users.yaml"
cat >"$work/postern.yaml" <<YAML
insecure_server: true
address: 127.0.0.1:$port
data_dir: $work/data
users_file: users.yaml
databroker_storage_type: postgres
databroker_storage_connection_string: '${POSTERN_TEST_POSTGRES_URL%/*}/$db'
shared_secret: $(head -c 32 /dev/urandom | base64)
routes:
  - {from: http://localhost, prefix: /mcp, to: 'http://127.0.0.1:$up/mcp', allow_any_authenticated_user: true, mcp: {}}
YAML
RUST_LOG=warn "$bin/postern" serve --config "$work/postern.yaml" >"$work/gateway.log" 2>&1 & pids+=($!)
for _ in $(seq 1 200); do curl -fsS -o /dev/null "http://127.0.0.1:$port/.pomerium/ping" 2>/dev/null && break; sleep 0.1; done
cd "$root/tests/mcp-client"
node refresh-outage.mjs "http://localhost:$port" ada@example.com outage-password /mcp || { tail -20 "$work/gateway.log"; exit 1; }
if [ -z "${MCP_PYTHON:-}" ]; then
  if [ -n "${CI:-}" ]; then echo "MCP_PYTHON is not set: source .ci/tools.sh" >&2; exit 1; fi
  echo "SKIPPED: the MCP Python SDK is not installed (source .ci/tools.sh)" >&2
  exit 0
fi
"$MCP_PYTHON" refresh-outage.py "http://localhost:$port" ada@example.com outage-password /mcp || { tail -20 "$work/gateway.log"; exit 1; }
