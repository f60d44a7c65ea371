#!/usr/bin/env bash
# The benchmark suite in one invocation, each part printing its ratios against the baseline it
# runs side by side (results and their machine/date go to docs/benchmarks.md):
#   1. server scoring throughput vs ONNX Runtime alone (scoring)
#   2. LASeR (one RM per query) vs the RM score ensemble at K = 3 (scoring)
#   3. concurrency sweep 1 -> 64 clients: throughput, p50/p99, batch sizes, padding (scoring)
#   4. routing cost per decision at d = 4096 vs the paper's reference algorithm (linucb)
#   and durable state: feedback throughput with durability on/off, recovery (store);
#   5. trainer-facing paths through the release binary: encoder contexts vs client contexts,
#      HTTP/JSON vs gRPC (benches/trainer_paths.py);
#   6. Score (and Feedback for 64 decisions) at d = 4096, K = 4, B = 64 through the server vs
#      the select (update) kernel, by stage
#      (benches/server_path.py).
# Needs the demo RMs (scripts/demo-models.sh) and NumPy for the reference algorithm.
# At the end, benches/compare.py compares the run with the recorded figures
# (docs/benchmarks-baseline.json) and says what got slower; the whole output is in
# target/bench.log (`python3 benches/compare.py target/bench.log --update` records new figures).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p target
exec > >(tee target/bench.log) 2>&1
bash scripts/fetch-onnxruntime.sh
bash scripts/demo-models.sh
echo "== scoring (1, 2, 3)"
cargo bench --bench scoring
echo "== routing cost (4)"
cargo bench --bench linucb -- headline
echo "== durable state"
cargo bench --bench store
echo "== trainer paths (5)"
cargo build --release --bin laser-router
python3 benches/trainer_paths.py target/release/laser-router
echo "== server path vs kernel (6)"
python3 benches/server_path.py 3
echo "== compared with the recorded figures"
python3 benches/compare.py target/bench.log
