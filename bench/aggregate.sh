#!/usr/bin/env bash
# The aggregate route's benchmark (bench/run.sh runs it at its end; it also runs alone):
# - tools/call of one member's tool through an aggregating route (`mcp: {aggregate: ...}`) next
#   to the same call through that member's own route: the latency the aggregate adds (p50, p99)
#   and its throughput relative to the member's route, at a few concurrencies;
# - tools/list latency through an aggregate of 5 members (merged and filtered lists, members
#   asked in parallel) next to one member's own route.
# Members are the fixture MCP server (stateless, JSON responses); both routes have the same
# sign-in and policy, so the difference is the aggregate's own work. Prints; asserts nothing.
#
# Usage: bench/aggregate.sh [SECONDS_PER_POINT]   (loopback only; stops by itself)
# BENCH_BIN=DIR uses the binaries there instead of building release ones (to check the script).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-5}"
cd "$root"
source "$root/.ci/ports.sh"
if [ -n "${BENCH_BIN:-}" ]; then
  bin="$(cd "$BENCH_BIN" && pwd)"
else
  cargo build --release --locked -q -p postern -p postern-testkit
  bin="$root/target/release"
fi
work="$(mktemp -d)"
up=$(free_port); pst=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$bin/mcp-fixture" "$up" --stateless 2>"$work/fixture.log" & pids+=($!)
hash=$(echo -n bench-password | "$bin/postern" hash-password)
cat >"$work/users.yaml" <<YAML
- {email: bench@example.com, name: Bench, password_hash: "$hash"}
YAML
policy='policy: {allow: {and: [{domain: {is: example.com}}]}, deny: {or: [{mcp_tool: {in: [test_error_handling]}}]}}'
{
  cat <<YAML
insecure_server: true
address: 127.0.0.1:$pst
data_dir: $work/data
users_file: $work/users.yaml
pass_identity_headers: true
routes:
  - from: http://127.0.0.1
    path: /one
    id: one
    name: One
    $policy
    mcp:
      aggregate:
        servers: [m1]
  - from: http://127.0.0.1
    path: /five
    id: five
    name: Five
    $policy
    mcp:
      aggregate:
        servers: [m1, m2, m3, m4, m5]
YAML
  for m in 1 2 3 4 5; do
    cat <<YAML
  - from: http://127.0.0.1
    prefix: /m$m
    to: http://127.0.0.1:$up/mcp
    id: m$m
    name: m$m
    $policy
    mcp: {}
YAML
  done
} >"$work/postern.yaml"
RUST_LOG=warn "$bin/postern" serve --config "$work/postern.yaml" 2>"$work/postern.log" & pids+=($!)
for port in $up $pst; do
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
csrf_jar="$work/csrf.jar"
csrf=$(curl -s -c "$csrf_jar" "http://127.0.0.1:$pst/.pomerium/sign_in" | sed -n 's/.*name="csrf_token" value="\([^"]*\)".*/\1/p')
cookie=$(curl -s -b "$csrf_jar" -D - -o /dev/null -d "email=bench@example.com&password=bench-password&csrf_token=$csrf" \
  "http://127.0.0.1:$pst/.pomerium/sign_in" | sed -n 's/^[Ss]et-[Cc]ookie: \(_postern=[^;]*\).*/\1/p')
[ -n "$cookie" ] || { echo "bench/aggregate: sign-in failed"; tail -5 "$work/postern.log"; exit 1; }

call() { printf '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"%s","arguments":{}}}' "$1"; }
list='{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}'
# Each path must answer what is measured (loadgen counts any 2xx): check once before measuring.
expect() {
  local path=$1 body=$2 want=$3 got
  got=$(curl -s -X POST "http://127.0.0.1:$pst$path" -H "cookie: $cookie" -H 'content-type: application/json' \
    -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: 2025-06-18' -d "$body")
  grep -q "$want" <<<"$got" || { echo "bench/aggregate: $path did not answer $want: ${got:0:400}"; tail -5 "$work/postern.log"; exit 1; }
}
expect /m1 "$(call test_simple_text)" 'This is a simple text response'
expect /one "$(call m1_test_simple_text)" 'This is a simple text response'
expect /five "$list" 'm5_test_simple_text'
run() { "$bin/loadgen" post "http://127.0.0.1:$pst$1" "$2" "$3" "$4" "cookie: $cookie"; }
# Warm up.
run /m1 4 1 "$(call test_simple_text)" >/dev/null
run /one 4 1 "$(call m1_test_simple_text)" >/dev/null
run /five 4 1 "$list" >/dev/null

declare -A result
for c in 1 16 64; do
  result[member,$c]=$(run /m1 "$c" "$seconds" "$(call test_simple_text)")
  result[aggregate,$c]=$(run /one "$c" "$seconds" "$(call m1_test_simple_text)")
done
for c in 1 16; do
  result[list-member,$c]=$(run /m1 "$c" "$seconds" "$list")
  result[list-five,$c]=$(run /five "$c" "$seconds" "$list")
done
field() { sed -E "s/.*\"$2\":([0-9.]+).*/\1/" <<<"${result[$1]}"; }
printf '\nAggregate route: tools/call of a member tool, member route vs aggregate (%ss per point, loopback, %s cores)\n' "$seconds" "$(nproc)"
printf '%-4s %-10s %9s %8s %8s %8s %7s | %9s %9s %8s\n' conc path req/s p50µs p90µs p99µs errors "+p50" "+p99" "rps/mem"
for c in 1 16 64; do
  for target in member aggregate; do
    printf '%-4s %-10s %9s %8s %8s %8s %7s | %+8dµs %+8dµs %8.2f\n' "$c" "$target" "$(field "$target,$c" rps)" \
      "$(field "$target,$c" p50_us)" "$(field "$target,$c" p90_us)" "$(field "$target,$c" p99_us)" "$(field "$target,$c" errors)" \
      "$(($(field "$target,$c" p50_us) - $(field "member,$c" p50_us)))" "$(($(field "$target,$c" p99_us) - $(field "member,$c" p99_us)))" \
      "$(echo "$(field "$target,$c" rps) / $(field "member,$c" rps)" | bc -l)"
  done
done
printf '\nAggregate route: tools/list, one member route vs an aggregate of 5 members\n'
printf '%-4s %-12s %9s %8s %8s %8s %7s\n' conc path req/s p50µs p90µs p99µs errors
for c in 1 16; do
  for target in list-member list-five; do
    printf '%-4s %-12s %9s %8s %8s %8s %7s\n' "$c" "${target#list-}" "$(field "$target,$c" rps)" \
      "$(field "$target,$c" p50_us)" "$(field "$target,$c" p90_us)" "$(field "$target,$c" p99_us)" "$(field "$target,$c" errors)"
  done
done
