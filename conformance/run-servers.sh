#!/usr/bin/env bash
# Runs the official MCP conformance suite against each reference server (`postern servers`),
# with the strict baseline in reference-servers.expected-failures.yml.
# Usage: conformance/run-servers.sh [path/to/postern]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
postern="${1:-$root/target/debug/postern}"
source "$root/.ci/tools.sh"
work="$(mktemp -d)"
port=$(free_port)
python3 - "$work/demo.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executescript("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO people(name) VALUES ('Ada');")
PY
# whoami only needs a JWKS URL to be mounted; these scenarios never call its tool.
PORT=$port SQLITE_DB_FILE="$work/demo.db" \
  ASSERTION_JWKS_URL="http://127.0.0.1:9/.well-known/pomerium/jwks.json" ASSERTION_ISSUER=localhost \
  RUST_LOG=warn "$postern" servers >"$work/servers.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
status=0
for server in whoami sqlite notion; do
  echo "=== conformance: /$server"
  if ! "$CONFORMANCE" server --url "http://127.0.0.1:$port/$server" \
      --expected-failures "$root/conformance/reference-servers.expected-failures.yml" >"$work/$server.out" 2>&1; then
    status=1
    cat "$work/$server.out"
  fi
  sed -n '/=== SUMMARY ===/,$p' "$work/$server.out"
done
exit $status
