#!/usr/bin/env bash
# The data-path benchmark, on loopback, in one run on this machine (load generator, upstream and
# proxies share the cores): prints tables, asserts nothing, stops by itself.
#
# Usage: bench/run.sh [SECONDS_PER_POINT] [SECTION...]   (default 5 s, every section but profile)
#
# Sections (each starts its own processes; a run of all takes about 40 x SECONDS + 3 min):
#   goal     tools/call directly, through nginx and haproxy (plain reverse proxies), through
#            Postern on a public route, and through the full MCP authorization path (bearer TE
#            from Postern's authorization server, a policy with an `mcp_tool` rule so the body is
#            inspected, the identity assertion, the user's TI injected on an `upstream_oauth2`
#            route, the audit record), at 1, 16 and 64 connections; the goal ratios.
#   streams  Postern's RSS with 1,000 and 10,000 open SSE streams (memory per stream).
#   routes   10 / 1,000 / 10,000 routes (host and path mix): throughput and p50.
#   users    users_file with 10 and 100,000 users: sign-in latency and memory.
#   store    1 M refresh-token rows and 100 k sessions: `/token` refresh latency and tokens per
#            second on SQLite and PostgreSQL, and two replicas on PostgreSQL.
#   policy   a route policy of 1 and of 200 rules.
#   body     1 KB, 100 KB and 1 MB tools/call bodies on the full path.
#   signins  sign-ins per second (argon2id) and the full path's p99 while they run.
#   aggregate tools/call through an aggregate route next to its member's own route, and
#            tools/list through an aggregate of 5 members (bench/aggregate.sh).
#   perf     (only when named) the full path at 64 connections under `perf record`: Postern's
#            CPU by thread and by function, natively.
#   profile  (only when named) Postern under callgrind: instructions per request, public route
#            and full path, and the top functions of the full path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-5}"
shift || true
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(goal streams routes users store policy body signins aggregate)
cd "$root"
for tool in nginx haproxy; do
  if ! command -v $tool >/dev/null; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy >/dev/null
  fi
