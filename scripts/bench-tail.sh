#!/usr/bin/env bash
# P-256 at one request in flight: latency percentiles and the garbage-collection pauses of
# keylessd and of the load generator, and the floor a bare Node TLS round trip has on this
# machine (docs/benchmarks.md, "The P-256 1x1 tail"). Needs `npm run build` done.
#   scripts/bench-tail.sh [SECONDS]                      (default 10)
#   SERVER_FLAGS="--min-semi-space-size=64 --max-semi-space-size=64" CLIENT_FLAGS="…" scripts/bench-tail.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
work="$(mktemp -d)"
pid=""
trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
node scripts/bench-config.js "$work"   # bench.sh's "on" config, state in $work/state
S="$work/state"
# shellcheck disable=SC2086  # the flags are words
node ${SERVER_FLAGS:-} --trace-gc dist/src/cli/keylessd.js --config "$work/on.yaml" --log-level warn > "$work/server.out" 2>&1 &
pid=$!
for _ in $(seq 100); do node dist/src/cli/keylessctl.js keys --server 127.0.0.1:2408 --state-dir "$S" > /dev/null 2>&1 && break; sleep 0.1; done
# shellcheck disable=SC2086
node ${CLIENT_FLAGS:-} --trace-gc dist/src/cli/keylessctl.js bench --server 127.0.0.1:2408 --state-dir "$S" --key demo-p256 --algorithm ECDSA_SHA256 \
  --sessions 1 --inflight 1 --duration "$secs" --no-limit --json > "$work/client.out"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
grep '^{' "$work/client.out" | jq -r '"keylessd P-256 1x1: \(.opsPerSecond | floor) /s, p50 \(.latencyUs.p50) µs, p99 \(.latencyUs.p99) µs, p99.9 \(.latencyUs.p999) µs"'
# --trace-gc lines: "... Scavenge 31.8 (51.8) -> 19.1 (51.8) MB, 0.80 / 0.00 ms ..."; pause = the number before " / ".
pauses() { grep -o 'Scavenge[^,]*, [0-9.]* /' "$1" | awk '{print $(NF-1)}' | sort -n | awk -v who="$2" '{a[NR]=$1} END {if (NR) printf "%s: %d scavenges, median %.2f ms, p90 %.2f ms, max %.2f ms\n", who, NR, a[int((NR+1)/2)], a[int(NR*0.9)+0], a[NR]; else print who ": no scavenge"}'; }
pauses "$work/server.out" "keylessd"
pauses "$work/client.out" "load generator"
node scripts/tls-pingpong.js "$S/pki" "$secs"
