"""Start real inference engines (MLServer, KServe's ModelServer) serving the repository's ONNX
reward models over the Open Inference Protocol, on free local ports, from their own virtual
environments (scripts/test-engines.sh makes them: LASER_MLSERVER_PYTHON, LASER_KSERVE_PYTHON).
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
    variable = {"mlserver": "LASER_MLSERVER_PYTHON", "kserve": "LASER_KSERVE_PYTHON"}[engine]
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
