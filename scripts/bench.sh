#!/usr/bin/env bash
# Reproduces every figure in docs/benchmarks.md in one run, on this machine, server and
# load generator sharing it. Needs `npm run build` done, softhsm2 and opensc installed.
#   scripts/bench.sh [SECONDS]      (default 8 s per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-8}"
work="$(mktemp -d)"
trap 'pkill -f "keylessd.js --config $work" 2>/dev/null || true; rm -rf "$work"' EXIT
ctl() { node dist/src/cli/keylessctl.js "$@" --state-dir "$work/state"; }
speed() { openssl speed -multi 2 -seconds "$secs" "$1" 2>/dev/null | tail -1; }

# A state folder with the demo PKI and keys, as the embedded default makes it.
node -e "require('./dist/src/daemon/devstate').ensureDevState('$work/state').then(() => {})"
S="$work/state"
cat > "$work/on.yaml" <<YAML
listen: { host: 127.0.0.1, port: 2408 }
tls: { cert: $S/pki/server.crt, key: $S/pki/server.key, client_ca: $S/pki/ca.crt }
metrics: { port: 2406 }
compat: { enabled: true, port: 2407 }
audit: { path: $work/audit.log }
groups: { dev: { subject_o: ["keylessd development"] } }
keys: { demo-p256: { policy: { groups: [dev], operations: [sign] } }, demo-rsa2048: { policy: { groups: [dev] } }, demo-ed25519: { policy: { groups: [dev] } } }
backends: [{ type: file, name: demo, dir: $S/keys }]
YAML
cat > "$work/off.yaml" <<YAML
listen: { host: 127.0.0.1, port: 2408 }
tls: { cert: $S/pki/server.crt, key: $S/pki/server.key, client_ca: $S/pki/ca.crt }
metrics: { enabled: false }
audit: { enabled: false }
backends: [{ type: file, name: demo, dir: $S/keys }]
YAML
serve() { node dist/src/cli/keylessd.js --config "$work/$1.yaml" --log-level warn > "$work/$1.log" 2>&1 & sleep 2; }
stop() { pkill -f "keylessd.js --config $work" || true; sleep 1; }

echo "== openssl speed -multi 2 (limit, same run)"
speed rsa2048; speed ecdsap256; speed ed25519

echo "== keylessd, file keys, policy + audit + metrics on"
serve on
ctl bench --key demo-rsa2048 --algorithm RSA_PKCS1_SHA256 --sessions 8 --inflight 4 --duration "$secs"
ctl bench --key demo-p256 --algorithm ECDSA_SHA256 --sessions 8 --inflight 16 --duration "$secs"
ctl bench --key demo-ed25519 --algorithm ED25519 --sessions 8 --inflight 16 --duration "$secs"
ctl bench --key demo-p256 --algorithm ECDSA_SHA256 --sessions 1 --inflight 1 --duration "$secs" --no-limit
stop

echo "== Cloudflare-compatible port vs keyless.v1, same server"
serve on
for key in demo-rsa2048:RSA_PKCS1_SHA256:4 demo-p256:ECDSA_SHA256:16; do
  IFS=: read -r name alg inflight <<< "$key"
  ski=$(ctl keys | awk -v n="$name" '$1==n {print $4}')
  for protocol in keyless.v1 cloudflare; do ctl bench --protocol "$protocol" --key "$ski" --algorithm "$alg" --sessions 8 --inflight "$inflight" --duration "$secs" --no-limit | head -1; done
done
stop

echo "== policy + audit + metrics cost on P-256 (interleaved off/on, 3 rounds)"
for round in 1 2 3; do
  for mode in off on; do
    serve "$mode"; echo -n "$mode: "; ctl bench --key demo-p256 --algorithm ECDSA_SHA256 --duration "$secs" --no-limit | head -1; stop
  done
done

echo "== SoftHSM2: raw pkcs11js (4 sessions) vs keylessd (pool 8)"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/p256.pem" 2>/dev/null
scripts/softhsm-token.sh --dir "$work/token" --label bench --pin 1234 --import "$work/rsa.pem:bench-rsa:01" --import "$work/p256.pem:bench-p256:02" > /dev/null
echo 1234 > "$work/token/pin"
export SOFTHSM2_CONF="$work/token/softhsm2.conf"
node scripts/bench-pkcs11-raw.js /usr/lib/softhsm/libsofthsm2.so bench 1234 bench-rsa rsa 4 "$secs"
node scripts/bench-pkcs11-raw.js /usr/lib/softhsm/libsofthsm2.so bench 1234 bench-p256 ecdsa 4 "$secs"
cat > "$work/hsm.yaml" <<YAML
listen: { host: 127.0.0.1, port: 2408 }
tls: { cert: $S/pki/server.crt, key: $S/pki/server.key, client_ca: $S/pki/ca.crt }
metrics: { port: 2406 }
audit: { path: $work/hsm-audit.log }
backends: [{ type: pkcs11, name: softhsm, pool_size: 8, uri: "pkcs11:token=bench?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:$work/token/pin" }]
YAML
serve hsm
ctl bench --key bench-rsa --algorithm RSA_PKCS1_SHA256 --sessions 8 --inflight 4 --duration "$secs" --no-limit | head -1
ctl bench --key bench-p256 --algorithm ECDSA_SHA256 --sessions 8 --inflight 8 --duration "$secs" --no-limit | head -1
stop
