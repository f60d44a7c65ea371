"""Fixtures of the kserve_v2 tests: real engines (engines.py) and a laser-router server whose
config holds the same ONNX models in process, to compare against."""

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
_spec = importlib.util.spec_from_file_location(
    "laser_test_server", Path(__file__).resolve().parents[1] / "tests" / "conftest.py")
laser_test_server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(laser_test_server)
Server, free_port, FIXTURES = laser_test_server.Server, laser_test_server.free_port, laser_test_server.FIXTURES

from engines import DEMO, Engine  # noqa: E402

# Local twins of the remote models: the same ONNX files in process.
CONFIG = f"""
[server]
shutdown_grace_seconds = 0.5
[routers]
context_dim = 2
[[reward_models]]
name = "numeric"
model = "{FIXTURES / 'numeric' / 'model.onnx'}"
tokenizer = "{FIXTURES / 'tokenizer.json'}"
input_format = "template"
template = "Question: {{prompt}}\\nAnswer: {{response}}"
output = "scores"
output_index = 1
[[reward_models]]
name = "satisfaction"
model = "{DEMO / 'model.onnx'}"
tokenizer = "{DEMO / 'tokenizer.json'}"
input_format = "pair"
max_length = 256
output = "logits"
output_index = 0
"""


@pytest.fixture(scope="module", params=["mlserver", "kserve"])
def engine(request):
    running = Engine(request.param)
    yield running
    running.close()


@pytest.fixture(scope="module")
def mlserver():
    running = Engine("mlserver")
    yield running
    running.close()


@pytest.fixture
def server():
    running = Server(free_port(), CONFIG).wait_ready()
    yield running
    running.stop()
