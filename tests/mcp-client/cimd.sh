#!/usr/bin/env bash
# Client ID metadata documents, end to end: the official TypeScript SDK as an MCP client that
# identifies itself with an https client_id URL (no registration); Postern fetches the document
# (TLS verified against a test CA given through SSL_CERT_FILE; localhost is listed in
# mcp_allowed_client_id_domains, as an internal client's host would be), checks it, and runs the
# authorization; then a tools/call through Postern to the fixture server.
# Usage: tests/mcp-client/cimd.sh [target dir with postern and mcp-fixture]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="$(cd "${1:-$root/target/debug}" && pwd)"
source "$root/.ci/tools.sh"
work="$(mktemp -d)"
port=$(free_port); doc_port=$(free_port); up_port=$(free_port)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# A test CA and a certificate for localhost signed by it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=postern-test-ca \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$work/leaf.key" -out "$work/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$work/leaf.ext"
openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 1 \
  -extfile "$work/leaf.ext" -out "$work/leaf.pem" 2>/dev/null
cat /etc/ssl/certs/ca-certificates.crt "$work/ca.pem" >"$work/bundle.pem" 2>/dev/null || cp "$work/ca.pem" "$work/bundle.pem"

cd "$root/tests/mcp-client"
node cimd-server.mjs "$doc_port" "$work/leaf.pem" "$work/leaf.key" http://127.0.0.1:33418/callback >"$work/doc.log" 2>&1 &
pids+=($!)
"$bin/mcp-fixture" "$up_port" --stateless >"$work/fixture.log" 2>&1 &
pids+=($!)
hash=$(echo -n cimd-password | "$bin/postern" hash-password)
echo "- {email: ada@example.com, name: Ada, password_hash: \"$hash\"}" >"$work/users.yaml"
cat >"$work/postern.yaml" <<YAML
insecure_server: true
address: 127.0.0.1:$port
data_dir: $work/data
users_file: $work/users.yaml
mcp_allowed_client_id_domains: [localhost]
routes:
  - from: http://localhost
    prefix: /fixture
    to: http://127.0.0.1:$up_port/mcp
    allow_any_authenticated_user: true
    mcp: {}
YAML
SSL_CERT_FILE="$work/bundle.pem" RUST_LOG=warn "$bin/postern" serve --config "$work/postern.yaml" >"$work/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/.pomerium/ping" >/dev/null 2>&1 && grep -q serving "$work/doc.log" && break
  sleep 0.1
done
metadata="https://localhost:$doc_port/oauth/client.json"
fail() { echo "FAILED: $*"; tail -20 "$work/gateway.log"; cat "$work/doc.log"; exit 1; }
CLIENT_METADATA_URL="$metadata" node client.mjs "http://localhost:$port" ada@example.com cimd-password /fixture \
  test_simple_text '{}' 'This is a simple text response for testing.' || fail "the CIMD client flow"
grep -q "fetched /oauth/client.json" "$work/doc.log" || fail "Postern never fetched the metadata document"
echo "ok: CIMD client ($metadata) authorized and called test_simple_text"

# The same document behind a certificate Postern does not trust: the client is refused.
port2=$((port + 1))
sed "s/127.0.0.1:$port/127.0.0.1:$port2/; s#data_dir: .*#data_dir: $work/data2#" "$work/postern.yaml" >"$work/postern2.yaml"
RUST_LOG=warn "$bin/postern" serve --config "$work/postern2.yaml" >"$work/gateway2.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port2/.pomerium/ping" >/dev/null 2>&1 && break; sleep 0.1; done
if CLIENT_METADATA_URL="$metadata" node client.mjs "http://localhost:$port2" ada@example.com cimd-password /fixture \
  test_simple_text '{}' 'This is a simple text response for testing.' >"$work/untrusted.out" 2>&1; then
  fail "a metadata document behind an untrusted certificate was accepted"
fi
grep -q "invalid peer certificate" "$work/untrusted.out" || fail "refused, but not for the certificate: $(cat "$work/untrusted.out")"
echo "ok: the same document behind an untrusted certificate is refused ($(grep -o "invalid peer certificate: [A-Za-z]*" "$work/untrusted.out" | head -1))"
