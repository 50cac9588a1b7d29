#!/usr/bin/env bash
# Every figure of issue 17 (docs/benchmarks.md) in one run, on this machine, server and load
# generator sharing it, each with the limit measured in the same run and the ratio.
# Needs `npm run build` done, softhsm2, opensc and jq installed. Run it under the shared lock:
#   flock /work/notes/bench.lock scripts/bench.sh [SECONDS]          (default 8 s per measurement)
#   flock /work/notes/bench.lock scripts/bench.sh --profile [SECONDS]
#   flock /work/notes/bench.lock scripts/bench.sh --cpu [SECONDS]
#   flock /work/notes/bench.lock scripts/bench.sh --hsm [SECONDS]
# --profile runs only P-256 at 8 x 16 with keylessd under `node --cpu-prof` and prints the
# main thread's time per request split into stages (src/bench/profile-stages.ts).
# --cpu runs only P-256 at 8 x 16 and the server's CPU per request (a quick check while working).
# --hsm runs only the SoftHSM2 comparison (raw pkcs11js against keylessd, 8 sessions each).
# IDLE_SESSIONS=N (default 10000; 0 skips) sets the idle-session memory measurement.
# SERVER_FLAGS="…" passes node flags to keylessd (e.g. the garbage-collector settings of docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=0; quick=0; hsm_only=0
if [ "${1:-}" = "--profile" ]; then profile=1; shift; fi
if [ "${1:-}" = "--cpu" ]; then quick=1; shift; fi
if [ "${1:-}" = "--hsm" ]; then hsm_only=1; shift; fi
secs="${1:-8}"
# Every mode reads keylessctl's --json with jq: checked now rather than minutes into a run.
command -v jq >/dev/null || { echo "bench.sh: jq not found (apt-get install jq)" >&2; exit 1; }
idle_sessions="${IDLE_SESSIONS:-10000}"
work="$(mktemp -d)"
pid=""
stop() { if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi; }
trap 'stop; rm -rf "$work"' EXIT
ctl() { node dist/src/cli/keylessctl.js "$@" --state-dir "$work/state"; }
# openssl speed's sign/s for one algorithm on every core (the crypto limit of this machine).
speed() { openssl speed -multi "$(nproc)" -seconds "$secs" "$1" 2>/dev/null | tail -1 | awk '{print $(NF-1)}'; }
declare -A R  # figure name -> value, printed in the summary

