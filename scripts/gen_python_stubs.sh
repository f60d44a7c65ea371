#!/usr/bin/env bash
# Regenerate the Python client's gRPC stubs from proto/ (needs `pip install grpcio-tools`).
# The stubs are committed so `pip install ./clients/python` needs no code generation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=clients/python/laser_router_client/_pb
rm -rf "$out"
mkdir -p "$out"
python3 -m grpc_tools.protoc -Iproto --python_out="$out" --grpc_python_out="$out" proto/laser/v1/*.proto
# Absolute imports of the generated modules become package-relative.
find "$out" -name '*.py' -exec sed -i 's/^from laser\.v1 import/from laser_router_client._pb.laser.v1 import/' {} +
touch "$out/__init__.py" "$out/laser/__init__.py" "$out/laser/v1/__init__.py"
echo "stubs written to $out"
