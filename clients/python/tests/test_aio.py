"""The asyncio client against the real server: the same surface as the sync client,
retries while the server is down, the admin token, TLS."""

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest

from conftest import CONFIG, Server, free_port, make_certificates
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
        async with AsyncLaserRouterClient(f"127.0.0.1:{port}", backoff=0.1, timeout=60) as client:
            return await client.list_routers()
    try:
        assert asyncio.run(run()) == []
    finally:
        thread.join()
        started["server"].stop()


def test_tls_and_the_admin_token(tmp_path):
    ca = make_certificates(tmp_path)
    config = (f'[server]\nadmin_token = "s3cret"\n[server.tls]\ncert_path = "{tmp_path / "server.pem"}"\n'
              f'key_path = "{tmp_path / "server.key"}"\n' + CONFIG.replace("[server]\n", "[server_unused]\n", 1))
    config = config.replace("[server_unused]\nshutdown_grace_seconds = 0.5\n", "")
    port = free_port()
    server = Server(port, config).wait_ready()

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
