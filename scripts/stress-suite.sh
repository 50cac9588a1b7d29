#!/usr/bin/env bash
# Runs the whole test suite RUNS times in a row while `stress -c 2` keeps both cores busy, and
# stops at the first failure: the check that no test depends on the machine being idle.
#   scripts/stress-suite.sh [RUNS]      (default 10; needs the `stress` package)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
logs="$(mktemp -d)"
stress -c 2 > /dev/null 2>&1 &
stress_pid=$!
trap 'kill "$stress_pid" 2>/dev/null || true' EXIT
npm run build --silent && npx tsc -p tsconfig.test.json
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  if npx jest > "$logs/run-$i.log" 2>&1; then
    echo "run $i/$runs: $(grep -E '^[0-9]+ passed' "$logs/run-$i.log") ($(( $(date +%s) - start )) s)"
  else
    echo "run $i/$runs FAILED ($(( $(date +%s) - start )) s); log: $logs/run-$i.log"
    grep -E '●' "$logs/run-$i.log" | head -20
    exit 1
  fi
done
echo "all $runs runs passed under stress -c 2; logs in $logs"
