#!/usr/bin/env bash
# What a key on one backend suffers from load on another: one keylessd serving the file keys
# and a SoftHSM2 token; a file key's P-256 latency at 1 session x 1 in flight, first alone,
# then while a second load generator keeps the token's P-256 key busy at 8 x 8
# (docs/benchmarks.md, "SoftHSM2: Init off the event loop"). Needs `npm run build` done,
# softhsm2, opensc and jq.
#   scripts/bench-hsm-neighbour.sh [SECONDS]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
work="$(mktemp -d)"
pid=""
trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
node scripts/bench-config.js "$work"   # bench.sh's PKI and file keys, state in $work/state
S="$work/state"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/p256.pem" 2>/dev/null
scripts/softhsm-token.sh --dir "$work/token" --label bench --pin 1234 --import "$work/p256.pem:bench-p256:02" > /dev/null
echo 1234 > "$work/token/pin"
export SOFTHSM2_CONF="$work/token/softhsm2.conf"
cat > "$work/neighbour.yaml" <<YAML
listen: { host: 127.0.0.1, port: 2408 }
tls: { cert: $S/pki/server.crt, key: $S/pki/server.key, client_ca: $S/pki/ca.crt }
metrics: { port: 2406 }
audit: { path: $work/audit.log }
backends:
  - { type: file, name: demo, dir: $S/keys }
  - { type: pkcs11, name: softhsm, pool_size: 8, uri: "pkcs11:token=bench?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:$work/token/pin" }
YAML
node dist/src/cli/keylessd.js --config "$work/neighbour.yaml" --log-level warn > "$work/server.log" 2>&1 &
pid=$!
ctl() { node dist/src/cli/keylessctl.js "$@" --server 127.0.0.1:2408 --state-dir "$S"; }
for _ in $(seq 100); do ctl keys > /dev/null 2>&1 && break; sleep 0.1; done
latency() {
  ctl bench --key demo-p256 --algorithm ECDSA_SHA256 --sessions 1 --inflight 1 --duration "$secs" --no-limit --json |
    jq -r '"p50 \(.latencyUs.p50) µs, p99 \(.latencyUs.p99) µs, \(.opsPerSecond | floor) /s"'
}
echo "file key P-256 1x1, alone: $(latency)"
# The token's load starts first and ends after: it runs the whole time the latency is measured.
ctl bench --key bench-p256 --algorithm ECDSA_SHA256 --sessions 8 --inflight 8 --duration "$((secs + 3))" --no-limit --json > "$work/token.json" &
load=$!
for _ in $(seq 50); do [ "$(curl -s http://127.0.0.1:2406/metrics | awk '/^keyless_requests_total\{.*softhsm/ {n += $NF} END {print n + 0}')" -gt 0 ] && break; sleep 0.1; done
echo "file key P-256 1x1, beside the token's load: $(latency)"
wait "$load"
echo "SoftHSM2 P-256 8x8 meanwhile: $(jq -r '.opsPerSecond | floor' "$work/token.json") /s"
