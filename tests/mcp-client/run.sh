#!/usr/bin/env bash
# Acceptance, as a new user would do it: `postern up` in a fresh data directory, then the official
# MCP TypeScript SDK as a real client of each server (discovery, registration, sign-in, consent,
# PKCE, token, tools/list, tools/call), the portal in headless Chromium, a restart that keeps the
# user, keys and tokens, Ctrl-C, and the conformance suite's authorization mode.
# Notion's OAuth and API are the faithful fakes from crates/testkit (`fakes`).
# Usage: tests/mcp-client/run.sh [target dir with postern]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="$(cd "${1:-$root/target/debug}" && pwd)"
source "$root/.ci/tools.sh"
work="$(mktemp -d)"
port=$(free_port)
notion_port=$(free_port); provider_port=$(free_port)
"$bin/fakes" notion $notion_port "$work/notion.log" 2>/dev/null &
fake_notion=$!
"$bin/fakes" provider $provider_port 2>/dev/null &
fake_provider=$!
up=""
trap 'kill $up $fake_notion $fake_provider 2>/dev/null || true; rm -rf "$work"' EXIT
start_up() {
  NOTION_CLIENT_ID=notion-client NOTION_CLIENT_SECRET=notion-secret \
    NOTION_AUTH_URL="http://127.0.0.1:$provider_port/authorize" NOTION_TOKEN_URL="http://127.0.0.1:$provider_port/token" \
    NOTION_API_BASE_URL="http://127.0.0.1:$notion_port" RUST_LOG=warn \
    "$bin/postern" up --data-dir "$work/data" --port "$port" >"$work/up.out" 2>"$work/up.err" &
  up=$!
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/.pomerium/ping" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "postern up did not start"; cat "$work/up.out" "$work/up.err"; exit 1
}
fail() { echo "$1"; tail -20 "$work/up.err"; exit 1; }
start_up
base="http://localhost:$port"
grep -q "claude mcp add --transport http whoami $base/whoami" "$work/up.out" || fail "no client commands printed"
[ "$(stat -c %a "$work/data/credentials.txt")" = 600 ] || fail "credentials.txt is not mode 0600"
email=$(sed -n 's/^email: //p' "$work/data/credentials.txt")
password=$(sed -n 's/^password: //p' "$work/data/credentials.txt")
grep -q "password: $password (shown once" "$work/up.out" || fail "the new password was not printed"
cd "$root/tests/mcp-client"
TOKEN_OUT="$work/te" node client.mjs "$base" "$email" "$password" /whoami whoami '{}' "\"email\":\"$email\"" || fail "whoami"
node client.mjs "$base" "$email" "$password" /sqlite read_query '{"query":"SELECT name FROM customers ORDER BY id LIMIT 1"}' 'Ada Lovelace' || fail "sqlite"
# Every loopback name serves the routes: the same client at 127.0.0.1 (the portal runs there too).
node client.mjs "http://127.0.0.1:$port" "$email" "$password" /sqlite read_query '{"query":"SELECT name FROM customers ORDER BY id LIMIT 1"}' 'Ada Lovelace' || fail "sqlite at 127.0.0.1"
# Confidential clients: registered with a secret, sent in the form or as HTTP Basic.
for auth in client_secret_post client_secret_basic; do
  CLIENT_AUTH=$auth node client.mjs "$base" "$email" "$password" /whoami whoami '{}' "\"email\":\"$email\"" >/dev/null || fail "whoami with $auth"
  echo "ok: a confidential client authenticated with $auth"
done
# Notion: the authorization takes the user through the upstream provider; the server gets the
# TI, the client only ever holds the TE.
node client.mjs "$base" "$email" "$password" /notion search '{"query":"road"}' 'Roadmap' || fail "notion"
grep -q "POST /v1/search Bearer ti-acceptance" "$work/notion.log" || { echo "the Notion API never saw the TI"; cat "$work/notion.log"; exit 1; }
if grep -q "pst_" "$work/notion.log"; then echo "a TE reached the Notion API"; exit 1; fi
echo "the Notion API saw only the TI: $(grep -c 'Bearer ti-acceptance' "$work/notion.log") requests"

# The portal in headless Chromium.
mkdir -p "$root/target"
node portal.mjs "http://127.0.0.1:$port" "$email" "$password" "$root/target/portal.png" || fail "portal"
node connected-apps.mjs "$base" "$email" "$password" "$root/target/connected-apps.png" || fail "connected apps"

# Ctrl-C stops cleanly; a re-run keeps the user, the keys and the tokens.
kill -INT $up
for _ in $(seq 1 100); do kill -0 $up 2>/dev/null || break; sleep 0.1; done
if kill -0 $up 2>/dev/null; then fail "postern up still running 10 s after Ctrl-C"; fi
wait $up && echo "ok: Ctrl-C stopped postern up with status 0" || fail "postern up exited with status $? after Ctrl-C"
start_up
grep -q "password: in $work/data/credentials.txt" "$work/up.out" || fail "the re-run did not reuse the user"
status=$(curl -sS -o "$work/reuse.json" -w '%{http_code}' -X POST "$base/whoami" -H "authorization: Bearer $(cat "$work/te")" \
  -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
  -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}')
[ "$status" = 200 ] || { cat "$work/reuse.json"; fail "the TE issued before the restart answered $status"; }
echo "ok: after a restart the same user signs in and the earlier TE still works"

# The conformance suite's authorization mode (alpha) against Postern's authorization server: it
# checks the metadata, runs an authorization-code grant with PKCE and `resource` (this script
# plays the browser), and checks the callback and the token response.
# Below the kernel's ephemeral range (32768-60999 here), where an outgoing connection of any
# other process could hold the port first.
callback_port=$(free_port)
client_id=$(curl -fsS -X POST "$base/.pomerium/mcp/register" -H 'content-type: application/json' \
  -d "{\"redirect_uris\":[\"http://127.0.0.1:$callback_port/callback\"],\"token_endpoint_auth_method\":\"none\",\"client_name\":\"conformance\"}" \
  | sed -E 's/.*"client_id":"([^"]+)".*/\1/')
"$CONFORMANCE_ALPHA" authorization --url "$base" --client-id "$client_id" --resource "$base/whoami" --port "$callback_port" >"$work/authz.out" 2>&1 &
authz=$!
for _ in $(seq 1 100); do grep -q "^$base/.pomerium/mcp/authorize" "$work/authz.out" && break; sleep 0.1; done
authorization_url=$(grep -m1 "^$base/.pomerium/mcp/authorize" "$work/authz.out")
node browser.mjs "$authorization_url" "$base" "$email" "$password" "http://127.0.0.1:$callback_port/callback" >/dev/null ||
  { echo "the browser could not complete the conformance authorization; the suite said:"; cat "$work/authz.out"; exit 1; }
if ! wait $authz; then cat "$work/authz.out"; exit 1; fi
grep -E "SUCCESS|WARNING|FAILURE|passed|failed" "$work/authz.out" | grep -v '^Total:' || true
if grep -qE "WARNING|FAILURE" "$work/authz.out"; then echo "authorization mode reported warnings or failures"; cat "$work/authz.out"; exit 1; fi
echo "conformance authorization mode: no failures, no warnings"