done
# BENCH_NO_BUILD=1 measures the binaries already in target/release (e.g. a baseline).
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --locked -q -p postern -p postern-testkit
bin="${BENCH_BIN:-$root/target/release}"
# 10,000 streams hold 20,000 sockets in Postern (client and upstream side); the hard limit may
# be lower (the streams section then opens as many as fit).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${pg_db:-}" ]; then psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
source "$root/.ci/ports.sh"
port() { free_port; }
wait_http() { for _ in $(seq 1 600); do curl -s -o /dev/null "$1" && return; sleep 0.1; done; echo "bench: $1 never answered" >&2; exit 1; }
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
field() { sed -E "s/.*\"$2\":([0-9.]+).*/\1/" <<<"$1"; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
lg() { "$bin/loadgen" "$@"; }
body='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"test_simple_text","arguments":{}}}'

# The upstream (the fixture MCP server, stateless, JSON responses) and the fake OAuth provider
# of the TI (approves at once, issues `ti-acceptance`), shared by every section.
up=$(port); provider=$(port)
"$bin/mcp-fixture" "$up" --stateless 2>"$work/fixture.log" & pids+=($!)
"$bin/fakes" provider "$provider" 2>/dev/null & pids+=($!)
wait_http "http://127.0.0.1:$up/"
hash=$(echo -n bench-password | "$bin/postern" hash-password)
printf -- '- {email: bench@example.com, name: Bench, groups: [staff], password_hash: "%s"}\n' "$hash" >"$work/users.yaml"

# postern_config PORT DATA_DIR [EXTRA_ROUTES_FILE] [EXTRA_TOP_LEVEL]: the bench gateway: `/full`
# is the full MCP authorization path, `/auth` the same policy with the session cookie, `/` a
# public route.
postern_config() {
  cat <<YAML
insecure_server: true
address: 127.0.0.1:$1
data_dir: $2
users_file: $work/users.yaml
${4:-}
routes:
  - from: http://127.0.0.1
    prefix: /full
    to: http://127.0.0.1:$up/mcp
    pass_identity_headers: true
    policy:
      allow: {and: [{authenticated_user: true}]}
      deny: {or: [{mcp_tool: {in: [test_error_handling]}}]}
    mcp:
      server:
        upstream_oauth2:
          client_id: notion-client
          client_secret: notion-secret
          endpoint:
            auth_url: http://127.0.0.1:$provider/authorize
            token_url: http://127.0.0.1:$provider/token
  - from: http://127.0.0.1
    prefix: /auth
    to: http://127.0.0.1:$up/mcp
    pass_identity_headers: true
    policy:
      allow: {and: [{authenticated_user: true}]}
      deny: {or: [{mcp_tool: {in: [test_error_handling]}}]}
    mcp: {}
$(cat "${3:-/dev/null}")
  - from: http://127.0.0.1
    to: http://127.0.0.1:$up
    allow_public_unauthenticated_access: true
    mcp: {}
YAML
}
# start_postern NAME PORT CONFIG_FILE: starts it and waits; its pid in $postern.
start_postern() {
  env RUST_LOG=warn ${BENCH_POSTERN_ENV:-} "$bin/postern" serve --config "$3" 2>"$work/$1.log" & postern=$!; pids+=($postern)
  for _ in $(seq 1 1200); do
    curl -s -o /dev/null "http://127.0.0.1:$2/.pomerium/ping" && return
    kill -0 $postern 2>/dev/null || { echo "bench: postern $1 exited: $(grep -m2 -i error "$work/$1.log")"; exit 1; }
    sleep 0.1
  done
  echo "bench: postern $1 did not start"; exit 1
}
stop_postern() { kill "$postern" 2>/dev/null || true; wait "$postern" 2>/dev/null || true; }

# sign_in BASE JAR: signs bench@example.com in; the session cookie lands in JAR.
sign_in() {
  local csrf
  csrf=$(curl -s -c "$2" -b "$2" "$1/.pomerium/sign_in" | sed -n 's/.*name="csrf_token" value="\([^"]*\)".*/\1/p')
  curl -s -o /dev/null -w '%{http_code}' -c "$2" -b "$2" -H "origin: $1" -H 'sec-fetch-site: same-origin' -H 'sec-fetch-mode: navigate' -H 'sec-fetch-user: ?1' \
    -d "email=bench@example.com&password=bench-password&csrf_token=$csrf" "$1/.pomerium/sign_in"
}
# hidden_form FILE: the page's hidden fields as curl --data-urlencode arguments, one a line.
hidden_form() {
  grep -o '<input type="hidden" name="[^"]*" value="[^"]*">' "$1" |
    sed -E 's/.*name="([^"]*)" value="([^"]*)".*/\1=\2/; s/&amp;/\&/g; s/&quot;/"/g; s/&#39;/'"'"'/g'
}
# te BASE RESOURCE_PATH JAR: an MCP client's OAuth dance against Postern's authorization server
# (dynamic registration, PKCE, sign-in, consent, the upstream provider for the TI, the code
# exchange), as tests/mcp-client/browser.mjs plays it, for CLIENT (registered when not given);
# prints "CLIENT_ID ACCESS REFRESH".
te() {
  local base=$1 resource="$1$2" jar=$3 redirect="http://127.0.0.1:9/callback"
  local client=${4:-} verifier challenge next status step form=() f code tokens
  [ -n "$client" ] || client=$(curl -fsS -X POST "$base/.pomerium/mcp/register" -H 'content-type: application/json' \
    -d "{\"redirect_uris\":[\"$redirect\"],\"token_endpoint_auth_method\":\"none\",\"grant_types\":[\"authorization_code\",\"refresh_token\"],\"client_name\":\"bench\"}" |
    sed -E 's/.*"client_id":"([^"]+)".*/\1/')
  verifier=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
  challenge=$(printf %s "$verifier" | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '=\n')
  next=$(curl -s -o /dev/null -w '%{url_effective}' -G "$base/.pomerium/mcp/authorize" --data-urlencode response_type=code \
    --data-urlencode "client_id=$client" --data-urlencode "redirect_uri=$redirect" --data-urlencode "code_challenge=$challenge" \
    --data-urlencode code_challenge_method=S256 --data-urlencode state=bench --data-urlencode "resource=$resource")
  for step in $(seq 1 20); do
    case "$next" in
      "$redirect"*) break ;;
      /*) next="$base$next" ;;
      "") echo "bench: a form post of the OAuth dance was refused (step $step)" >&2; return 1 ;;
    esac
    status=$(curl -s -b "$jar" -c "$jar" -D "$work/dance.h" -o "$work/dance.html" -w '%{http_code}' "$next")
    if [ "${status:0:1}" = 3 ]; then
      next=$(sed -n 's/^[Ll]ocation: *\([^\r]*\).*/\1/p' "$work/dance.h")
    elif grep -q 'name="password"' "$work/dance.html"; then
      form=(); while IFS= read -r f; do form+=(--data-urlencode "$f"); done < <(hidden_form "$work/dance.html")
      next=$(curl -s -b "$jar" -c "$jar" -o /dev/null -w '%{redirect_url}' -H "origin: $base" -H 'sec-fetch-site: same-origin' -H 'sec-fetch-mode: navigate' -H 'sec-fetch-user: ?1' \
        "${form[@]}" --data-urlencode email=bench@example.com --data-urlencode password=bench-password "$base/.pomerium/sign_in")
    elif grep -q 'name="decision" value="allow"' "$work/dance.html"; then
      form=(); while IFS= read -r f; do form+=(--data-urlencode "$f"); done < <(hidden_form "$work/dance.html")
      next=$(curl -s -b "$jar" -c "$jar" -o /dev/null -w '%{redirect_url}' -H "origin: $base" -H 'sec-fetch-site: same-origin' -H 'sec-fetch-mode: navigate' -H 'sec-fetch-user: ?1' \
        "${form[@]}" --data-urlencode decision=allow "$base/.pomerium/mcp/authorize")
    elif grep -q 'Connect your' "$work/dance.html"; then
      form=(); while IFS= read -r f; do form+=(--data-urlencode "$f"); done < <(hidden_form "$work/dance.html")
      next=$(curl -s -b "$jar" -c "$jar" -o /dev/null -w '%{redirect_url}' -H "origin: $base" -H 'sec-fetch-site: same-origin' -H 'sec-fetch-mode: navigate' -H 'sec-fetch-user: ?1' \
        "${form[@]}" "$base/.pomerium/mcp/connect")
    else
      echo "bench: unexpected page ($status) at $next: $(sed 's/<[^>]*>/ /g' "$work/dance.html" | tr -s ' \n' ' ' | head -c 300)" >&2
      return 1
    fi
  done
  code=$(sed -n 's/.*[?&]code=\([^&]*\).*/\1/p' <<<"$next")
  [ -n "$code" ] || { echo "bench: no code in $next" >&2; return 1; }
  tokens=$(curl -fsS "$base/.pomerium/mcp/token" --data-urlencode grant_type=authorization_code --data-urlencode "code=$code" \
    --data-urlencode "redirect_uri=$redirect" --data-urlencode "client_id=$client" --data-urlencode "code_verifier=$verifier" \
    --data-urlencode "resource=$resource")
  echo "$client $(sed -E 's/.*"access_token":"([^"]+)".*/\1/' <<<"$tokens") $(sed -E 's/.*"refresh_token":"([^"]+)".*/\1/' <<<"$tokens")"
}

