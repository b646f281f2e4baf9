#!/usr/bin/env bash
# The official MCP conformance suite against the fixture server (crates/testkit), directly and
# through the gateway, and the two results compared scenario by scenario: the gateway must be
# transparent. The direct run must pass every scenario (our MCP stack passes the whole suite).
# Usage: conformance/run-gateway.sh [target dir with postern and mcp-fixture]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-$root/target/debug}"
source "$root/.ci/tools.sh"
work="$(mktemp -d)"
fixture_port=$((20000 + RANDOM % 10000))
gateway_port=$((30000 + RANDOM % 10000))
cat >"$work/postern.yaml" <<YAML
insecure_server: true
address: 127.0.0.1:$gateway_port
routes:
  - from: http://localhost
    prefix: /mcp
    to: http://127.0.0.1:$fixture_port/mcp
    allow_public_unauthenticated_access: true
    mcp: {}
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
echo "=== conformance: fixture server through the gateway"
"$CONFORMANCE" server --suite all --url "http://localhost:$gateway_port/mcp" >"$work/gateway.out" 2>&1 || true
summary "$work/gateway.out" >"$work/gateway.sum"
if diff -u "$work/direct.sum" "$work/gateway.sum"; then
  echo "through the gateway: identical to direct ($(wc -l <"$work/direct.sum") scenarios)"
else
  echo "through the gateway: DIFFERENT from direct (above); gateway log:"
  tail -20 "$work/gateway.log"
  status=1
fi
exit $status
