#!/usr/bin/env bash
# The soak: a mixed load against `postern serve` for MINUTES (default 30), on SQLite, and at the
# same time on PostgreSQL when POSTERN_TEST_POSTGRES_URL is set (a database of its own, dropped
# afterwards): sign-ins through the authorization flow, refresh-token rotations, tools/call with
# the TEs, SSE streams opened and closed, configuration reloads (file edits and SIGHUP). Samples
# RSS, open file descriptors and the store's size every few seconds and prints a table, the
# least-squares slope per hour of each and the requests and errors by kind (bench/soak.mjs).
# Short lifetimes (sessions 2 min, TEs 1 min, refresh tokens 3 min idle) so that expiry and the
# store's collector are part of the run.
#
# Fails when a request fails that must not (any non-200 tools/call or refresh, a stream that
# breaks, a sign-in that does not go through), a reload is refused, or a gateway dies; the
# slopes are printed, not asserted.
#
# Usage: bench/soak.sh [MINUTES]   (loopback only; stops by itself; POSTERN_BIN: the directory
# with postern, mcp-fixture, default target/debug, built if missing)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
minutes="${1:-30}"
seconds=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
cd "$root"
source .ci/tools.sh >/dev/null
bin="${POSTERN_BIN:-$root/target/debug}"
if [ ! -x "$bin/postern" ] || [ ! -x "$bin/mcp-fixture" ]; then
  cargo build -q -p postern -p postern-testkit --bins
fi
work="$(mktemp -d)"
pids=()
pg_db=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$pg_db" ]; then psql "$POSTERN_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $pg_db" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

up=$(free_port)
"$bin/mcp-fixture" "$up" --stateless 2>"$work/fixture.log" & pids+=($!)
hash=$(echo -n soak-password | "$bin/postern" hash-password)

# start NAME STORE_YAML: a gateway in $work/NAME; sets port and pid.
start() {
  local name=$1 store=$2
  mkdir -p "$work/$name"
  port=$(free_port)
  echo "- {email: soak@example.com, name: Soak, password_hash: '$hash'}" >"$work/$name/users.yaml"
  cat >"$work/$name/postern.yaml" <<YAML
insecure_server: true
address: 127.0.0.1:$port
data_dir: $work/$name/data
users_file: users.yaml
$store
cookie_expire: 2m
mcp_access_token_ttl: 1m
mcp_refresh_token_idle_ttl: 3m
mcp_refresh_token_max_ttl: 10m
routes:
  - {from: http://localhost, prefix: /mcp, to: 'http://127.0.0.1:$up/mcp', allow_any_authenticated_user: true, mcp: {}}
  - {from: http://localhost, prefix: /events, to: 'http://127.0.0.1:$up/events', allow_any_authenticated_user: true, mcp: {}}
YAML
  RUST_LOG=info "$bin/postern" serve --config "$work/$name/postern.yaml" >/dev/null 2>"$work/$name/postern.log" &
  pid=$!
  pids+=($pid)
  for _ in $(seq 1 300); do curl -fsS -o /dev/null "http://127.0.0.1:$port/.pomerium/ping" 2>/dev/null && return; sleep 0.1; done
  echo "soak: the $name gateway did not start"; cat "$work/$name/postern.log"; exit 1
}

# check NAME: the gateway's log: every reload taken, no panic.
check() {
  local log="$work/$1/postern.log" ok=0
  local reloaded refused
  reloaded=$(grep -c 'configuration reloaded' "$log" || true)
  refused=$(grep -c 'configuration NOT reloaded' "$log" || true)
  echo "$1: reloads taken $reloaded, refused $refused; log lines at WARN $(grep -c ' WARN ' "$log" || true), at ERROR $(grep -c ' ERROR ' "$log" || true)"
  if [ "$refused" != 0 ] || [ "$reloaded" = 0 ]; then echo "$1: a reload was refused or none was taken"; ok=1; fi
  if grep -q 'panicked' "$log"; then echo "$1: the gateway panicked"; ok=1; fi
  if [ $ok != 0 ] || grep -qE ' (WARN|ERROR) ' "$log"; then grep -E ' (WARN|ERROR) |panicked' "$log" | head -20; fi
  return $ok
}

echo "soak: $minutes min ($seconds s), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
runs=()
start sqlite ""
sqlite_port=$port sqlite_pid=$pid
(cd "$root" && STORE_FILES="$work/sqlite/data/postern.db,$work/sqlite/data/postern.db-wal,$work/sqlite/data/postern.db-shm" \
  node bench/soak.mjs "http://localhost:$sqlite_port" "$sqlite_pid" "$work/sqlite/postern.yaml" "$seconds" >"$work/sqlite.out" 2>&1) &
runs+=("sqlite:$!")
if [ -n "${POSTERN_TEST_POSTGRES_URL:-}" ]; then
  pg_db="postern_soak_$$"
  psql "$POSTERN_TEST_POSTGRES_URL" -qc "CREATE DATABASE $pg_db" >/dev/null
  pg_url="${POSTERN_TEST_POSTGRES_URL%/*}/$pg_db"
  start postgres "databroker_storage_type: postgres
databroker_storage_connection_string: '$pg_url'
shared_secret: $(head -c 32 /dev/urandom | base64)"
  (cd "$root" && PG_URL="$pg_url" node bench/soak.mjs "http://localhost:$port" "$pid" "$work/postgres/postern.yaml" "$seconds" >"$work/postgres.out" 2>&1) &
  runs+=("postgres:$!")
fi

failed=0
for run in "${runs[@]}"; do
  name=${run%%:*}
  if ! wait "${run#*:}"; then failed=1; fi
  echo
  echo "=== $name"
  cat "$work/$name.out"
  check "$name" || failed=1
done
echo "soak: done, load average $(cut -d' ' -f1-3 /proc/loadavg)"
exit $failed
