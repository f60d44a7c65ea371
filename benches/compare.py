#!/usr/bin/env python3
"""Compare a `scripts/bench.sh` log with the figures recorded in docs/benchmarks-baseline.json
(the last numbers written into docs/benchmarks.md), metric by metric, and say which got
slower. A metric counts as slower when it is worse by more than --tolerance (default 10%,
this machine's round-to-round noise); missing metrics are listed, not failed.

Usage: python3 benches/compare.py BENCH_LOG [--baseline docs/benchmarks-baseline.json]
       [--tolerance 0.10] [--update]   (--update writes the log's figures as the new baseline)
Exit status 0 always: a shared machine's numbers inform, they do not gate.
"""
import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (regex with one float group, "lower" or "higher" is better)
METRICS = {
    "select d4096 K4 B64 (ms)": (r"headline select d4096_K4_B64: ([\d.]+) ms", "lower"),
    "update_batch d4096 r64 (ms)": (r"headline update_batch d4096_r64 \(factor \+ b \+ θ\): ([\d.]+) ms", "lower"),
    "update_batch d4096 r16 (ms)": (r"headline update_batch d4096_r16 \(factor \+ b \+ θ\): ([\d.]+) ms", "lower"),
    "scoring 1 client, demo workload (pairs/s)": (r"1 client, demo workload[^:]*: ([\d.]+) pairs/s", "higher"),
    "scoring 1 client, small fast workload (pairs/s)": (r"1 client, small fast workload[^:]*: ([\d.]+) pairs/s", "higher"),
    "scoring 16 clients, delay 0 (pairs/s)": (r"max_batch_delay_ms = 0: pairs/s by clients .*?16: ([\d.]+)", "higher"),
    "scoring 64 clients, delay 0 (pairs/s)": (r"max_batch_delay_ms = 0: pairs/s by clients .*?64: ([\d.]+)", "higher"),
    "LASeR / ensemble at K = 3": (r"ratio LASeR / ensemble at K = 3[^:]*: ([\d.]+)", "higher"),
    "Score d4096 through the server (ms)": (r"Score d=4096 K=4 B=64 through the server \(durable\): ([\d.]+) ms", "lower"),
    "Feedback 64 decisions through the server (ms)": (r"Feedback for 64 decisions of one arm through the server \(durable\): ([\d.]+) ms", "lower"),
}


def figures(text):
    found = {}
    for name, (pattern, _) in METRICS.items():
        matches = re.findall(pattern, text)
        if matches:
            found[name] = float(matches[-1])
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("--baseline", default=str(ROOT / "docs" / "benchmarks-baseline.json"))
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    now = figures(Path(args.log).read_text())
    baseline_path = Path(args.baseline)
    baseline = json.loads(baseline_path.read_text()) if baseline_path.exists() else {}
    slower = []
    print(f"compared with {baseline_path.name} (worse by more than {args.tolerance:.0%} counts as slower):")
    for name, (_, better) in METRICS.items():
        if name not in now or name not in baseline:
            print(f"  {name}: {'not in this log' if name not in now else 'no baseline'}")
            continue
        ratio = now[name] / baseline[name]
        worse = ratio - 1 if better == "lower" else 1 - ratio
        verdict = "SLOWER" if worse > args.tolerance else "ok"
        if verdict == "SLOWER":
            slower.append(name)
        print(f"  {name}: {now[name]:g} vs {baseline[name]:g} ({ratio:.2f}x, {better} is better): {verdict}")
    print(f"slower than recorded: {', '.join(slower) if slower else 'nothing'}")
    if args.update:
        baseline.update(now)
        baseline_path.write_text(json.dumps(baseline, indent=2, ensure_ascii=False) + "\n")
        print(f"baseline updated: {baseline_path}")


if __name__ == "__main__":
    main()