node scripts/bench-config.js "$work"   # the "on" and "off" configs, state in $work/state
S="$work/state"
# serve CONFIG [node flags…]: starts keylessd and waits until it answers.
serve() {
  local config="$1"; shift
  # shellcheck disable=SC2086  # SERVER_FLAGS: node flags for keylessd, as words
  node ${SERVER_FLAGS:-} "$@" dist/src/cli/keylessd.js --config "$work/$config.yaml" --log-level warn > "$work/$config.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do ctl keys > /dev/null 2>&1 && return 0; sleep 0.1; done
  echo "keylessd did not start:"; cat "$work/$config.log"; exit 1
}
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }  # utime + stime of the whole process (all threads)
# The same split by thread: "event-loop signing other" (signing: the file backend's threads, named keylessd-sign).
thread_ticks() {
  local main=0 sign=0 other=0 t n
  for t in /proc/"$pid"/task/*; do
    n=$(awk '{print $14 + $15}' "$t/stat" 2>/dev/null) || continue
    if [ "${t##*/}" = "$pid" ]; then main=$((main + n)); elif [ "$(cat "$t/comm" 2>/dev/null)" = keylessd-sign ]; then sign=$((sign + n)); else other=$((other + n)); fi
  done
  echo "$main $sign $other"
}
answered() { curl -s http://127.0.0.1:2406/metrics | awk '/^keyless_requests_total\{/ {n += $NF} END {print n + 0}'; }
# run NAME ctl-bench-args…: one load run (--json); keeps ops/s and percentiles as R[NAME.*].
run() {
  local name="$1"; shift
  local out; out=$(ctl bench "$@" --duration "$secs" --no-limit --json)
  R[$name.ops]=$(jq -r '.opsPerSecond | floor' <<< "$out")
  R[$name.p99]=$(jq -r '.latencyUs.p99 / 1000' <<< "$out")
  R[$name.p999]=$(jq -r '.latencyUs.p999 / 1000' <<< "$out")
  R[$name.gen_us]=$(jq -r '.generatorCpuUsPerOp * 10 | floor / 10' <<< "$out")
  echo "$name: ${R[$name.ops]} ops/s, p50 $(jq -r '.latencyUs.p50 / 1000' <<< "$out") ms, p99 ${R[$name.p99]} ms, p99.9 ${R[$name.p999]} ms, load generator ${R[$name.gen_us]} µs CPU/request, errors $(jq -c '.errors' <<< "$out")"
}
P256=(--key demo-p256 --algorithm ECDSA_SHA256 --sessions 8 --inflight 16)

if [ "$profile" = 1 ]; then
  R[ecdsa]=$(speed ecdsap256)
  serve on --cpu-prof --cpu-prof-dir "$work/prof"
  before=$(answered)
  run p256 "${P256[@]}"
  requests=$(( $(answered) - before ))
  stop
  echo "openssl speed ecdsap256 (same run): ${R[ecdsa]} /s; requests answered while profiled: $requests"
  node dist/src/bench/profile-stages.js "$work"/prof/*.cpuprofile "$requests"
  if [ -n "${KEEP_PROFILE:-}" ]; then cp "$work"/prof/*.cpuprofile "$KEEP_PROFILE"; echo "profile kept in $KEEP_PROFILE"; fi
  exit 0
fi

# p256_cpu: P-256 8x16 with the server's CPU time per request (R[cpu_us], R[crypto_us], R[beyond_us]).
p256_cpu() {
  # Server CPU per request: the process's CPU time (every thread: event loop, the threads doing
  # the signatures, GC) over the whole run, divided by the requests it answered in that time.
  local t0 n0 t1 n1 split0 split1
  t0=$(ticks); n0=$(answered); split0=$(thread_ticks)
  run p256 "${P256[@]}"
  t1=$(ticks); n1=$(answered); split1=$(thread_ticks)
  R[cpu_us]=$(awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v n="$((n1 - n0))" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  # The signature's own CPU cost, from the same run's limit: openssl keeps every core busy.
  R[crypto_us]=$(awk -v s="${R[ecdsa]}" -v c="$(nproc)" 'BEGIN {printf "%.1f", c * 1e6 / s}')
  R[beyond_us]=$(awk -v a="${R[cpu_us]}" -v b="${R[crypto_us]}" 'BEGIN {printf "%.1f", a - b}')
  echo "keylessd CPU during P-256 8x16: ${R[cpu_us]} µs/request ($((n1 - n0)) requests); the signature alone ${R[crypto_us]} µs (openssl speed ${R[ecdsa]}/s); beyond the crypto ${R[beyond_us]} µs"
  # Both processes' share of the machine: how close the closed loop came to using every core.
  R[cores]=$(awk -v s="${R[cpu_us]}" -v g="${R[p256.gen_us]}" -v n="${R[p256.ops]}" 'BEGIN {printf "keylessd %.2f + load generator %.2f", s * n / 1e6, g * n / 1e6}')
  echo "  cores used: ${R[cores]} of $(nproc)"
  # Threads that ended during the run (none are expected) would be missing from the split.
  echo "$split0 $split1" | awk -v hz="$(getconf CLK_TCK)" -v n="$((n1 - n0))" '{u = 1e6 / hz / n; printf "  by thread, µs/request: event loop %.1f, signing threads %.1f, other (V8 GC helpers, libuv) %.1f\n", ($4 - $1) * u, ($5 - $2) * u, ($6 - $3) * u}'
}

# The SoftHSM2 figures: raw pkcs11js (its C_SignInit + C_SignAsync loop) and keylessd with a
# PKCS#11 backend, the same number of sessions on each side (the issue's condition).
HSM_SESSIONS=8
softhsm_vs_raw() {
  echo "== SoftHSM2: raw pkcs11js vs keylessd, $HSM_SESSIONS sessions each"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/p256.pem" 2>/dev/null
  scripts/softhsm-token.sh --dir "$work/token" --label bench --pin 1234 --import "$work/rsa.pem:bench-rsa:01" --import "$work/p256.pem:bench-p256:02" > /dev/null
  echo 1234 > "$work/token/pin"
  local SOFTHSM2_CONF="$work/token/softhsm2.conf"; export SOFTHSM2_CONF
  raw() { node scripts/bench-pkcs11-raw.js /usr/lib/softhsm/libsofthsm2.so bench 1234 "$1" "$2" "$HSM_SESSIONS" "$secs" | tail -1 | jq -r '.opsPerSecond'; }
  R[raw_rsa]=$(raw bench-rsa rsa); R[raw_p256]=$(raw bench-p256 ecdsa)
  echo "raw pkcs11js, $HSM_SESSIONS sessions: RSA-2048 ${R[raw_rsa]} /s, P-256 ${R[raw_p256]} /s"
  cat > "$work/hsm.yaml" <<YAML
listen: { host: 127.0.0.1, port: 2408 }
tls: { cert: $S/pki/server.crt, key: $S/pki/server.key, client_ca: $S/pki/ca.crt }
metrics: { port: 2406 }
audit: { path: $work/hsm-audit.log }
backends: [{ type: pkcs11, name: softhsm, pool_size: $HSM_SESSIONS, uri: "pkcs11:token=bench?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:$work/token/pin" }]
YAML
  serve hsm
  run hsm_rsa --key bench-rsa --algorithm RSA_PKCS1_SHA256 --sessions 8 --inflight 4
  run hsm_p256 --key bench-p256 --algorithm ECDSA_SHA256 --sessions 8 --inflight 8
  stop
}

if [ "$hsm_only" = 1 ]; then
  softhsm_vs_raw
  awk -v r="${R[hsm_rsa.ops]}" -v rr="${R[raw_rsa]}" -v p="${R[hsm_p256.ops]}" -v rp="${R[raw_p256]}" \
    'BEGIN {printf "keylessd against raw pkcs11js: RSA-2048 %.2f, P-256 %.2f (target ≥ 0.9)\n", r / rr, p / rp}'
  exit 0
fi
if [ "$quick" = 1 ]; then
  R[ecdsa]=$(speed ecdsap256)
  serve on; p256_cpu; stop
  exit 0
fi

echo "== openssl speed -multi $(nproc) (the limits, same run)"
R[rsa]=$(speed rsa2048); R[ecdsa]=$(speed ecdsap256); R[ed25519]=$(speed ed25519)
echo "rsa2048 ${R[rsa]} sign/s, ecdsap256 ${R[ecdsa]} sign/s, ed25519 ${R[ed25519]} sign/s"

echo "== keylessd, file keys, policy + audit + metrics on"
serve on
run rsa --key demo-rsa2048 --algorithm RSA_PKCS1_SHA256 --sessions 8 --inflight 4
p256_cpu
run ed25519 --key demo-ed25519 --algorithm ED25519 --sessions 8 --inflight 16
run p256_1x1 --key demo-p256 --algorithm ECDSA_SHA256 --sessions 1 --inflight 1

echo "== Cloudflare-compatible port vs keyless.v1, same server"
for spec in rsa:demo-rsa2048:RSA_PKCS1_SHA256:4 p256:demo-p256:ECDSA_SHA256:16 ed25519:demo-ed25519:ED25519:16; do
  IFS=: read -r short name alg inflight <<< "$spec"
  ski=$(ctl keys | awk -F'\t' -v n="$name" '$1==n {print $4}')
  run "v1_$short" --protocol keyless.v1 --key "$ski" --algorithm "$alg" --sessions 8 --inflight "$inflight"
  run "cf_$short" --protocol cloudflare --key "$ski" --algorithm "$alg" --sessions 8 --inflight "$inflight"
done
stop

echo "== policy + audit + metrics cost on P-256 (off, then on)"
serve off; run off "${P256[@]}"; stop
serve on; run on "${P256[@]}"; stop

if [ "$idle_sessions" -gt 0 ]; then
  echo "== $idle_sessions idle sessions"
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  serve on
  idle=$(node scripts/idle-sessions.js --pid "$pid" --sessions "$idle_sessions" --state-dir "$S" 2>&1 | tail -1)
  echo "$idle"
  R[idle_mib]=$(jq -r '.rssAfterMiB' <<< "$idle" 2>/dev/null || echo "?")
  stop
fi

softhsm_vs_raw

echo "== Overload: twice the peak, offered open-loop (scripts/bench-overload.js, its own daemon)"
# overload NAME KEY: R[NAME.peak] = closed-loop peak /s; at 2x it: R[NAME.ok] = answered /s, R[NAME.over] = answered/peak,
# R[NAME.refused] = OVERLOADED /s, R[NAME.first] / R[NAME.second] = ok p99 (ms) in the first / second half of the run.
overload() {
  local out; out=$(node scripts/bench-overload.js --seconds "$secs" --key "$2" --json)
  R[$1.over]=$(jq -r '.runs[0].ratio * 100 | floor / 100' <<< "$out")
  R[$1.peak]=$(jq -r '.runs[0].peak.opsPerSecond' <<< "$out")
  R[$1.ok]=$(jq -r '.runs[0].overload.answeredOkPerSecond' <<< "$out")
  R[$1.refused]=$(jq -r '.runs[0].overload.overloadedPerSecond' <<< "$out")
  R[$1.first]=$(jq -r '.runs[0].overload.okLatencyMs.p99FirstHalf' <<< "$out")
  R[$1.second]=$(jq -r '.runs[0].overload.okLatencyMs.p99SecondHalf' <<< "$out")
  echo "$1: peak ${R[$1.peak]} /s; at 2x answered ${R[$1.ok]} /s (${R[$1.over]} of peak), OVERLOADED ${R[$1.refused]} /s, ok p99 ${R[$1.first]} ms first half -> ${R[$1.second]} ms second half"
}
overload over_rsa demo-rsa2048
overload over_p256 demo-p256

echo
echo "== Summary (issue 17 targets; every limit measured in this run)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "?"}'; }
row() { # figure measured limit ratio target met
  printf '| %s | %s | %s | %s | %s | %s |\n' "$@"
}
atleast() { awk -v r="$1" -v t="$2" 'BEGIN {print (r >= t) ? "yes" : "**no**"}'; }
atmost() { awk -v r="$1" -v t="$2" 'BEGIN {print (r <= t) ? "yes" : "**no**"}'; }
within() { awk -v r="$1" 'BEGIN {print (r >= 0.9) ? "yes" : "**no**"}'; }  # the compat port at least 0.9 of keyless.v1; faster is fine
echo "| figure | measured | limit (same run) | ratio | target | met |"
echo "|---|---|---|---|---|---|"
r=$(ratio "${R[p256.ops]}" "${R[ecdsa]}"); row "P-256 8x16" "${R[p256.ops]} /s (cores: ${R[cores]} of $(nproc))" "openssl ${R[ecdsa]} /s" "$r" "≥ 0.40" "$(atleast "$r" 0.40)"
row "server CPU per P-256 request beyond the crypto" "${R[beyond_us]} µs (${R[cpu_us]} µs in all)" "signature ${R[crypto_us]} µs (openssl)" "" "≤ 20 µs" "$(atmost "${R[beyond_us]}" 20)"
r=$(ratio "${R[rsa.ops]}" "${R[rsa]}"); row "RSA-2048 8x4" "${R[rsa.ops]} /s" "openssl ${R[rsa]} /s" "$r" "≥ 0.85" "$(atleast "$r" 0.85)"
r=$(ratio "${R[ed25519.ops]}" "${R[ed25519]}"); row "Ed25519 8x16" "${R[ed25519.ops]} /s" "openssl ${R[ed25519]} /s" "$r" "≥ 0.55" "$(atleast "$r" 0.55)"
for short in rsa p256 ed25519; do
  r=$(ratio "${R[cf_$short.ops]}" "${R[v1_$short.ops]}"); row "compat port, $short" "${R[cf_$short.ops]} /s" "keyless.v1 ${R[v1_$short.ops]} /s" "$r" "within 10%" "$(within "$r")"
done
row "P-256 1x1 p99" "${R[p256_1x1.p99]} ms" "" "" "≤ 0.3 ms" "$(atmost "${R[p256_1x1.p99]}" 0.3)"
row "P-256 1x1 p99.9" "${R[p256_1x1.p999]} ms" "" "" "≤ 1 ms" "$(atmost "${R[p256_1x1.p999]}" 1)"
r=$(ratio "${R[on.ops]}" "${R[off.ops]}"); row "policy + audit + metrics on vs off, P-256" "${R[on.ops]} /s" "off ${R[off.ops]} /s" "$r" "cost ≤ 10%" "$(atleast "$r" 0.9)"
[ "$idle_sessions" -gt 0 ] && row "$idle_sessions idle sessions, RSS" "${R[idle_mib]} MiB" "" "" "< 400 MB" "$(atmost "${R[idle_mib]}" 381)"
r=$(ratio "${R[hsm_rsa.ops]}" "${R[raw_rsa]}"); row "SoftHSM2 RSA-2048" "${R[hsm_rsa.ops]} /s" "raw pkcs11js ${R[raw_rsa]} /s" "$r" "≥ 0.9" "$(atleast "$r" 0.9)"
r=$(ratio "${R[hsm_p256.ops]}" "${R[raw_p256]}"); row "SoftHSM2 P-256" "${R[hsm_p256.ops]} /s" "raw pkcs11js ${R[raw_p256]} /s" "$r" "≥ 0.9" "$(atleast "$r" 0.9)"
# Bounded: at least 0.9 of the peak answered, and the answered requests' tail not growing over the run.
bounded() { awk -v r="$1" -v a="$2" -v b="$3" 'BEGIN {print (r >= 0.9 && b <= a) ? "yes" : "**no**"}'; }
for k in rsa p256; do
  row "overload, $k at 2x the peak: answered" "${R[over_$k.ok]} /s (OVERLOADED ${R[over_$k.refused]} /s; ok p99 ${R[over_$k.first]} → ${R[over_$k.second]} ms)" "peak ${R[over_$k.peak]} /s" "${R[over_$k.over]}" "≥ 0.9, tail not growing" "$(bounded "${R[over_$k.over]}" "${R[over_$k.first]}" "${R[over_$k.second]}")"
done
