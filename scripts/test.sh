#!/usr/bin/env bash
# The whole test suite: fetch ONNX Runtime and install Prometheus if missing, then unit +
# integration tests (integration tests start the real server binary on 127.0.0.1:0; the
# dashboard test runs a real Prometheus against it), then the Python client's tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/fetch-onnxruntime.sh
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "installing Prometheus (Debian package) for the dashboard and alert tests"
  SUDO=""
  [[ "$(id -u)" -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# PostgreSQL (Debian's package) for the PostgreSQL state backend's tests, which start a
# throwaway cluster with initdb/pg_ctl in a temporary directory (as the postgres user).
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || ! command -v psql >/dev/null 2>&1; then
  echo "installing PostgreSQL (Debian package) for the state backend tests"
  SUDO=""
  [[ "$(id -u)" -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  # The package may start its own cluster; the tests run theirs.
  $SUDO service postgresql stop >/dev/null 2>&1 || true
fi
cargo test --locked "$@"
# The Python client against the server binary cargo just built.
python3 -m pip install --quiet ./clients/python pytest grpcio-tools requests
python3 -m pytest -q clients/python/tests
