"""Paired comparison of two closed-loop result files (examples/laser_closed_loop.py --out):
for every policy both ran, overall held-out accuracy in each, the paired difference (same
seeds, same pairs) with its 95% CI, and the smallest RM's share of the decisions (mean, and
runs under 15%) in each.

    python3 scripts/compare_closed_loop.py BEFORE.json AFTER.json [--policies a,b]

Used for docs/learning.md's reward-centre table: BEFORE the stored runs, AFTER a rerun on
the version under test. Rows that both runs computed identically print Δ +0.000 ± 0.000.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from laser_closed_loop import mean_ci  # noqa: E402


def smallest_share(run):
    total = sum(run["share"].values())
    return min(run["share"].values()) / total if total else math.nan


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--policies", default="", help="comma-separated substrings")
    args = parser.parse_args()
    before = json.load(open(args.before))["results"]
    after = json.load(open(args.after))["results"]
    wanted = [w for w in args.policies.split(",") if w]
    print("| policy | overall, before | overall, after | Δ (paired) | smallest RM's share (runs < 15%), before → after |")
    print("|---|---|---|---|---|")
    for name, result in after.items():
        if name not in before or (wanted and not any(w in name for w in wanted)):
            continue
        runs_b, runs_a = before[name]["runs"], after[name]["runs"]
        seeds = min(len(runs_b), len(runs_a))
        acc_b = [r["accuracy"]["overall"] for r in runs_b[:seeds]]
        acc_a = [r["accuracy"]["overall"] for r in runs_a[:seeds]]
        (mb, cb), (ma, ca) = mean_ci(acc_b), mean_ci(acc_a)
        md, cd = mean_ci(np.subtract(acc_a, acc_b))
        share = []
        for runs in (runs_b[:seeds], runs_a[:seeds]):
            smallest = [smallest_share(r) for r in runs if r.get("share")]
            share.append(f"{np.mean(smallest):.2f} ({sum(s < 0.15 for s in smallest)}/{len(smallest)})"
                         if smallest else "–")
        print(f"| {name} | {mb:.3f} ± {cb:.3f} | {ma:.3f} ± {ca:.3f} | {md:+.3f} ± {cd:.3f} | {share[0]} → {share[1]} |")


if __name__ == "__main__":
    main()
