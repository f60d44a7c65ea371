"""The PostgreSQL state backend against a real PostgreSQL (a throwaway cluster): state survives
a SIGKILL exactly (snapshots in chunks, records after them), a second server on the same
database is refused, and PostgreSQL stopped under traffic gives clean UNAVAILABLE, health
NOT_SERVING, and service resuming by itself with nothing acknowledged lost."""

import subprocess
import threading
import time

import grpc
import pytest

from conftest import CONFIG, Server, binary, free_port
from laser_router_client import LaserRouterClient, LaserRouterError, Query
from postgres_cluster import PostgresCluster


@pytest.fixture
def postgres():
    cluster = PostgresCluster()
    yield cluster
    cluster.close()


def config(postgres, snapshot_every_records=10000, context_dim=4):
    return CONFIG.replace("[routers]\ncontext_dim = 4", f"[routers]\ncontext_dim = {context_dim}") + f"""
[store]
backend = "postgres"
url = "{postgres.url}"
snapshot_every_records = {snapshot_every_records}
"""


def arms(client, router):
    info = client.get_router(router)
    return {a.reward_model: (a.selections, a.feedback_count) for a in info.arms}, info.pending_decisions


def serving(server) -> bool:
    return subprocess.run([str(binary()), "health", "--addr", server.address], capture_output=True).returncode == 0


def test_state_in_postgres_survives_a_kill_exactly_with_snapshots_in_chunks(postgres):
    dim = 1100  # two arms of 1100 x 1100 f64 factors: a snapshot of about 20 MB, in 8 MB chunks
    server = Server(free_port(), config(postgres, snapshot_every_records=40, context_dim=dim)).wait_ready()
    try:
        client = LaserRouterClient(server.address)
        client.create_router("pg", context_dim=dim, policy="linucb")
        for i in range(70):
            context = [0.0] * dim
            context[i % dim] = 1.0
            (result,) = client.score("pg", [Query(id="q", context=context, prompt="p", responses=["a", "bb"])])
            if i < 60:
                client.feedback("pg", [result.decision_id], loss=0.1 * (i % 7))
        before = arms(client, "pg")
        assert before[1] == 10 and sum(s for s, _ in before[0].values()) == 70
        deadline = time.time() + 30
        while postgres.sql("SELECT count(*) FROM laser_snapshots") == "0":
            assert time.time() < deadline, "no snapshot was written"
            time.sleep(0.2)
        chunks = int(postgres.sql("SELECT max(chunks) FROM laser_snapshots"))
        assert chunks >= 2, chunks
        snapshot_seq = int(postgres.sql("SELECT max(seq) FROM laser_snapshots"))
        assert postgres.sql(f"SELECT count(*) FROM laser_records WHERE seq <= {snapshot_seq}") == "0"
        server.kill()
        # A second server cannot take the database while the first... is gone: it can now.
        server.start()
        server.wait_ready()
        assert arms(client, "pg") == before
    finally:
        server.stop()


def test_a_second_writer_on_the_same_database_is_refused(postgres):
    first = Server(free_port(), config(postgres)).wait_ready()
    try:
        second = Server(free_port(), config(postgres))
        assert second.process.wait(timeout=30) != 0
        second.dir.cleanup()
    finally:
        first.stop()


def test_postgres_restarted_under_traffic(postgres):
    server = Server(free_port(), config(postgres)).wait_ready()
    try:
        client = LaserRouterClient(server.address, retries=0, timeout=5)
        client.create_router("busy", context_dim=4)
        codes = []
        acknowledged = set()
        scored = [0]
        stop = threading.Event()

        def traffic():
            while not stop.is_set():
                try:
                    (result,) = client.score("busy", [Query(id="q", context=[1, 0, 0, 0], prompt="p", responses=["a", "b"])])
                    scored[0] += 1
                except LaserRouterError as error:
                    codes.append(error.code)
                    time.sleep(0.05)
                    continue
                # Feedback retried until acknowledged: applied once, whatever happens meanwhile.
                while not stop.is_set():
                    try:
                        client.feedback("busy", [result.decision_id], loss=0.5)
                        acknowledged.add(result.decision_id)
                        break
                    except LaserRouterError as error:
                        codes.append(error.code)
                        time.sleep(0.05)
                time.sleep(0.01)

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            time.sleep(1.5)
            assert serving(server)
            postgres.stop("fast")
            time.sleep(1.0)
            assert not serving(server), "health must say NOT_SERVING while nothing can be made durable"
            failures_while_down = len(codes)
            time.sleep(1.5)
            assert len(codes) > failures_while_down or codes, "requests must have been refused"
            postgres.start()
            deadline = time.time() + 20
            while not serving(server):
                assert time.time() < deadline, "service did not resume by itself"
                time.sleep(0.2)
            resumed = scored[0]
            time.sleep(1.5)
            assert scored[0] > resumed, "Scores must succeed again"
        finally:
            stop.set()
            worker.join()
        assert codes and set(codes) == {grpc.StatusCode.UNAVAILABLE}, set(codes)
        fed_back = sum(f for _, f in arms(client, "busy")[0].values())
        assert fed_back == len(acknowledged)
        before = arms(client, "busy")
        server.kill()
        server.start()
        server.wait_ready()
        assert arms(client, "busy") == before, "everything acknowledged survives"
    finally:
        server.stop()
