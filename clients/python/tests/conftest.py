"""A real laser-router server (the binary cargo built) on 127.0.0.1 for the client tests."""

import atexit
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "reward_models"


def binary() -> Path:
    path = Path(os.environ.get("LASER_ROUTER_BIN", ROOT / "target" / "debug" / "laser-router"))
    if not path.exists():
        raise RuntimeError(f"{path} is missing: build it with `cargo build` (scripts/test.sh does)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIG = f"""
[server]
shutdown_grace_seconds = 0.5
[routers]
context_dim = 4
[[reward_models]]
name = "length"
model = "{FIXTURES / 'length' / 'model.onnx'}"
tokenizer = "{FIXTURES / 'tokenizer.json'}"
input_format = "pair"
output = "logits"
[[reward_models]]
name = "polite"
model = "{FIXTURES / 'polite' / 'model.onnx'}"
tokenizer = "{FIXTURES / 'tokenizer.json'}"
input_format = "pair"
output = "logits"
"""


# The HTTP tests' server: the same RMs, the `topics` fixture encoder as the default for
# routers created by Scores without contexts, and the HTTP/JSON listener.
HTTP_CONFIG = CONFIG.replace("[routers]\n", '[routers]\ndefault_encoder = "topics"\n') + f"""
[[encoders]]
name = "topics"
model = "{FIXTURES / 'topics' / 'model.onnx'}"
tokenizer = "{FIXTURES / 'tokenizer.json'}"
"""


def pairwise_agreement(scores, labels) -> float:
    """The server's label reward, written out independently: over pairs of responses whose
    labels differ, 1 when the scores order them as the labels do, 1/2 on a score tie, else 0."""
    credit, pairs = 0.0, 0
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if labels[i] != labels[j]:
                pairs += 1
                credit += 0.5 if scores[i] == scores[j] else float((scores[i] > scores[j]) == (labels[i] > labels[j]))
    return credit / pairs


def make_certificates(folder: Path) -> bytes:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1 signed by it, written
    as server.pem / server.key in `folder`; returns the CA's PEM."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=laser-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=server")
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return (folder / "ca.pem").read_bytes()


# Every server process a test started: whatever a test left running (it failed, or a thread
# restarted a server after the test had stopped it) is killed when the test session ends.
_STARTED = []


@atexit.register
def _stop_every_server() -> None:
    for process in _STARTED:
        if process.poll() is None:
            process.kill()
            process.wait()


class Server:
    def __init__(self, port: int, config_text: str = CONFIG, http: bool = False, data_dir: Path = None):
        self.dir = tempfile.TemporaryDirectory()
        config = Path(self.dir.name) / "config.toml"
        config.write_text(config_text)
        # ONNX Runtime: the one scripts/fetch-onnxruntime.sh fetched, unless the caller chose
        # another (scripts/gpu-check.sh --vllm: the CUDA build).
        env = dict(os.environ)
        env.setdefault("ORT_DYLIB_PATH", str(ROOT / ".ort" / "lib" / "libonnxruntime.so"))
        self.address = f"127.0.0.1:{port}"
        self.http = None
        extra = ["--http-listen", "127.0.0.1:0"] if http else []
        self.command = [str(binary()), "serve", "--config", str(config), "--listen", self.address,
                        "--metrics-listen", "127.0.0.1:0", "--data-dir", str(data_dir or Path(self.dir.name) / "data"),
                        *extra]
        self.env = env
        self.start()

    def start(self) -> None:
        """Start the binary (again, after `kill`: same port, same data directory)."""
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, env=self.env)
        _STARTED.append(self.process)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or closed."""
        self.process.kill()
        self.process.wait()

    def wait_ready(self, timeout: float = 60.0) -> "Server":
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("laser-router listening"):
                fields = dict(part.split("=", 1) for part in line.split()[2:])
                if "http" in fields:
                    self.http = "http://" + fields["http"]
                self.metrics = "http://" + fields["metrics"] + "/metrics"
                return self
            if self.process.poll() is not None:
                break
        raise RuntimeError("laser-router did not start")

    def stop(self) -> None:
        self.kill()
        self.dir.cleanup()


@pytest.fixture
def server():
    running = Server(free_port()).wait_ready()
    yield running
    running.stop()


@pytest.fixture
def http_server():
    running = Server(free_port(), HTTP_CONFIG, http=True).wait_ready()
    yield running
    running.stop()
