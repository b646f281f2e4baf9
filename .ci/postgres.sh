#!/usr/bin/env bash
# Starts the machine's PostgreSQL 15 cluster (installed, not running) and makes sure the test
# role and database exist. Prints the connection URL for POSTERN_TEST_POSTGRES_URL.
set -euo pipefail
# Only the URL goes to stdout: pg_ctlcluster and psql chatter (e.g. "Removed stale pid file." when
# the machine was snapshotted with the server running) would otherwise end up in the URL. (No extra
# file descriptor for the URL: the server daemon would inherit it and hold `$(...)` open forever.)
{
  if ! command -v pg_ctlcluster >/dev/null; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -n | tail -1)
  if ! pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -q online; then
    pg_ctlcluster "$version" main start
  fi
  for _ in $(seq 1 50); do
    su postgres -c "pg_isready -q" && break
    sleep 0.2
  done
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='postern'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"CREATE ROLE postern LOGIN PASSWORD 'postern' CREATEDB\""
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='postern_test'\"" | grep -q 1 ||
    su postgres -c "createdb -O postern postern_test"
} >&2
echo "postgres://postern:postern@127.0.0.1:5432/postern_test"
