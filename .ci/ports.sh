#!/usr/bin/env bash
# Sourced by the test and benchmark scripts.

# free_port: a TCP port nothing uses, below the kernel's ephemeral range (so none of the many
# outgoing connections a test makes can be holding it when a server binds it), and not one this
# script was already given (the servers may not have bound theirs yet). Where the ephemeral range
# starts too low to leave room below it, any port from 20000 to 29999 nothing uses.
free_port() {
  local low high given p
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  if [ "$low" -gt 11000 ]; then high=$low; low=10000; else low=20000; high=30000; fi
  given="${TMPDIR:-/tmp}/postern-ports/$$"
  if [ ! -e "$given" ]; then
    mkdir -p "${given%/*}"
    # Lists of scripts long gone (they would only pile up).
    find "${given%/*}" -type f -mmin +120 -delete 2>/dev/null || true
    : >"$given"
  fi
  while :; do
    p=$((low + RANDOM % (high - low)))
    grep -qx "$p" "$given" && continue
    ss -Htan "sport = :$p" 2>/dev/null | grep -q . && continue
    echo "$p" >>"$given"
    echo "$p"
    return
  done
}
