"""The PostgreSQL state backend against a real PostgreSQL (a throwaway cluster): state survives
a SIGKILL exactly (snapshots in chunks, records after them), a second server on the same
database is refused, and PostgreSQL stopped under traffic gives clean UNAVAILABLE, health
NOT_SERVING, and service resuming by itself with nothing acknowledged lost."""

import random
import signal
import statistics
import subprocess
import threading
import time

import grpc
import pytest

from conftest import CONFIG, Server, binary, free_port, make_certificates
from laser_router_client import LaserRouterClient, LaserRouterError, Query
from postgres_cluster import PostgresCluster


@pytest.fixture
def postgres():
    cluster = PostgresCluster()
    yield cluster
    cluster.close()


def config(postgres, snapshot_every_records=10000, context_dim=4, lease_seconds=10.0):
    return CONFIG.replace("[routers]\ncontext_dim = 4", f"[routers]\ncontext_dim = {context_dim}") + f"""
[store]
backend = "postgres"
url = "{postgres.url}"
snapshot_every_records = {snapshot_every_records}
lease_seconds = {lease_seconds}
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


def test_a_second_server_forwards_as_a_standby_and_takes_over(postgres):
    first = Server(free_port(), config(postgres, lease_seconds=1.0)).wait_ready()
    second = Server(free_port(), config(postgres, lease_seconds=1.0))
    try:
        client = LaserRouterClient(first.address)
        client.create_router("r", context_dim=4)
        (result,) = client.score("r", [Query(id="q", context=[1, 0, 0, 0], prompt="p", responses=["a", "b"])])
        client.feedback("r", [result.decision_id], loss=0.2)
        # The standby forwards what reaches it to the lease holder.
        time.sleep(1.0)
        forwarded = LaserRouterClient(second.address)
        (pending,) = forwarded.score("r", [Query(id="q", context=[0, 1, 0, 0], prompt="p", responses=["a", "b"])])
        before = arms(client, "r")
        assert before == arms(forwarded, "r") and before[1] == 1
        assert second.process.poll() is None
        first.kill()
        killed = time.time()
        second.wait_ready(timeout=30)
        takeover = time.time() - killed
        assert takeover < 10, takeover
        standby = LaserRouterClient(second.address)
        assert arms(standby, "r") == before
        # One channel over both replicas reaches whichever holds the lease.
        both = LaserRouterClient(channel=grpc.insecure_channel(
            f"ipv4:{first.address},{second.address}", options=[("grpc.default_authority", "laser-router")]))
        assert arms(both, "r") == before
        # The decision pending at the takeover is still there, and takes its feedback once.
        assert standby.feedback("r", [pending.decision_id], loss=0.1)["applied"] == 1
    finally:
        first.stop()
        second.stop()


def test_a_standby_with_tls_passes_connections_through_to_the_owner(postgres, tmp_path):
    ca = make_certificates(tmp_path)
    tls = f'[server.tls]\ncert_path = "{tmp_path / "server.pem"}"\nkey_path = "{tmp_path / "server.key"}"\n'
    text = config(postgres, lease_seconds=1.0).replace("[routers]\n", tls + "[routers]\n", 1)
    first = Server(free_port(), text).wait_ready()
    second = Server(free_port(), text)
    try:
        def tls_client(server):  # by the name the certificate carries
            return LaserRouterClient(server.address.replace("127.0.0.1", "localhost"), root_certificates=ca)

        owner = tls_client(first)
        owner.create_router("r", context_dim=4)
        (result,) = owner.score("r", [Query(id="q", context=[1, 0, 0, 0], prompt="p", responses=["a", "b"])])
        time.sleep(1.0)
        # TLS end to end through the standby's port: the owner's certificate, the owner's state.
        through = tls_client(second)
        assert through.feedback("r", [result.decision_id], loss=0.2)["applied"] == 1
        assert arms(through, "r") == arms(owner, "r") and arms(owner, "r")[1] == 0
        assert second.process.poll() is None
        first.kill()
        second.wait_ready(timeout=30)
        # The client's next connection reaches the new owner, which serves the same state.
        assert arms(through, "r") == arms(tls_client(second), "r")
        assert sum(s for s, _ in arms(through, "r")[0].values()) == 1
    finally:
        first.stop()
        second.stop()


def test_a_paused_owner_is_fenced_and_steps_down(postgres):
    """SIGSTOP the owner past its lease, let a standby take over and serve, SIGCONT the old
    owner: none of its writes land, and it exits (steps down)."""
    owner = Server(free_port(), config(postgres, lease_seconds=1.0)).wait_ready()
    standby = Server(free_port(), config(postgres, lease_seconds=1.0))
    try:
        old = LaserRouterClient(owner.address, retries=0, timeout=5)
        old.create_router("r", context_dim=4)
        (result,) = old.score("r", [Query(id="q", context=[1, 0, 0, 0], prompt="p", responses=["a", "b"])])
        old.feedback("r", [result.decision_id], loss=0.2)
        owner.process.send_signal(signal.SIGSTOP)
        standby.wait_ready(timeout=30)
        new = LaserRouterClient(standby.address)
        for i in range(3):
            (result,) = new.score("r", [Query(id=str(i), context=[0, 1, 0, 0], prompt="p", responses=["a", "b"])])
            new.feedback("r", [result.decision_id], loss=0.3)
        after_takeover = arms(new, "r")
        owner.process.send_signal(signal.SIGCONT)
        with pytest.raises(LaserRouterError):
            # Served from its stale memory at most until its write is refused.
            for i in range(20):
                old.score("r", [Query(id="late", context=[0, 0, 1, 0], prompt="p", responses=["a", "b"])])
                time.sleep(0.1)
        assert owner.process.wait(timeout=10) == 75, "the fenced owner steps down"
        assert arms(new, "r") == after_takeover
        standby.kill()
        standby.start()
        standby.wait_ready(timeout=30)
        assert arms(LaserRouterClient(standby.address), "r") == after_takeover, "no write of the old owner landed"
    finally:
        if owner.process.poll() is None:
            owner.process.send_signal(signal.SIGCONT)
        owner.stop()
        standby.stop()


def test_owners_killed_under_traffic_lose_nothing_acknowledged(postgres):
    """3 replicas on one database, 4 trainers, the owner SIGKILLed 10 times at random moments
    (and restarted as a standby): every acknowledged feedback counted exactly once, decisions
    left pending survive, takeover times printed."""
    replicas = [Server(free_port(), config(postgres, lease_seconds=0.5)).wait_ready(timeout=30)]
    replicas += [Server(free_port(), config(postgres, lease_seconds=0.5)) for _ in range(2)]
    addresses = [r.address for r in replicas]
    owner = [0]
    LaserRouterClient(addresses[0]).create_router("chaos", context_dim=4)
    fed = set()  # decisions whose feedback was acknowledged
    unfed = []  # acknowledged decisions deliberately left pending
    stop = threading.Event()

    def call(method, *args, **kwargs):
        while not stop.is_set():
            for address in addresses:
                try:
                    return getattr(LaserRouterClient(address, retries=0, timeout=3), method)(*args, **kwargs)
                except LaserRouterError as error:
                    assert error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), error
            time.sleep(0.05)
        raise TimeoutError

    def trainer(index):
        i = 0
        while not stop.is_set():
            try:
                (result,) = call("score", "chaos", [Query(id="q", context=[index, 1, i % 3, 0], prompt="p", responses=["a", "b"])])
                if i % 5 == 4:
                    unfed.append(result.decision_id)
                else:
                    call("feedback", "chaos", [result.decision_id], loss=0.1 * index)
                    fed.add(result.decision_id)
            except TimeoutError:
                return
            i += 1

    threads = [threading.Thread(target=trainer, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    takeovers = []
    try:
        rng = random.Random(7)
        for _ in range(10):
            time.sleep(rng.uniform(0.3, 1.2))
            epoch = int(postgres.sql("SELECT epoch FROM laser_lease"))
            replicas[owner[0]].kill()
            killed = time.time()
            replicas[owner[0]].start()  # back as a standby (it may win the lease itself)
            while True:
                new_epoch, holder = postgres.sql("SELECT epoch, address FROM laser_lease").split("|")
                if int(new_epoch) > epoch and serving(replicas[addresses.index(holder)]):
                    owner[0] = addresses.index(holder)
                    break
                assert time.time() - killed < 20, "no replica took over"
                time.sleep(0.05)
            takeovers.append(time.time() - killed)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    print(f"takeover after SIGKILL: median {statistics.median(takeovers):.2f} s, max {max(takeovers):.2f} s "
          f"(lease 0.5 s), {len(fed)} feedbacks acknowledged")
    try:
        client = LaserRouterClient(replicas[owner[0]].address)
        counts, pending = arms(client, "chaos")
        assert sum(f for _, f in counts.values()) == len(fed), "every acknowledged feedback exactly once"
        assert pending >= len(unfed)
        answer = client.feedback("chaos", list(unfed), loss=0.5)
        assert answer["applied"] == len(unfed), "decisions left pending survived every takeover"
        assert len(fed) > 50 and len(takeovers) == 10
    finally:
        for replica in replicas:
            replica.stop()


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


def test_a_stopping_owner_hands_the_lease_over_and_state_commands_respect_it(postgres):
    """SIGTERM: the owner hands the lease back on its way out, so a standby takes over at
    once, well before a 30 s lease would lapse. `laser-router state inspect` on the database
    fails at once while a server holds the lease, and reads the state once none does."""
    slow_lease = config(postgres, lease_seconds=30.0)
    owner = Server(free_port(), slow_lease).wait_ready()
    standby = Server(free_port(), slow_lease)
    try:
        client = LaserRouterClient(owner.address)
        client.create_router("handover", context_dim=4)
        client.score("handover", [Query(id="q", context=[1, 0, 0, 0], prompt="p", responses=["a", "b"])])
        config_file = owner.dir.name + "/config.toml"
        inspect = [str(binary()), "state", "inspect", "--config", config_file]
        started = time.time()
        held = subprocess.run(inspect, capture_output=True, text=True, timeout=30)
        assert held.returncode != 0 and "writer lease is held" in held.stderr, held.stderr
        assert time.time() - started < 10
        owner.process.send_signal(signal.SIGTERM)
        assert owner.process.wait(timeout=30) == 0
        stopped = time.time()
        standby.wait_ready(timeout=30)
        assert time.time() - stopped < 10, "the standby waited for the lease to lapse"
        assert arms(LaserRouterClient(standby.address), "handover")[1] == 1
        standby.process.send_signal(signal.SIGTERM)
        assert standby.process.wait(timeout=30) == 0
        shown = subprocess.run(inspect, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "handover" in shown.stdout, shown.stderr
    finally:
        owner.stop()
        standby.stop()


# The tables as schema version 1 (one stream) left them, made from version 2 ones.
SCHEMA_V1 = """
ALTER TABLE laser_snapshot_chunks DROP CONSTRAINT laser_snapshot_chunks_stream_snapshot_seq_fkey,
    DROP CONSTRAINT laser_snapshot_chunks_pkey, DROP COLUMN stream;
