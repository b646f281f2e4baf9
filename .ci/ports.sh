#!/usr/bin/env bash
# Sourced by the test and benchmark scripts.

# free_port: a TCP port nothing listens on, below the kernel's ephemeral range (so none of the
# many outgoing connections a test makes can be holding it when a server binds it), and not one
# this script was already given (the servers may not have bound theirs yet).
free_port() {
  local low given p
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  given="${TMPDIR:-/tmp}/postern-ports.$$"
  while :; do
    p=$((10000 + RANDOM % (low - 10000)))
    grep -qx "$p" "$given" 2>/dev/null && continue
    ss -Htan "sport = :$p" 2>/dev/null | grep -q . && continue
    echo "$p" >>"$given"
    echo "$p"
    return
  done
}
