"""The local log on a disk that fills up, against the real server: requests that cannot be
made durable are refused with UNAVAILABLE naming the cause (never INTERNAL, never a crash),
health says NOT_SERVING while nothing can be made durable, the server serves again by itself
once space is back, nothing acknowledged is lost, and a restart reads no partial record.

Needs a small disk of its own: a tmpfs mounted here, so it runs as root (as CI does) and is
skipped where mounting is not allowed."""

import os
import subprocess
import time

import grpc
import numpy as np
import pytest

from conftest import Server, free_port
from laser_router_client import LaserRouterClient, LaserRouterError, Query

HEALTH = "/grpc.health.v1.Health/Check"


def health(address: str) -> int:
    """grpc.health.v1 status of the whole server: 1 SERVING, 2 NOT_SERVING."""
    with grpc.insecure_channel(address) as channel:
        reply = channel.unary_unary(HEALTH, request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)(b"", timeout=5)
    return reply[1] if len(reply) >= 2 else 0


def wait_for(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def queries(step):
    return [Query(id=str(i), context=np.eye(4)[(step + i) % 4], prompt=f"Question {step}-{i}?",
                  responses=["Fine.", "Very well, thank you!"]) for i in range(4)]


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk):
    """A file taking every byte the disk has left (unbuffered writes, ever smaller)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 64, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


def test_disk_full_refuses_then_serves_again_and_loses_nothing(small_disk):
    server = Server(free_port(), data_dir=small_disk / "data").wait_ready()
    try:
        client = LaserRouterClient(server.address, retries=0, timeout=10)
        client.create_router("disk", context_dim=4, normalization="none")
        acknowledged = []  # decision ids whose feedback was acknowledged
        for step in range(5):
            ids = [r.decision_id for r in client.score("disk", queries(step))]
            assert client.feedback("disk", ids, loss=0.5)["applied"] == len(ids)
            acknowledged += ids
        assert health(server.address) == 1

        filler = fill(small_disk)
        refused = []
        for step in range(5, 200):
            try:
                ids = [r.decision_id for r in client.score("disk", queries(step))]
                if client.feedback("disk", ids, loss=0.5)["applied"]:
                    acknowledged += ids
            except LaserRouterError as error:
                refused.append(error)
                if len(refused) >= 5:
                    break
        assert refused, "a full disk must refuse something"
        assert all(e.code == grpc.StatusCode.UNAVAILABLE for e in refused), refused
        assert all("No space left on device" in e.message for e in refused), refused[0].message
        assert server.process.poll() is None, "the server must not crash"
        assert wait_for(lambda: health(server.address) == 2), "health must say NOT_SERVING"
        # While it fails, a change is refused before anything is applied.
        with pytest.raises(LaserRouterError) as again:
            client.score("disk", queries(999))
        assert again.value.code == grpc.StatusCode.UNAVAILABLE
        assert "nothing was changed" in again.value.message

        filler.unlink()
        assert wait_for(lambda: health(server.address) == 1), "health must say SERVING again by itself"
        ids = [r.decision_id for r in client.score("disk", queries(500))]
        assert client.feedback("disk", ids, loss=0.5)["applied"] == len(ids)
        acknowledged += ids
        before_restart = client.get_router("disk")

        # Restart on the same disk: recovery reads no partial record and keeps every
        # acknowledged feedback (sending it again finds it applied).
        server.kill()
        server.start()
        server.wait_ready()
        client = LaserRouterClient(server.address, retries=3, timeout=10)
        after = client.get_router("disk")
        assert sum(a.feedback_count for a in after.arms) == sum(a.feedback_count for a in before_restart.arms)
        replay = client.feedback("disk", acknowledged, loss=0.5)
        assert replay["applied"] == 0 and replay["duplicate"] == len(acknowledged)
    finally:
        server.stop()
