#!/usr/bin/env bash
# The official MCP conformance suite against the fixture server (crates/testkit) three ways:
# directly, through the gateway's route to it with a TE, and through an aggregating route
# (`mcp: {aggregate: ...}`) whose single member is that route with an empty prefix, with a TE
# bound to the aggregate; the results are compared scenario by scenario and must be identical:
# the gateway and the aggregate must be transparent. The direct run must pass every scenario (our
# MCP stack passes the whole suite). The TE comes from the real OAuth flow (the TypeScript SDK client in tests/mcp-client);
# the suite has no option to send it, so add-bearer.mjs adds it inside the suite's process.
# Usage: conformance/run-gateway.sh [target dir with postern and mcp-fixture]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$(cd "${1:-$root/target/debug}" && pwd)"
source "$root/.ci/tools.sh"
work="$(mktemp -d)"
fixture_port=$(free_port)
gateway_port=$(free_port)
hash=$(echo -n conformance-password | "$bin/postern" hash-password)
echo "- {email: conformance@example.com, name: Conformance, password_hash: \"$hash\"}" >"$work/users.yaml"
cat >"$work/postern.yaml" <<YAML
insecure_server: true
address: 127.0.0.1:$gateway_port
data_dir: $work/data
users_file: $work/users.yaml
routes:
  - from: http://localhost
    prefix: /mcp
    to: http://127.0.0.1:$fixture_port/mcp
    id: fixture
    name: Conformance fixture
    allow_any_authenticated_user: true
    mcp: {}
  - from: http://localhost
    path: /all
    id: all
    name: All tools
    allow_any_authenticated_user: true
    mcp:
      aggregate:
        servers:
          - {route: fixture, prefix: ""}
YAML
"$bin/mcp-fixture" "$fixture_port" >"$work/fixture.log" 2>&1 &
fixture=$!
RUST_LOG=warn "$bin/postern" serve --config "$work/postern.yaml" >"$work/gateway.log" 2>&1 &
gateway=$!
trap 'kill $fixture $gateway 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$gateway_port/.pomerium/ping" >/dev/null 2>&1 && break
  sleep 0.1
done

summary() { sed -n '/=== SUMMARY ===/,/^Total:/p' "$1" | grep -E '^[✓✗]' | sort; }
status=0
echo "=== conformance: fixture server, direct"
"$CONFORMANCE" server --suite all --url "http://localhost:$fixture_port/mcp" >"$work/direct.out" 2>&1 || {
  echo "the fixture server does not pass the whole suite:"; status=1; }
summary "$work/direct.out" | tee "$work/direct.sum"
[ -s "$work/direct.sum" ] || { echo "the direct run printed no scenario results:"; tail -20 "$work/direct.out"; exit 1; }
# The suite through the gateway at PATH ("route" names it), with a TE bound to that route from
# the real OAuth flow; compared with the direct run.
through() {
  local name=$1 path=$2
  echo "=== conformance: fixture server through the $name ($path), with a TE"
  local status_without
  status_without=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://localhost:$gateway_port$path" \
    -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' -d '{"jsonrpc":"2.0","id":1,"method":"ping"}')
  [ "$status_without" = 401 ] || { echo "the $name answered $status_without without a TE"; status=1; return; }
  (cd "$root/tests/mcp-client" && TOKEN_OUT="$work/te$name" node client.mjs "http://localhost:$gateway_port" conformance@example.com conformance-password "$path" test_simple_text '{}' 'simple text response') >/dev/null \
    || { echo "the TypeScript SDK client could not call test_simple_text through the $name"; tail -20 "$work/gateway.log"; status=1; return; }
  MCP_BEARER_TOKEN="$(cat "$work/te$name")" MCP_BEARER_ORIGIN="http://localhost:$gateway_port" \
    MCP_UNDICI_FROM="$(readlink -f "$CONFORMANCE")" NODE_OPTIONS="--import $root/conformance/add-bearer.mjs" \
    "$CONFORMANCE" server --suite all --url "http://localhost:$gateway_port$path" >"$work/$name.out" 2>&1 || true
  summary "$work/$name.out" >"$work/$name.sum"
  if diff -u "$work/direct.sum" "$work/$name.sum"; then
    echo "through the $name: identical to direct ($(wc -l <"$work/direct.sum") scenarios)"
  else
    echo "through the $name: DIFFERENT from direct (above); gateway log:"
    tail -20 "$work/gateway.log"
    status=1
  fi
}
through gateway /mcp
through aggregate /all
exit $status
