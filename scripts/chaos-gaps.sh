#!/usr/bin/env bash
# The replicas' chaos test run N times (default 5) against one binary, and what clients saw
# over all runs: the client-visible gap per fault (median, p99, max), the replica-side
# recovery time, codes, calls given up. Compare two builds by running it for each:
#   scripts/chaos-gaps.sh 5                                   # target/debug/laser-router
#   LASER_ROUTER_BIN=/tmp/laser-router-before scripts/chaos-gaps.sh 5
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
record="$(mktemp)"
trap 'rm -f "$record"' EXIT
passed=0
for ((i = 1; i <= runs; i++)); do
  start=$(date +%s)
  if (cd clients/python && LASER_CHAOS_RECORD="$record" python3 -m pytest -q -p no:cacheprovider \
      tests/test_postgres.py -k answer_only_retryable_codes >/dev/null 2>&1); then
    passed=$((passed + 1)); outcome=passed
  else
    outcome=FAILED
  fi
  echo "run $i: $outcome in $(( $(date +%s) - start )) s"
done
python3 - "$record" "$runs" "$passed" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
print(f"{sys.argv[3]} of {sys.argv[2]} runs passed; binary {__import__('os').environ.get('LASER_ROUTER_BIN', 'target/debug/laser-router')}")
def line(name, values):
    values = sorted(values)
    if not values:
        return f"{name}: none"
    p99 = values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]
    return f"{name}: median {statistics.median(values):.2f} s, p99 {p99:.2f} s, max {values[-1]:.2f} s ({len(values)} faults)"
for kind in ("kill", "pause", "postgres"):
    print(line(f"client-visible gap after {kind}", [g for r in runs for g in r["gaps"][kind]]))
print(line("replica-side recovery (kill, pause)", [t for r in runs for t in r["takeovers"]]))
print("codes seen:", sorted({c for r in runs for c in r["codes"]}),
      "| calls given up:", sum(r["given_up"] for r in runs),
      "| feedbacks acknowledged:", sum(r["acknowledged"] for r in runs))
PY
