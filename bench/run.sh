#!/usr/bin/env bash
# The data-path benchmark: tools/call latency and throughput to a small MCP upstream (the
# fixture server, stateless, JSON responses), directly, through nginx as a plain reverse proxy,
# and through Postern, at a few concurrencies, in one run on this machine; then Postern's memory
# idle, under load, and with 1,000 open SSE streams. Prints a table; asserts nothing.
#
# Usage: bench/run.sh [SECONDS_PER_POINT]   (loopback only; stops by itself)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-5}"
cd "$root"
if ! command -v nginx >/dev/null; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi
cargo build --release --locked -q -p postern -p postern-testkit
bin="$root/target/release"
work="$(mktemp -d)"
up=$((20000 + RANDOM % 5000)); ngx=$((25000 + RANDOM % 5000)); pst=$((30000 + RANDOM % 5000))
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$bin/mcp-fixture" "$up" --stateless 2>"$work/fixture.log" & pids+=($!)
mkdir -p "$work/nginx/logs"
cat >"$work/nginx.conf" <<NGINX
worker_processes 2;
daemon off;
error_log $work/nginx/logs/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  upstream mcp { server 127.0.0.1:$up; keepalive 128; }
  server {
    listen 127.0.0.1:$ngx;
    location / {
      proxy_pass http://mcp;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }
  }
}
NGINX
nginx -p "$work/nginx" -c "$work/nginx.conf" & pids+=($!)
hash=$(echo -n bench-password | "$bin/postern" hash-password)
cat >"$work/users.yaml" <<YAML
- {email: bench@example.com, name: Bench, groups: [staff], password_hash: "$hash"}
YAML
# Two routes to the same upstream: one public, one with sign-in, a policy with an mcp_tool rule
# and the identity assertion (the cost of authorization on the request path).
cat >"$work/postern.yaml" <<YAML
insecure_server: true
address: 127.0.0.1:$pst
data_dir: $work/data
users_file: $work/users.yaml
routes:
  - from: http://127.0.0.1
    prefix: /auth
    to: http://127.0.0.1:$up/mcp
    pass_identity_headers: true
    policy:
      allow: {and: [{authenticated_user: true}]}
      deny: {or: [{mcp_tool: {in: [test_error_handling]}}]}
    mcp: {}
  - from: http://127.0.0.1
    to: http://127.0.0.1:$up
    allow_public_unauthenticated_access: true
    mcp: {}
YAML
RUST_LOG=warn "$bin/postern" serve --config "$work/postern.yaml" 2>"$work/postern.log" & postern=$!; pids+=($postern)
for port in $up $ngx $pst; do
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
# The sign-in form's anti-forgery pair (its cookie and field), fetched once and reused.
csrf_jar="$work/csrf.jar"
csrf=$(curl -s -c "$csrf_jar" "http://127.0.0.1:$pst/.pomerium/sign_in" | sed -n 's/.*name="csrf_token" value="\([^"]*\)".*/\1/p')
sign_in_form="email=bench@example.com&password=bench-password&csrf_token=$csrf"
cookie=$(curl -s -b "$csrf_jar" -D - -o /dev/null -d "$sign_in_form" "http://127.0.0.1:$pst/.pomerium/sign_in" | sed -n 's/^[Ss]et-[Cc]ookie: \(_postern=[^;]*\).*/\1/p')
[ -n "$cookie" ] || { echo "bench: sign-in failed"; exit 1; }
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

body='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"test_simple_text","arguments":{}}}'
# Warm up every path.
for port in $up $ngx $pst; do "$bin/loadgen" post "http://127.0.0.1:$port/mcp" 4 1 "$body" >/dev/null; done
"$bin/loadgen" post "http://127.0.0.1:$pst/auth" 4 1 "$body" "cookie: $cookie" >/dev/null
idle_rss=$(rss $postern)
# Sign-ins (argon2id, 19 MiB of working memory each, 8 at once): memory must come back.
signins=()
for _ in $(seq 1 8); do
  curl -s -o /dev/null -b "$csrf_jar" -d "$sign_in_form" "http://127.0.0.1:$pst/.pomerium/sign_in" &
  signins+=($!)
