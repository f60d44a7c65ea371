#!/usr/bin/env bash
# Fetch ONNX Runtime's shared library from the official `onnxruntime` wheel on PyPI and
# put it where .cargo/config.toml's ORT_DYLIB_PATH points (.ort/lib/, ignored by git).
#
# The version is pinned to match the `api-31` feature of the `ort` crate in Cargo.toml.
# Idempotent: does nothing when the library is already there.
set -euo pipefail
ORT_VERSION="${ORT_VERSION:-1.31.1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.ort/lib"
lib="$dest/libonnxruntime.so"
if [[ -f "$dest/libonnxruntime.so.$ORT_VERSION" && -e "$lib" ]]; then
  echo "onnxruntime $ORT_VERSION already at $lib"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --python-version 3.11 --implementation cp \
  -d "$tmp" "onnxruntime==$ORT_VERSION"
wheel="$(ls "$tmp"/onnxruntime-*.whl)"
mkdir -p "$dest"
python3 - "$wheel" "$dest" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if os.path.basename(n).startswith("libonnxruntime.so")]
    if not names:
        sys.exit(f"no libonnxruntime.so.* in {wheel}")
    for n in names:
        out = os.path.join(dest, os.path.basename(n))
        with z.open(n) as src, open(out, "wb") as dst:
            dst.write(src.read())
        print(out)
PY
ln -sf "libonnxruntime.so.$ORT_VERSION" "$lib"
echo "onnxruntime $ORT_VERSION installed: $lib"
