"""Start the laser-router binary this checkout built, for the examples: the newer of
target/release and target/debug (or $LASER_ROUTER_BIN), ONNX Runtime from .ort/, gRPC on a free loopback port,
metrics on another, state in `data_dir`. Returns once it listens."""

import atexit
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stop(process) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir, config=None):
    """(process, gRPC address, metrics address). `config`: a TOML file, else the embedded
    defaults (the demo RMs and encoder, which scripts/demo-models.sh builds)."""
    chosen = os.environ.get("LASER_ROUTER_BIN")  # a binary to use instead of the newest build
    built = [p for p in ([Path(chosen)] if chosen else
                         [ROOT / "target" / "release" / "laser-router", ROOT / "target" / "debug" / "laser-router"])
             if p.exists()]
    if not built:
        sys.exit("no server binary: run `cargo build --release` (or `cargo build`) first")
    if config is None and not (ROOT / "models" / "demo" / "model.onnx").exists():
        sys.exit("no demo reward models: run scripts/demo-models.sh first")
    binary = max(built, key=lambda p: p.stat().st_mtime)
    address = f"127.0.0.1:{free_port()}"
    command = [str(binary), "serve", "--listen", address, "--metrics-listen", "127.0.0.1:0",
               "--data-dir", str(data_dir)] + (["--config", str(config)] if config else [])
    env = dict(os.environ, ORT_DYLIB_PATH=str(ROOT / ".ort" / "lib" / "libonnxruntime.so"), LASER_LOG="warn")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    atexit.register(_stop, process)  # the example stops what it started, also when it fails
    line = process.stdout.readline()
    if not line.startswith("laser-router listening"):
        process.kill()
        sys.exit("the server did not start")
    return process, address, re.search(r"metrics=(\S+)", line).group(1)
