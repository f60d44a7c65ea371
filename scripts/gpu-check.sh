#!/usr/bin/env bash
# The GPU check of issue 18: reward models on ONNX Runtime's CUDA provider, measured.
#
#   bash scripts/gpu-check.sh --cpu-dry-run        here, on CPU: builds what travels and runs
#                                                  the whole check on the CPU provider (quick)
#   bash scripts/gpu-check.sh --gpu BUNDLE OUT     on the GPU machine, after the staging calls
#                                                  (scripts/stage-gpu-check.sh prints them):
#                                                  runs the check on the CUDA provider
#
# BUNDLE holds laser-router, gpu_check (examples/gpu_check.rs), model.onnx and tokenizer.json
# (the float demo RM: scripts/make_demo_models.py --float16). The report is OUT/gpu-report.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-}" in
  --cpu-dry-run)
    bash scripts/fetch-onnxruntime.sh
    [[ -f models/demo-fp16/model.onnx ]] || python3 scripts/make_demo_models.py --float16
    cargo build --release --bin laser-router --example gpu_check
    out=target/gpu-check
    mkdir -p "$out"
    ORT_DYLIB_PATH="$PWD/.ort/lib/libonnxruntime.so" target/release/examples/gpu_check \
      --server target/release/laser-router --models models/demo-fp16 --provider cpu --out "$out" --quick
    echo "dry run report: $out/gpu-report.md"
    ;;
  --gpu)
    bundle=${2:?bundle folder}
    out=${3:?output folder}
    : "${ORT_DYLIB_PATH:?eval \"\$(bash /tmp/ort/assemble.sh)\" first}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    chmod +x "$bundle/laser-router" "$bundle/gpu_check"
    timeout 480 "$bundle/gpu_check" --server "$bundle/laser-router" --models "$bundle" \
      --provider cuda --out "$out" 2> "$out/gpu-check.stderr" || {
        echo "gpu_check failed; last lines of its stderr:"; tail -40 "$out/gpu-check.stderr"; exit 1; }
    ;;
  *)
    sed -n 2,12p "$0"
    exit 2
    ;;
esac
