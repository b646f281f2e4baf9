#!/usr/bin/env bash
# Upstream OAuth auto-discovery, end to end: the official TypeScript SDK's example MCP server
# with its own authorization server (--oauth-strict: it only accepts tokens issued for its own
# URL, so Postern must send `resource`), behind a Postern route with no upstream_oauth2; the
# official TypeScript SDK as the MCP client, holding only a TE. Also: a route whose upstream
# 401s without metadata passes the 401 through. Then the official MCP Python SDK's OAuth client
# (pinned in .ci/tools.sh), which does not retry an authorization within a connection, in ONE
# connection on a fresh route: Postern's /authorize discovers the upstream and the user goes
# through the upstream's consent in the same browser trip. And a browser-based client: a page on
# another origin in headless Chromium with the TypeScript client's TE.
# Usage: tests/mcp-client/discovery.sh [target dir with postern]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="$(cd "${1:-$root/target/debug}" && pwd)"
source "$root/.ci/tools.sh"
work="$(mktemp -d)"
port=$(free_port); mcp_port=$(free_port); auth_port=$(free_port)
cd "$root/tests/mcp-client"
MCP_PORT=$mcp_port MCP_AUTH_PORT=$auth_port node node_modules/@modelcontextprotocol/sdk/dist/esm/examples/server/simpleStreamableHttp.js --oauth --oauth-strict >"$work/upstream.log" 2>&1 &
upstream=$!
hash=$(echo -n discovery-password | "$bin/postern" hash-password)
echo "- {email: ada@example.com, name: Ada, password_hash: \"$hash\"}" >"$work/users.yaml"
cat >"$work/postern.yaml" <<YAML
insecure_server: true
address: 127.0.0.1:$port
data_dir: $work/data
users_file: $work/users.yaml
# The example's authorization server is on another port of the same host: trusting the
# upstream's host means that host and port only, so it is listed.
mcp_allowed_as_metadata_domains: ["localhost:$auth_port"]
routes:
  - from: http://localhost
    prefix: /remote
    to: http://localhost:$mcp_port/mcp
    name: Remote MCP server with its own OAuth
    allow_any_authenticated_user: true
    mcp: {}
  - from: http://localhost
    prefix: /python-legacy
    to: http://localhost:$mcp_port/mcp
    name: The same server, for the Python SDK (handshake era)
    allow_any_authenticated_user: true
    mcp: {}
  - from: http://localhost
    prefix: /python-auto
    to: http://localhost:$mcp_port/mcp
    name: The same server, for the Python SDK (auto)
    allow_any_authenticated_user: true
    mcp: {}
YAML
RUST_LOG=warn,postern::audit=info "$bin/postern" serve --config "$work/postern.yaml" >"$work/gateway.log" 2>&1 &
gateway=$!
trap 'kill $upstream $gateway 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/.pomerium/ping" >/dev/null 2>&1 && curl -s -o /dev/null "http://localhost:$mcp_port/mcp" && break
  sleep 0.1
done
TOKEN_OUT="$work/te" node discovery-client.mjs "http://localhost:$port" ada@example.com discovery-password /remote || { tail -30 "$work/gateway.log"; tail -20 "$work/upstream.log"; exit 1; }
grep -q '"upstream_discovered"\|upstream_discovered' "$work/gateway.log" || { echo "no discovery in the audit log"; tail -20 "$work/gateway.log"; exit 1; }
echo "ok: discovery logged: $(sed 's/\x1b\[[0-9;]*m//g' "$work/gateway.log" | grep -o 'client_id=[^ ]*' | head -1)"
# A browser-based client (a page on another origin in headless Chromium) with that TE.
node browser-client.mjs "http://localhost:$port/remote" "$work/te" || { tail -30 "$work/gateway.log"; exit 1; }
if [ -z "${MCP_PYTHON:-}" ]; then
  if [ -n "${CI:-}" ]; then echo "MCP_PYTHON is not set: source .ci/tools.sh" >&2; exit 1; fi
  echo "SKIPPED: the MCP Python SDK is not installed (source .ci/tools.sh)" >&2
  exit 0
fi
for mode in legacy auto; do
  "$MCP_PYTHON" python-client.py "http://localhost:$port" ada@example.com discovery-password "/python-$mode" "$mode" || { tail -30 "$work/gateway.log"; exit 1; }
done
