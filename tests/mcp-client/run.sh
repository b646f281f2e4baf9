#!/usr/bin/env bash
# Drives Postern with the official MCP TypeScript SDK as a real client: the reference servers
# behind the gateway, local sign-in, and for each server the full OAuth flow (discovery,
# registration, sign-in, consent, PKCE, token) then tools/list and tools/call.
# Usage: tests/mcp-client/run.sh [target dir with postern]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${1:-$root/target/debug}"
source "$root/.ci/tools.sh"
work="$(mktemp -d)"
servers_port=$((20000 + RANDOM % 10000)); gateway_port=$((30000 + RANDOM % 10000))
notion_port=$((15000 + RANDOM % 4000)); provider_port=$((11000 + RANDOM % 4000))
hash=$(echo -n acceptance-password | "$bin/postern" hash-password)
cat >"$work/users.yaml" <<YAML
- {email: ada@example.com, name: Ada Lovelace, groups: [staff], password_hash: "$hash"}
YAML
cat >"$work/postern.yaml" <<YAML
insecure_server: true
address: 127.0.0.1:$gateway_port
data_dir: $work/data
users_file: $work/users.yaml
pass_identity_headers: true
routes:
  - from: http://localhost
    prefix: /notion
    to: "http://127.0.0.1:$servers_port/notion"
    allow_any_authenticated_user: true
    mcp:
      upstream_oauth2:
        client_id: notion-client
        client_secret: notion-secret
        endpoint: {auth_url: "http://127.0.0.1:$provider_port/authorize", token_url: "http://127.0.0.1:$provider_port/token", auth_style: header}
  - {from: http://localhost, prefix: /whoami, to: "http://127.0.0.1:$servers_port/whoami", allow_any_authenticated_user: true, mcp: {}}
  - {from: http://localhost, prefix: /sqlite, to: "http://127.0.0.1:$servers_port/sqlite", allow_any_authenticated_user: true, mcp: {}}
YAML
"$bin/fakes" notion $notion_port "$work/notion.log" 2>/dev/null &
fake_notion=$!
"$bin/fakes" provider $provider_port 2>/dev/null &
fake_provider=$!
PORT=$servers_port NOTION_API_BASE_URL="http://127.0.0.1:$notion_port" SQLITE_DB_FILE="$root/examples/demo.db" ASSERTION_JWKS_URL="http://localhost:$gateway_port/.well-known/pomerium/jwks.json" \
  ASSERTION_ISSUER=localhost ASSERTION_AUDIENCE=localhost RUST_LOG=warn "$bin/postern" servers >"$work/servers.log" 2>&1 &
servers=$!
RUST_LOG=warn "$bin/postern" serve --config "$work/postern.yaml" >"$work/gateway.log" 2>&1 &
gateway=$!
trap 'kill $servers $gateway $fake_notion $fake_provider 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:$gateway_port/.pomerium/ping" >/dev/null 2>&1 && break; sleep 0.1; done
cd "$root/tests/mcp-client"
base="http://localhost:$gateway_port"
node client.mjs "$base" ada@example.com acceptance-password /whoami whoami '{}' '"email":"ada@example.com"' || { tail -20 "$work/gateway.log"; exit 1; }
node client.mjs "$base" ada@example.com acceptance-password /sqlite read_query '{"query":"SELECT name FROM customers ORDER BY id LIMIT 1"}' 'Ada Lovelace' || { tail -20 "$work/gateway.log"; exit 1; }
# Notion: the authorization takes the user through the upstream provider; the server gets the
# TI, the client only ever holds the TE.
node client.mjs "$base" ada@example.com acceptance-password /notion search '{"query":"road"}' 'Roadmap' || { tail -20 "$work/gateway.log"; exit 1; }
grep -q "POST /v1/search Bearer ti-acceptance" "$work/notion.log" || { echo "the Notion API never saw the TI"; cat "$work/notion.log"; exit 1; }
if grep -q "pst_" "$work/notion.log"; then echo "a TE reached the Notion API"; exit 1; fi
echo "the Notion API saw only the TI: $(grep -c 'Bearer ti-acceptance' "$work/notion.log") requests"

# The conformance suite's authorization mode (alpha) against Postern's authorization server: it
# checks the metadata, runs an authorization-code grant with PKCE and `resource` (this script
# plays the browser), and checks the callback and the token response.
callback_port=$((40000 + RANDOM % 10000))
client_id=$(curl -fsS -X POST "$base/.pomerium/mcp/register" -H 'content-type: application/json' \
  -d "{\"redirect_uris\":[\"http://127.0.0.1:$callback_port/callback\"],\"token_endpoint_auth_method\":\"none\",\"client_name\":\"conformance\"}" \
  | sed -E 's/.*"client_id":"([^"]+)".*/\1/')
"$CONFORMANCE_ALPHA" authorization --url "$base" --client-id "$client_id" --resource "$base/whoami" --port "$callback_port" >"$work/authz.out" 2>&1 &
authz=$!
for _ in $(seq 1 100); do grep -q "^$base/.pomerium/mcp/authorize" "$work/authz.out" && break; sleep 0.1; done
authorization_url=$(grep -m1 "^$base/.pomerium/mcp/authorize" "$work/authz.out")
node browser.mjs "$authorization_url" "$base" ada@example.com acceptance-password "http://127.0.0.1:$callback_port/callback" >/dev/null
if ! wait $authz; then cat "$work/authz.out"; exit 1; fi
grep -E "SUCCESS|WARNING|FAILURE|passed|failed" "$work/authz.out" | grep -v '^Total:' || true
if grep -qE "WARNING|FAILURE" "$work/authz.out"; then echo "authorization mode reported warnings or failures"; cat "$work/authz.out"; exit 1; fi
echo "conformance authorization mode: no failures, no warnings"
