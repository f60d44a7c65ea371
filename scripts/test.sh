#!/usr/bin/env bash
# The whole test suite: fetch ONNX Runtime if missing, then unit + integration tests
# (integration tests start the real server binary on 127.0.0.1:0).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-onnxruntime.sh
cargo test --locked "$@"