# One bench gateway for the goal, policy-free sections (started on first use).
main_port=""
main_gateway() {
  [ -z "$main_port" ] || return 0
  main_port=$(port)
  postern_config "$main_port" "$work/main-data" >"$work/main.yaml"
  start_postern main "$main_port" "$work/main.yaml"
  main_pid=$postern
  main="http://127.0.0.1:$main_port"
  [ "$(sign_in "$main" "$work/main.jar")" = 303 ] || { echo "bench: sign-in failed"; exit 1; }
  read -r _ main_te _ < <(te "$main" /full "$work/main.jar")
  [ -n "$main_te" ] || { echo "bench: no TE"; exit 1; }
  # The full path works (a TI was injected: the upstream call succeeds only past the broker).
  lg post "$main/full" 1 1 "$body" "authorization: Bearer $main_te" >"$work/check"
  [ "$(field "$(cat "$work/check")" errors)" = 0 ] || { echo "bench: the full path fails: $(cat "$work/check")"; tail -5 "$work/main.log"; exit 1; }
}
full() { lg post "$main/full" "$1" "$2" "${3:-$body}" "authorization: Bearer $main_te"; }

section_goal() {
  main_gateway
  local ngx hap
  ngx=$(port); hap=$(port)
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
  cat >"$work/haproxy.cfg" <<HAPROXY
global
  nbthread 2
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  option forwardfor
  http-reuse always
frontend bench
  bind 127.0.0.1:$hap
  default_backend mcp
backend mcp
  server fixture 127.0.0.1:$up
HAPROXY
  haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)
  wait_http "http://127.0.0.1:$ngx/"; wait_http "http://127.0.0.1:$hap/"
  for p in $up $ngx $hap $main_port; do lg post "http://127.0.0.1:$p/mcp" 4 1 "$body" >/dev/null; done
  full 4 1 >/dev/null
  declare -A r
  for c in 1 16 64; do
    for target in direct nginx haproxy postern mcp-full; do
      case $target in
        direct) r[$target,$c]=$(lg post "http://127.0.0.1:$up/mcp" "$c" "$seconds" "$body") ;;
        nginx) r[$target,$c]=$(lg post "http://127.0.0.1:$ngx/mcp" "$c" "$seconds" "$body") ;;
        haproxy) r[$target,$c]=$(lg post "http://127.0.0.1:$hap/mcp" "$c" "$seconds" "$body") ;;
        postern) r[$target,$c]=$(lg post "$main/mcp" "$c" "$seconds" "$body") ;;
        mcp-full) r[$target,$c]=$(full "$c" "$seconds") ;;
      esac
    done
  done
  printf '\ntools/call through each path (%ss per point, loopback, %s cores shared with the load generator and upstream)\n' "$seconds" "$(nproc)"
  printf '%-4s %-9s %8s %7s %7s %7s %6s | %8s %7s %7s\n' conc path req/s p50µs p90µs p99µs errors p50-dir rps/dir rps/ngx
  for c in 1 16 64; do
    for target in direct nginx haproxy postern mcp-full; do
      local x=${r[$target,$c]} d=${r[direct,$c]} n=${r[nginx,$c]}
      printf '%-4s %-9s %8s %7s %7s %7s %6s | %+6sµs %7s %7s\n' "$c" "$target" "$(field "$x" rps)" "$(field "$x" p50_us)" \
        "$(field "$x" p90_us)" "$(field "$x" p99_us)" "$(field "$x" errors)" "$(($(field "$x" p50_us) - $(field "$d" p50_us)))" \
        "$(ratio "$(field "$x" rps)" "$(field "$d" rps)")" "$(ratio "$(field "$x" rps)" "$(field "$n" rps)")"
    done
  done
  local f64=${r[mcp-full,64]} n64=${r[nginx,64]} h64=${r[haproxy,64]} f1=${r[mcp-full,1]} d1=${r[direct,1]}
  printf '\nGOAL full MCP authorization path at 64 connections: %sx nginx (goal >= 1.0x), %sx haproxy\n' \
    "$(ratio "$(field "$f64" rps)" "$(field "$n64" rps)")" "$(ratio "$(field "$f64" rps)" "$(field "$h64" rps)")"
  printf 'GOAL full MCP authorization path at 1 connection: p50 %sµs over direct (goal <= 100µs)\n' \
    "$(($(field "$f1" p50_us) - $(field "$d1" p50_us)))"
  printf 'Postern RSS after the goal runs: %s MiB\n' "$(rss "$main_pid")"
}