done
wait "${signins[@]}"
signin_rss=$(rss $postern)
# tools/call latency while sign-ins keep coming (4 at a time for 3 s): password checks must not
# stall the proxy.
signing=()
for _ in 1 2 3 4; do
  ( end=$((SECONDS + 3)); while [ $SECONDS -lt $end ]; do
      curl -s -o /dev/null -b "$csrf_jar" -d "$sign_in_form" "http://127.0.0.1:$pst/.pomerium/sign_in"
    done ) & signing+=($!)
done
during_signins=$("$bin/loadgen" post "http://127.0.0.1:$pst/mcp" 4 2 "$body")
wait "${signing[@]}"

declare -A result
for c in 1 16 64; do
  for target in direct nginx postern postern+auth; do
    case $target in direct) port=$up;; nginx) port=$ngx;; postern|postern+auth) port=$pst;; esac
    if [ "$target" = postern ] && [ "$c" = 64 ]; then
      ( sleep $((seconds / 2)); rss $postern >"$work/load_rss" ) &
      sampler=$!
    fi
    if [ "$target" = postern+auth ]; then
      result[$target,$c]=$("$bin/loadgen" post "http://127.0.0.1:$port/auth" "$c" "$seconds" "$body" "cookie: $cookie")
    else
      result[$target,$c]=$("$bin/loadgen" post "http://127.0.0.1:$port/mcp" "$c" "$seconds" "$body")
    fi
  done
done
wait "$sampler"
load_rss=$(cat "$work/load_rss")

field() { sed -E "s/.*\"$2\":([0-9.]+).*/\1/" <<<"${result[$1]}"; }
printf '\ntools/call through each path (%ss per point, loopback, %s cores)\n' "$seconds" "$(nproc)"
printf '%-4s %-12s %9s %8s %8s %8s %7s | %8s %8s %9s\n' conc path req/s p50µs p90µs p99µs errors "p50-dir" "rps/dir" "rps/nginx"
for c in 1 16 64; do
  for target in direct nginx postern postern+auth; do
    rps=$(field "$target,$c" rps); p50=$(field "$target,$c" p50_us)
    d_rps=$(field "direct,$c" rps); d_p50=$(field "direct,$c" p50_us); n_rps=$(field "nginx,$c" rps)
    printf '%-4s %-12s %9s %8s %8s %8s %7s | %+7sµs %8.2f %9.2f\n' "$c" "$target" "$rps" "$p50" \
      "$(field "$target,$c" p90_us)" "$(field "$target,$c" p99_us)" "$(field "$target,$c" errors)" \
      "$((p50 - d_p50))" "$(echo "$rps / $d_rps" | bc -l)" "$(echo "$rps / $n_rps" | bc -l)"
  done
done

"$bin/loadgen" streams "http://127.0.0.1:$pst/events" 1000 10 >"$work/streams.out" &
streams=$!
for _ in $(seq 1 200); do [ -s "$work/streams.out" ] && break; sleep 0.1; done
sleep 1
streams_rss=$(rss $postern)
open=$(sed -E 's/.*"streams_open":([0-9]+).*/\1/' "$work/streams.out")
wait $streams
printf '\ntools/call through Postern (4 connections) while sign-ins run: %s req/s, p50 %sµs, p99 %sµs\n' \
  "$(sed -E 's/.*"rps":([0-9]+).*/\1/' <<<"$during_signins")" "$(sed -E 's/.*"p50_us":([0-9]+).*/\1/' <<<"$during_signins")" \
  "$(sed -E 's/.*"p99_us":([0-9]+).*/\1/' <<<"$during_signins")"
printf '\nPostern memory (RSS): idle %s MiB, after 8 concurrent sign-ins %s MiB, under 64-way load %s MiB, with %s open SSE streams %s MiB\n' \
  "$idle_rss" "$signin_rss" "$load_rss" "$open" "$streams_rss"
bash "$root/bench/aggregate.sh" "$seconds"  # the aggregate route rows