ALTER TABLE laser_snapshots DROP CONSTRAINT laser_snapshots_pkey, DROP COLUMN stream, ADD PRIMARY KEY (seq);
ALTER TABLE laser_snapshot_chunks ADD PRIMARY KEY (snapshot_seq, index),
    ADD FOREIGN KEY (snapshot_seq) REFERENCES laser_snapshots (seq) ON DELETE CASCADE;
ALTER TABLE laser_records DROP CONSTRAINT laser_records_pkey, DROP COLUMN stream, ADD PRIMARY KEY (seq);
DELETE FROM laser_lease WHERE stream <> '';
ALTER TABLE laser_lease DROP COLUMN stream, ADD COLUMN id integer NOT NULL DEFAULT 1 PRIMARY KEY CHECK (id = 1);
UPDATE laser_schema SET version = 1;
"""


def test_a_version_1_database_is_migrated_with_its_state(postgres):
    """A database written before streams (schema 1: a snapshot and records after it) is
    migrated in place by the next server, which recovers the same state from it."""
    server = Server(free_port(), config(postgres, snapshot_every_records=5)).wait_ready()
    try:
        client = LaserRouterClient(server.address)
        client.create_router("old", context_dim=4)
        for i in range(12):
            (result,) = client.score("old", [Query(id="q", context=[1, i, 0, 0], prompt="p", responses=["a", "b"])])
            if i % 2 == 0:
                client.feedback("old", [result.decision_id], loss=0.1 * i)
        deadline = time.time() + 30
        while postgres.sql("SELECT count(*) FROM laser_snapshots") == "0":
            assert time.time() < deadline, "no snapshot was written"
            time.sleep(0.2)
        client.score("old", [Query(id="q", context=[0, 0, 1, 0], prompt="p", responses=["a", "b"])])
        before = arms(client, "old")
        server.kill()
        postgres.sql(SCHEMA_V1)
        assert postgres.sql("SELECT count(*) FROM laser_snapshots") != "0"
        assert postgres.sql("SELECT count(*) FROM laser_records") != "0"
        server.start()
        server.wait_ready()
        assert arms(client, "old") == before
        assert postgres.sql("SELECT version FROM laser_schema") == "2"
        assert postgres.sql("SELECT DISTINCT stream FROM laser_records") == ""
    finally:
        server.stop()
