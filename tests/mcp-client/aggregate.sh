#!/usr/bin/env bash
# One URL for all your tools: the official MCP TypeScript SDK, through the full OAuth flow, as a
# client of an aggregating route (`mcp: {aggregate: ...}`) whose members are the reference
# servers `whoami`, `sqlite` and `notion` (upstream OAuth against the fake provider and the fake
# Notion API), plus a member the user may not use at all. aggregate-client.mjs checks what the
# client sees and can call (see there); mid-test it stops the sqlite member's process. First, a
# user outside the aggregate's policy (every member's policy would let her in) gets no
# authorization for it.
# Usage: tests/mcp-client/aggregate.sh [target dir with postern and fakes]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="$(cd "${1:-$root/target/debug}" && pwd)"
source "$root/.ci/tools.sh"
work="$(mktemp -d)"
port=$(free_port)
servers_port=$(free_port); sqlite_port=$(free_port)
notion_port=$(free_port); provider_port=$(free_port)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
fail() { echo "$1"; echo "--- gateway log"; tail -30 "$work/gateway.log"; exit 1; }

"$bin/fakes" notion $notion_port "$work/notion.log" 2>/dev/null & pids+=($!)
"$bin/fakes" provider $provider_port 2>/dev/null & pids+=($!)
# whoami and notion in one `postern servers`; sqlite in another, so that it can be stopped alone.
PORT=$servers_port ASSERTION_JWKS_URL="http://127.0.0.1:$port/.well-known/pomerium/jwks.json" \
  ASSERTION_ISSUER=localhost,127.0.0.1,::1 NOTION_API_BASE_URL="http://127.0.0.1:$notion_port" RUST_LOG=warn \
  "$bin/postern" servers >"$work/servers.log" 2>&1 & pids+=($!)
cp "$root/examples/demo.db" "$work/demo.db"
PORT=$sqlite_port SQLITE_DB_FILE="$work/demo.db" RUST_LOG=warn "$bin/postern" servers >"$work/sqlite.log" 2>&1 &
sqlite_pid=$!; pids+=($sqlite_pid); disown $sqlite_pid  # killed on purpose mid-test

hash=$(echo -n ada-password | "$bin/postern" hash-password)
{
  echo "- {email: ada@example.com, name: Ada, groups: [staff], password_hash: \"$hash\"}"
  echo "- {email: eve@elsewhere.test, name: Eve, groups: [admin], password_hash: \"$hash\"}"
} >"$work/users.yaml"
cat >"$work/postern.yaml" <<YAML
insecure_server: true
address: 127.0.0.1:$port
data_dir: $work/data
users_file: $work/users.yaml
pass_identity_headers: true
routes:
  # The one URL: its own policy, a TE bound to it.
  - from: http://localhost
    path: /tools
    name: All tools
    id: tools
    policy: {allow: {and: [{domain: {is: example.com}}]}}
    mcp:
      aggregate:
        servers:
          - whoami
          - sqlite
          - route: notion
            prefix: "docs_"
            timeout: 20s
          - admin
  - from: http://localhost
    prefix: /whoami
    to: http://127.0.0.1:$servers_port/whoami
    name: whoami
    allow_any_authenticated_user: true
    mcp: {}
  # describe_table is denied on the member's own URL, so through the aggregate too.
  - from: http://localhost
    prefix: /sqlite
    to: http://127.0.0.1:$sqlite_port/sqlite
    id: sqlite
    name: sqlite
    policy:
      allow: {and: [{authenticated_user: true}]}
      deny: {or: [{mcp_tool: {in: [describe_table]}}]}
    mcp: {}
  - from: http://localhost
    prefix: /notion
    to: http://127.0.0.1:$servers_port/notion
    id: notion
    name: Notion
    allow_any_authenticated_user: true
    mcp:
      server:
        upstream_oauth2:
          client_id: notion-client
          client_secret: notion-secret
          endpoint:
            auth_url: http://127.0.0.1:$provider_port/authorize
            token_url: http://127.0.0.1:$provider_port/token
            auth_style: header
  # A member Ada may not use at all (she is not in admin).
  - from: http://localhost
    prefix: /admin
    to: http://127.0.0.1:$servers_port/whoami
    id: admin
    name: admin
    policy: {allow: {and: [{groups: {has: admin}}]}}
    mcp: {}
YAML
RUST_LOG=warn "$bin/postern" serve --config "$work/postern.yaml" >"$work/gateway.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/.pomerium/ping" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$port/.pomerium/ping" >/dev/null 2>&1 || fail "the gateway did not start"
for p in $servers_port $sqlite_port; do
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$p/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
done

cd "$root/tests/mcp-client"
EXPECT_REFUSED=1 node aggregate-client.mjs "http://localhost:$port" eve@elsewhere.test ada-password /tools || fail "eve"
SQLITE_PID=$sqlite_pid node aggregate-client.mjs "http://localhost:$port" ada@example.com ada-password /tools || fail "aggregate client"
grep -q "POST /v1/search Bearer ti-acceptance" "$work/notion.log" || { echo "the Notion API never saw the TI"; cat "$work/notion.log"; exit 1; }
if grep -q "pst_" "$work/notion.log"; then echo "a TE reached the Notion API through the aggregate"; exit 1; fi
echo "ok: the Notion API saw only the TI through the aggregate: $(grep -c 'Bearer ti-acceptance' "$work/notion.log") requests"