section_streams() {
  main_gateway
  printf '\nopen SSE streams through Postern (public route to the fixture'"'"'s /events)\n%-8s %9s %9s %12s\n' streams open RSS_MiB KiB/stream
  local base count open at
  lg post "$main/mcp" 1 1 "$body" >/dev/null
  base=$(rss "$main_pid")
  printf '%-8s %9s %9s %12s\n' 0 0 "$base" -
  # Each stream holds two sockets in Postern: under a hard limit below 21,000 descriptors the
  # big point is as many streams as fit (the table says how many).
  local big=10000
  [ "$(ulimit -n)" -ge 21000 ] || big=$((($(ulimit -n) - 1000) / 2))
  for count in 1000 $big; do
    lg streams "$main/events" "$count" 15 >"$work/streams.out" &
    local streams=$!
    for _ in $(seq 1 1200); do [ -s "$work/streams.out" ] && break; sleep 0.1; done
    sleep 1
    at=$(rss "$main_pid")
    open=$(sed -E 's/.*"streams_open":([0-9]+).*/\1/' "$work/streams.out")
    printf '%-8s %9s %9s %12s\n' "$count" "$open" "$at" "$(echo "scale=1; ($at - $base) * 1024 / $open" | bc -l)"
    [ "$count" != 1000 ] || streams_1k=$at
    kill $streams 2>/dev/null || true; wait $streams 2>/dev/null || true
    sleep 2
  done
  printf 'GOAL RSS with 1,000 open SSE streams: %s MiB (goal <= 50 MiB)\n' "$streams_1k"
}

