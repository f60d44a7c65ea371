"""Trainer tests: real TRL runs (torch, transformers, trl from scripts/test-trainers.sh's
cached virtual environment) against the real laser-router binary, as in ../tests."""

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("laser_client_test_server",
                                               Path(__file__).resolve().parents[1] / "tests" / "conftest.py")
server_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = server_module
_spec.loader.exec_module(server_module)

Server, free_port, FIXTURES, HTTP_CONFIG = (server_module.Server, server_module.free_port,
                                            server_module.FIXTURES, server_module.HTTP_CONFIG)


@pytest.fixture
def encoder_server():
    """Two fixture RMs (`length`, `polite`) and the `topics` encoder as the default for
    routers that Scores without contexts create."""
    running = Server(free_port(), HTTP_CONFIG).wait_ready()
    yield running
    running.stop()
