"""The asyncio client against the real server: the same surface as the sync client,
retries while the server is down, the admin token, TLS."""

import asyncio
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import CONFIG, Server, free_port
from laser_router_client import AsyncLaserRouterClient, LaserRouterError, Query


def queries(n, group=None):
    return [Query(id=f"q{i}", context=np.eye(4)[i % 4], prompt="How are you?",
                  responses=["Fine.", "Very well, thank you for asking!"], group=group)
            for i in range(n)]


def test_score_feedback_and_admin_over_asyncio(server):
    async def run():
        async with AsyncLaserRouterClient(server.address) as client:
            await client.create_router("aio", context_dim=4, normalization="none")
            results = await client.score("aio", queries(3, group="prompt-1"))
            assert len({r.decision_id for r in results}) == 1
            step = await client.feedback("aio", all_pending=True, loss=0.2, idempotency_key="aio/1")
            assert step == {"applied": 1, "duplicate": 0, "not_applied": 0, "replayed": False}
            info = await client.get_router("aio")
            assert info.pending_decisions == 0 and info.rewards_seen == 1
            with pytest.raises(LaserRouterError) as unknown:
                await client.feedback("aio", ["nope"], loss=1.0)
            assert unknown.value.code == grpc.StatusCode.NOT_FOUND
            assert [m.name for m in await client.list_reward_models()] == ["length", "polite"]
    asyncio.run(run())


def test_calls_are_retried_until_the_server_is_up():
    port = free_port()
    started = {}

    def start_later():
        time.sleep(1.0)
        started["server"] = Server(port).wait_ready()

    thread = threading.Thread(target=start_later)
    thread.start()

    async def run():
        async with AsyncLaserRouterClient(f"127.0.0.1:{port}", retries=10, backoff=0.1, timeout=5) as client:
            return await client.list_routers()
    try:
        assert asyncio.run(run()) == []
    finally:
        thread.join()
        started["server"].stop()


def openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


def test_tls_and_the_admin_token(tmp_path):
    openssl(tmp_path, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=aio-test-ca")
    openssl(tmp_path, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=server")
    (tmp_path / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(tmp_path, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    config = (f'[server]\nadmin_token = "s3cret"\n[server.tls]\ncert_path = "{tmp_path / "server.pem"}"\n'
              f'key_path = "{tmp_path / "server.key"}"\n' + CONFIG.replace("[server]\n", "[server_unused]\n", 1))
    config = config.replace("[server_unused]\nshutdown_grace_seconds = 0.5\n", "")
    port = free_port()
    server = Server(port, config).wait_ready()
    ca = (tmp_path / "ca.pem").read_bytes()

    async def run():
        async with AsyncLaserRouterClient(f"localhost:{port}", root_certificates=ca, admin_token="s3cret") as admin:
            assert await admin.list_routers() == []
            results = await admin.score("tls", queries(1))
            assert results[0].reward_model in ("length", "polite")
        async with AsyncLaserRouterClient(f"localhost:{port}", root_certificates=ca, retries=0) as anonymous:
            with pytest.raises(LaserRouterError) as refused:
                await anonymous.list_routers()
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    try:
        asyncio.run(run())
    finally:
        server.stop()