section_routes() {
  printf '\nroute table size (public routes to the fixture; the request hits the last host'"'"'s last route)\n%-7s %9s %9s %9s %9s %9s\n' routes start_s RSS_MiB rps@16 p50µs@1 p50µs@16
  local n hosts p t0 cfg h target
  for n in 10 1000 10000; do
    hosts=$((n / 10))
    p=$(port); cfg="$work/routes-$n.yaml"
    {
      printf 'insecure_server: true\naddress: 127.0.0.1:%s\ndata_dir: %s\nusers_file: %s\nroutes:\n' "$p" "$work/routes-data-$n" "$work/users.yaml"
      for h in $(seq 0 $((hosts - 1))); do
        for j in 0 1 2 3 4; do
          printf '  - {from: "http://h%s.bench.test", path: /p%s/mcp, to: "http://127.0.0.1:%s/mcp", allow_public_unauthenticated_access: true}\n' "$h" "$j" "$up"
          printf '  - {from: "http://h%s.bench.test", prefix: /q%s, to: "http://127.0.0.1:%s/mcp", allow_public_unauthenticated_access: true}\n' "$h" "$j" "$up"
        done
      done
    } >"$cfg"
    t0=$(date +%s.%N)
    start_postern "routes-$n" "$p" "$cfg"
    target="host: h$((hosts - 1)).bench.test"
    local start_s; start_s=$(echo "$(date +%s.%N) - $t0" | bc -l)
    lg post "http://127.0.0.1:$p/q4/x" 4 1 "$body" "$target" >/dev/null
    local r1 r16
    r1=$(lg post "http://127.0.0.1:$p/q4/x" 1 "$seconds" "$body" "$target")
    r16=$(lg post "http://127.0.0.1:$p/q4/x" 16 "$seconds" "$body" "$target")
    [ "$(field "$r16" errors)" = 0 ] || echo "bench: errors on the routes-$n target: $r16"
    printf '%-7s %9.1f %9s %9s %9s %9s\n' "$n" "$start_s" "$(rss "$postern")" "$(field "$r16" rps)" "$(field "$r1" p50_us)" "$(field "$r16" p50_us)"
    stop_postern
  done
}

section_users() {
  printf '\nusers_file size (argon2id password check per sign-in)\n%-7s %9s %9s %12s %12s\n' users start_s RSS_MiB signin_p50ms signin_max_ms
  local n p cfg t0 file
  for n in 10 100000; do
    p=$(port); cfg="$work/users-$n.yaml"; file="$work/users-file-$n.yaml"
    # Every user shares one hash (hashing 100,000 passwords would only measure the seeding).
    awk -v n="$n" -v h="$hash" 'BEGIN { for (i = 1; i < n; i++) printf "- {email: u%d@example.com, name: U%d, groups: [staff], password_hash: \"%s\"}\n", i, i, h;
      printf "- {email: bench@example.com, name: Bench, groups: [staff], password_hash: \"%s\"}\n", h }' >"$file"
    printf 'insecure_server: true\naddress: 127.0.0.1:%s\ndata_dir: %s\nusers_file: %s\nroutes:\n  - {from: "http://127.0.0.1", to: "http://127.0.0.1:%s", allow_public_unauthenticated_access: true}\n' \
      "$p" "$work/users-data-$n" "$file" "$up" >"$cfg"
    t0=$(date +%s.%N)
    start_postern "users-$n" "$p" "$cfg"
    local start_s; start_s=$(echo "$(date +%s.%N) - $t0" | bc -l)
    local times=()
    for _ in 1 2 3 4 5 6 7; do
      local jar="$work/u.jar"; rm -f "$jar"
      local csrf; csrf=$(curl -s -c "$jar" "http://127.0.0.1:$p/.pomerium/sign_in" | sed -n 's/.*name="csrf_token" value="\([^"]*\)".*/\1/p')
      times+=("$(curl -s -o /dev/null -b "$jar" -w '%{time_total}' -H "origin: http://127.0.0.1:$p" -H 'sec-fetch-site: same-origin' -H 'sec-fetch-mode: navigate' -H 'sec-fetch-user: ?1' \
        -d "email=bench@example.com&password=bench-password&csrf_token=$csrf" "http://127.0.0.1:$p/.pomerium/sign_in")")
    done
    local sorted; sorted=$(printf '%s\n' "${times[@]}" | sort -n)
    printf '%-7s %9.1f %9s %12.1f %12.1f\n' "$n" "$start_s" "$(rss "$postern")" "$(echo "$(sed -n 4p <<<"$sorted") * 1000" | bc -l)" \
      "$(echo "$(tail -1 <<<"$sorted") * 1000" | bc -l)"
    stop_postern
  done
}

# seed_sql: 100,000 sessions and token families and 1,000,000 refresh tokens (10 per family),
# none of them the bench user's, all live; plain SQL both databases run.
seed_sql() {
  local far=4102444800000
  cat <<SQL
INSERT INTO sessions (id, user_id, data, expires_at) SELECT 'seed-s-' || n, 'seed-u-' || (n % 1000), '{}', $far FROM $1;
INSERT INTO token_families (family_id, session_id, data, expires_at, user_id) SELECT 'seed-f-' || n, 'seed-s-' || n, '{}', $far, 'seed-u-' || (n % 1000) FROM $1;
INSERT INTO refresh_tokens (token_hash, family_id, expires_at) SELECT 'seed-t-' || n, 'seed-f-' || (n % 100000), $far FROM $2;
SQL
}

