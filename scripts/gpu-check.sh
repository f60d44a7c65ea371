#!/usr/bin/env bash
# The GPU check of issue 18: reward models on ONNX Runtime's CUDA provider, measured; and
# (issue 27) the vllm backend against vLLM's CUDA build where the machine has it.
#
#   bash scripts/gpu-check.sh --cpu-dry-run        here, on CPU: builds what travels and runs
#                                                  the whole check on the CPU provider (quick)
#   bash scripts/gpu-check.sh --gpu BUNDLE OUT     on the GPU machine, after the staging calls
#                                                  (scripts/stage-gpu-check.sh prints them):
#                                                  runs the check on the CUDA provider
#   bash scripts/gpu-check.sh --vllm BUNDLE OUT    on a GPU machine whose Python has vLLM (CUDA
#                                                  build), pytest, grpcio and protobuf: the vllm
#                                                  backend's tests and benches/vllm_rm.py there
#                                                  (report OUT/vllm-report.md; skipped, saying
#                                                  so, where vLLM is not installed)
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
  --vllm)
    bundle=${2:?bundle folder}
    out=${3:?output folder}
    report="$out/vllm-report.md"
    python=${LASER_VLLM_PYTHON:-python3}
    if ! "$python" -c "import vllm" 2>/dev/null; then
      echo "vLLM is not installed for $python on this machine: the vllm case did not run." | tee "$report"
      exit 0
    fi
    chmod +x "$bundle/laser-router"
    # Three vLLM servers share the device in the tests: a quarter of its memory each.
    export LASER_VLLM_PYTHON=$python LASER_ROUTER_BIN="$bundle/laser-router" \
      LASER_VLLM_EXTRA_ARGS="--gpu-memory-utilization 0.25"
    {
      echo "# vLLM on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
      echo "vllm $("$python" -c 'import vllm; print(vllm.__version__)')"
      echo '## clients/python/engine_tests/test_vllm.py'
      echo '```'
      timeout 420 python3 -m pytest -q -p no:cacheprovider clients/python/engine_tests/test_vllm.py 2>&1 | tail -15 || true
      echo '```'
      echo '## benches/vllm_rm.py'
      echo '```'
      timeout 150 python3 benches/vllm_rm.py 5 2>&1 | tail -8 || true
      echo '```'
    } > "$report"
    cat "$report"
    ;;
  *)
    sed -n 2,17p "$0"
    exit 2
    ;;
esac
