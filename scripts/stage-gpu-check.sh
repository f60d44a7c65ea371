#!/usr/bin/env bash
# Prepare the GPU check of issue 18 for a lent GPU machine (calls carry at most 64 MiB each):
#   .device/gpu1 .. gpuN  ONNX Runtime's CUDA build in pieces (../shared/gpu/stage-onnxruntime-gpu.sh)
#   .device/model         the float demo RM (models/demo-fp16/model.onnx, 45 MB)
#   .device/bundle        release laser-router + gpu_check + tokenizer.json (about 29 MB)
# and print the device calls to make, back to back while the machine stays warm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
bash "$root/../shared/gpu/stage-onnxruntime-gpu.sh"
[[ -f models/demo-fp16/model.onnx ]] || python3 scripts/make_demo_models.py --float16
cargo build --release --bin laser-router --example gpu_check
rm -rf .device/model .device/bundle
mkdir -p .device/model .device/bundle
cp models/demo-fp16/model.onnx .device/model/
cp target/release/laser-router target/release/examples/gpu_check models/demo-fp16/tokenizer.json .device/bundle/
du -sh .device/*
last=$(ls -d .device/gpu* | sort -V | tail -1)
echo
echo "Device calls, in order (run kind: leave it out; timeout_s 600 for the last):"
for dir in $(ls -d .device/gpu* | sort -V); do
  [[ $dir == "$last" ]] && continue
  echo "  carry [\"$dir\"]: mkdir -p /tmp/ort && cp $dir/* /tmp/ort/"
done
echo "  carry [\".device/model\"]: mkdir -p /tmp/check && cp .device/model/* /tmp/check/"
echo "  carry [\"$last\", \".device/bundle\"]: mkdir -p /tmp/ort /tmp/check && cp $last/* /tmp/ort/ && cp .device/bundle/* /tmp/check/ && eval \"\$(bash /tmp/ort/assemble.sh)\" && bash scripts/gpu-check.sh --gpu /tmp/check \$OUT"
echo "  then, while it is warm (no carry): eval \"\$(bash /tmp/ort/assemble.sh)\" && bash scripts/gpu-check.sh --vllm /tmp/check \$OUT"
echo "  (the vllm case runs only where the machine's Python has vLLM; it says so otherwise)"