section_store() {
  printf '\n/token refresh (rotation chains; 1 M refresh-token rows, 100 k sessions seeded)\n%-22s %9s %9s %9s %9s\n' store chains tokens/s p50µs p99µs
  local p cfg
  # SQLite.
  p=$(port); cfg="$work/store-sqlite.yaml"
  postern_config "$p" "$work/store-sqlite" >"$cfg"
  start_postern store-sqlite "$p" "$cfg"
  store_run sqlite "http://127.0.0.1:$p" "$work/store-sqlite/postern.db"
  stop_postern
  # PostgreSQL: a private database on the machine's cluster (dropped at exit).
  local url
  url=$(bash .ci/postgres.sh)
  pg_admin="$url"; pg_db="postern_bench_$$"
  psql "$url" -qc "CREATE DATABASE $pg_db" >/dev/null
  local pg_url="${url%/*}/$pg_db"
  local secret; secret=$(head -c 32 /dev/urandom | base64)
  local top="databroker_storage_type: postgres
databroker_storage_connection_string: \"$pg_url\"
shared_secret: \"$secret\""
  p=$(port); cfg="$work/store-pg.yaml"
  postern_config "$p" "$work/store-pg" /dev/null "$top" >"$cfg"
  start_postern store-pg "$p" "$cfg"
  local first=$postern
  store_run postgres "http://127.0.0.1:$p" "$pg_url"
  # A second replica on the same database: chains split between both.
  local p2; p2=$(port)
  postern_config "$p2" "$work/store-pg2" /dev/null "$top" >"$work/store-pg2.yaml"
  start_postern store-pg2 "$p2" "$work/store-pg2.yaml"
  local a b
  mapfile -t a < <(chains "http://127.0.0.1:$p" 4)
  mapfile -t b < <(chains "http://127.0.0.1:$p2" 4)
  lg refresh "http://127.0.0.1:$p/.pomerium/mcp/token" "${a[0]}" "$seconds" "${a[@]:1}" >"$work/r1" &
  local j=$!
  lg refresh "http://127.0.0.1:$p2/.pomerium/mcp/token" "${b[0]}" "$seconds" "${b[@]:1}" >"$work/r2"
  wait $j
  local r1 r2; r1=$(cat "$work/r1"); r2=$(cat "$work/r2")
  printf '%-22s %9s %9s %9s %9s\n' "postgres, 2 replicas" 8 "$(($(field "$r1" rps) + $(field "$r2" rps)))" \
    "$(field "$r1" p50_us)/$(field "$r2" p50_us)" "$(field "$r1" p99_us)/$(field "$r2" p99_us)"
  stop_postern
  postern=$first; stop_postern
}
# chains BASE N: one client, N refresh tokens (N authorizations of one signed-in user); prints
# the client id, then the tokens, one a line.
chains() {
  local jar="$work/chains-$RANDOM.jar" client="" at rt
  sign_in "$1" "$jar" >/dev/null
  local i
  for i in $(seq 1 "$2"); do
    # loadgen takes one client id: every chain is an authorization of the same client.
    read -r client at rt < <(te "$1" /auth "$jar" "$client")
    [ "$i" != 1 ] || echo "$client"
    echo "$rt"
  done
}
# store_run NAME BASE DB: seeds DB, then refresh latency (1 chain) and tokens per second (8).
store_run() {
  local t0
  t0=$(date +%s.%N)
  if [ "$1" = sqlite ]; then
    # The sqlite3 shell has generate_series (its series extension), as PostgreSQL does.
    sqlite3 "$3" "PRAGMA busy_timeout = 30000; BEGIN; $(seed_sql "generate_series(1, 100000) AS g" "generate_series(1, 1000000) AS g" | sed 's/|| n/|| g.value/g; s/(n %/(g.value %/g'); COMMIT;" >/dev/null
  else
    psql "$3" -q -v ON_ERROR_STOP=1 -c "$(seed_sql "generate_series(1, 100000) AS n" "generate_series(1, 1000000) AS n")" >/dev/null
  fi
  printf '  (seeded %s in %.1f s)\n' "$1" "$(echo "$(date +%s.%N) - $t0" | bc -l)"
  local tokens one eight
  mapfile -t tokens < <(chains "$2" 8)
  [ ${#tokens[@]} -ge 9 ] || { echo "bench: could not get refresh tokens on $1"; return; }
  one=$(lg refresh "$2/.pomerium/mcp/token" "${tokens[0]}" "$seconds" "${tokens[1]}")
  eight=$(lg refresh "$2/.pomerium/mcp/token" "${tokens[0]}" "$seconds" "${tokens[@]:2}")
  printf '%-22s %9s %9s %9s %9s\n' "$1" 1 "$(field "$one" rps)" "$(field "$one" p50_us)" "$(field "$one" p99_us)"
  printf '%-22s %9s %9s %9s %9s\n' "$1" 7 "$(field "$eight" rps)" "$(field "$eight" p50_us)" "$(field "$eight" p99_us)"
}

section_policy() {
  local p cfg rules
  p=$(port); cfg="$work/policy.yaml"
  rules=$(for i in $(seq 1 199); do printf '{email: {is: nobody%s@example.com}}, ' "$i"; done)
  cat >"$work/policy-routes.yaml" <<YAML
  - from: http://127.0.0.1
    prefix: /p200
    to: http://127.0.0.1:$up/mcp
    policy:
      allow: {or: [$rules{authenticated_user: true}]}
      deny: {or: [{mcp_tool: {in: [test_error_handling]}}]}
    mcp: {}
YAML
  postern_config "$p" "$work/policy-data" "$work/policy-routes.yaml" >"$cfg"
  start_postern policy "$p" "$cfg"
  local base="http://127.0.0.1:$p" at1 at200
  sign_in "$base" "$work/policy.jar" >/dev/null
  read -r _ at1 _ < <(te "$base" /auth "$work/policy.jar")
  read -r _ at200 _ < <(te "$base" /p200 "$work/policy.jar")
  printf '\nroute policy size (bearer TE, mcp_tool rule, the allow rule last)\n%-6s %9s %9s %9s\n' rules rps@16 p50µs@1 p50µs@16
  local path te r1 r16
  for path in auth p200; do
    te=$at1; [ $path = auth ] || te=$at200
    lg post "$base/$path" 4 1 "$body" "authorization: Bearer $te" >/dev/null
    r1=$(lg post "$base/$path" 1 "$seconds" "$body" "authorization: Bearer $te")
    r16=$(lg post "$base/$path" 16 "$seconds" "$body" "authorization: Bearer $te")
    [ "$(field "$r16" errors)" = 0 ] || echo "bench: errors on /$path: $r16"
    printf '%-6s %9s %9s %9s\n' "$([ $path = auth ] && echo 1 || echo 200)" "$(field "$r16" rps)" "$(field "$r1" p50_us)" "$(field "$r16" p50_us)"
  done
  stop_postern
}

section_body() {
  main_gateway
  printf '\ntools/call body size (full MCP path vs direct)\n%-7s %10s %10s %10s %10s %12s\n' body direct_rps full_rps direct_p50 full_p50 "added p50µs"
  local size pad f d x
  for size in 1000 100000 1000000; do
    f="$work/body-$size.json"
    pad=$((size - 110))
    printf '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"test_simple_text","arguments":{"pad":"%s"}}}' \
      "$(head -c "$pad" /dev/zero | tr '\0' x)" >"$f"
    d=$(lg post "http://127.0.0.1:$up/mcp" 4 "$seconds" "@$f")
    x=$(full 4 "$seconds" "@$f")
    [ "$(field "$x" errors)" = 0 ] || echo "bench: errors with a $size-byte body: $x"
    printf '%-7s %10s %10s %10s %10s %12s\n' "$(stat -c %s "$f")" "$(field "$d" rps)" "$(field "$x" rps)" "$(field "$d" p50_us)" \
      "$(field "$x" p50_us)" "$(($(field "$x" p50_us) - $(field "$d" p50_us)))"
  done
  printf 'Postern RSS after the body runs: %s MiB\n' "$(rss "$main_pid")"
}

section_signins() {
  main_gateway
  local quiet during
  quiet=$(full 4 "$seconds")
  rm -f "$work/signins.count"
  local signing=()
  for _ in 1 2 3 4; do
    ( jar="$work/s-$BASHPID.jar"; end=$((SECONDS + seconds + 1)); n=0
      while [ $SECONDS -lt $end ]; do [ "$(sign_in "$main" "$jar")" = 303 ] && n=$((n + 1)); done
      echo $n >>"$work/signins.count" ) & signing+=($!)
  done
  sleep 0.5
  during=$(full 4 "$seconds")
  wait "${signing[@]}"
  local total; total=$(awk '{s += $1} END {print s}' "$work/signins.count")
  printf '\nsign-ins (argon2id, 4 clients at once for %ss): %s sign-ins/s; RSS %s MiB\n' "$((seconds + 1))" \
    "$(ratio "$total" "$((seconds + 1))")" "$(rss "$main_pid")"
  printf 'full MCP path at 4 connections: quiet p50 %sµs p99 %sµs %s req/s; during sign-ins p50 %sµs p99 %sµs %s req/s\n' \
    "$(field "$quiet" p50_us)" "$(field "$quiet" p99_us)" "$(field "$quiet" rps)" "$(field "$during" p50_us)" "$(field "$during" p99_us)" "$(field "$during" rps)"
}

# Not in the default run: Postern under callgrind (instructions are repeatable on a loaded
# machine, times are not): instructions per request on the public route and on the full MCP
# authorization path, and where they go (inclusive, the top functions).
section_profile() {
  command -v valgrind >/dev/null || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
  local p cfg base pid te_full path r requests total
  p=$(port); cfg="$work/profile.yaml"; base="http://127.0.0.1:$p"
  postern_config "$p" "$work/profile-data" >"$cfg"
  RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.%p" \
    "$bin/postern" serve --config "$cfg" 2>"$work/profile.log" & pid=$!; pids+=($pid)
  for _ in $(seq 1 1200); do curl -s -o /dev/null "$base/.pomerium/ping" && break; sleep 0.2; done
  sign_in "$base" "$work/profile.jar" >/dev/null
  read -r _ te_full _ < <(te "$base" /full "$work/profile.jar")
  printf '\ncallgrind: instructions per tools/call request through Postern (1 connection, %ss each)\n' "$seconds"
  for path in mcp full; do
    local header=(); [ $path = mcp ] || header=("authorization: Bearer $te_full")
    lg post "$base/$path" 1 2 "$body" "${header[@]}" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    callgrind_control -i on "$pid" >/dev/null
    r=$(lg post "$base/$path" 1 "$seconds" "$body" "${header[@]}")
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$path" "$pid" >/dev/null
    requests=$(field "$r" requests)
    local out; out=$(ls -t "$work"/callgrind.$pid.* | head -1)
    total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out" | head -1)
    [ -n "$total" ] || total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out" | head -1)
    printf '%-5s %6s requests (%s errors), %s instructions/request\n' "$path" "$requests" "$(field "$r" errors)" "$((total / requests))"
    cp "$out" "$root/target/callgrind.$path.out"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf 'where the full path goes (inclusive; target/callgrind.full.out, callgrind_annotate --inclusive=yes):\n'
  callgrind_annotate --inclusive=yes "$root/target/callgrind.full.out" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | head -45
}

# perf (only when named): the full path at 64 connections under `perf record` (native, with
# the CPU's own instruction set, which callgrind hides): where Postern's CPU goes, by thread and
# by function.
section_perf() {
  command -v perf >/dev/null || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
  main_gateway
  full 4 1 >/dev/null
  perf record -F 999 -g -p "$main_pid" -o "$work/perf.data" >/dev/null 2>&1 & local rec=$!
  sleep 0.5
  printf '
perf: the full path at 64 connections, %ss: %s\n' "$seconds" "$(full 64 "$seconds")"
  kill -INT $rec; wait $rec 2>/dev/null || true
  printf 'by thread:\n'
  perf report -i "$work/perf.data" --no-children --sort comm 2>/dev/null | grep -E '^ +[0-9.]+%' | head -8
  printf 'by function (inclusive):\n'
  perf report -i "$work/perf.data" --children --sort sym -g none 2>/dev/null | grep -E '^ +[0-9.]+%' | grep -v '\[k\]' | head -60
  printf 'by function (self):\n'
  perf report -i "$work/perf.data" --no-children --sort sym -g none 2>/dev/null | grep -E '^ +[0-9.]+%' | head -40
}

printf 'bench at %s (%s), %ss per point, sections: %s; load average %s\n' "$(git rev-parse --short HEAD)" \
  "$(git diff --quiet HEAD -- crates && echo clean || echo 'with local changes')" "$seconds" "${sections[*]}" "$(cut -d' ' -f1-3 /proc/loadavg)"
for s in "${sections[@]}"; do
  case $s in
    goal | streams | routes | users | store | policy | body | signins | profile | perf) "section_$s" ;;
    aggregate) BENCH_BIN="$bin" bash "$root/bench/aggregate.sh" "$seconds" ;;
    *) echo "bench: unknown section $s (goal streams routes users store policy body signins aggregate profile perf)"; exit 2 ;;
  esac
done
