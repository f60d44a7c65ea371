#!/usr/bin/env bash
# The kserve_v2 backend's tests (.ci/run runs them after the core suite): real inference
# engines, MLServer and KServe's Python ModelServer, serving the repository's ONNX reward
# models over the Open Inference Protocol, started by the tests on free local ports
# (clients/python/engine_tests). Each engine lives in its own virtual environment cached
# outside the repository, keyed by its requirements file's hash:
# ${LASER_ENGINE_VENVS:-~/.cache/laser-router}/{mlserver,kserve}-<hash> (about 400 MB each,
# a minute each to install the first time). The tests themselves run on the system Python
# with the client, like the core suite.
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
    touch "$venv/.complete"
  fi
  echo "$venv/bin/python"
}

LASER_MLSERVER_PYTHON=$(venv_for mlserver)
LASER_KSERVE_PYTHON=$(venv_for kserve)
export LASER_MLSERVER_PYTHON LASER_KSERVE_PYTHON
python3 -m pip install --quiet ./clients/python pytest
python3 -m pytest -q -p no:cacheprovider clients/python/engine_tests
echo "engine tests passed"
