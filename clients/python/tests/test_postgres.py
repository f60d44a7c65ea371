"""The PostgreSQL state backend against a real PostgreSQL (a throwaway cluster): state survives
a SIGKILL exactly (snapshots in chunks, records after them); replicas share the database, one
owner per router, forwarding to each other, taking routers over from dead owners and fencing
paused ones; models published on one replica serve on all; PostgreSQL stopped under traffic
gives clean UNAVAILABLE, health NOT_SERVING, and service resuming by itself with nothing
acknowledged lost; a schema 1 database is migrated."""

import random
import signal
import subprocess
import threading
import time

import grpc
import pytest

import urllib.request

import chaos
from conftest import CONFIG, FIXTURES, Server, binary, free_port, make_certificates
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
        stream = "stream = 'router/pg'"
        while postgres.sql(f"SELECT count(*) FROM laser_snapshots WHERE {stream}") == "0":
            assert time.time() < deadline, "no snapshot was written"
            time.sleep(0.2)
        chunks = int(postgres.sql(f"SELECT max(chunks) FROM laser_snapshots WHERE {stream}"))
        assert chunks >= 2, chunks
        snapshot_seq = int(postgres.sql(f"SELECT max(seq) FROM laser_snapshots WHERE {stream}"))
        assert postgres.sql(f"SELECT count(*) FROM laser_records WHERE {stream} AND seq <= {snapshot_seq}") == "0"
        server.kill()
        server.start()
        server.wait_ready()
        assert arms(client, "pg") == before
    finally:
        server.stop()


def owner_of(postgres, router) -> str:
    """The address registered by the replica holding `router`'s lease ('' when none)."""
    return postgres.sql(f"SELECT address FROM laser_lease WHERE stream = 'router/{router}' AND owner <> ''")


def forwarded(server) -> float:
    """Requests `server` forwarded to the owners of their routers."""
    text = urllib.request.urlopen(server.metrics, timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("laser_requests_forwarded_total"))


def test_routers_are_spread_over_replicas_and_forwarded_to_their_owners(postgres):
    """Each router is owned by the replica that first served it; the other replica forwards
    its requests there; ListRouters on either lists both; a dead owner's router is taken
    over (its state, its pending decision) by the replica asked next, once the lease lapses."""
    first = Server(free_port(), config(postgres, lease_seconds=1.0)).wait_ready()
    second = Server(free_port(), config(postgres, lease_seconds=1.0)).wait_ready()
    try:
        one, two = LaserRouterClient(first.address), LaserRouterClient(second.address)
        one.create_router("a", context_dim=4)
        two.create_router("b", context_dim=4)
        assert owner_of(postgres, "a") == first.address and owner_of(postgres, "b") == second.address
        # Each replica answers for both routers: the other's through its owner.
        (result,) = two.score("a", [Query(id="q", context=[1, 0, 0, 0], prompt="p", responses=["a", "b"])])
        assert one.feedback("a", [result.decision_id], loss=0.2)["applied"] == 1
        (pending,) = one.score("b", [Query(id="q", context=[0, 1, 0, 0], prompt="p", responses=["a", "b"])])
        assert forwarded(first) >= 1 and forwarded(second) >= 1
        assert owner_of(postgres, "a") == first.address and owner_of(postgres, "b") == second.address
        for client in (one, two):
            assert sorted(r.name for r in client.list_routers()) == ["a", "b"]
            assert arms(client, "a") == arms(one, "a") and arms(client, "b") == arms(two, "b")
        # A deleted router (and a name looked up that never existed) leaves no stream behind.
        two.create_router("gone", context_dim=4)
        one.delete_router("gone")
        with pytest.raises(LaserRouterError) as missing:
            one.get_router("never")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        deadline = time.time() + 10
        while postgres.sql("SELECT count(*) FROM laser_lease WHERE stream IN ('router/gone', 'router/never')") != "0":
            assert time.time() < deadline, "empty router streams are not deleted"
            time.sleep(0.1)
        assert sorted(r.name for r in two.list_routers()) == ["a", "b"]
        before = arms(one, "b")
        assert before[1] == 1
        second.kill()
        killed = time.time()
        while True:  # the replica asked next takes the router over once its lease lapses
            try:
                after = arms(LaserRouterClient(first.address, retries=0, timeout=3), "b")
                break
            except LaserRouterError as error:
                assert error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), error
                assert time.time() - killed < 20, "no takeover"
                time.sleep(0.05)
        print(f"takeover of router b after SIGKILL: {time.time() - killed:.2f} s (lease 1 s)")
        assert after == before and owner_of(postgres, "b") == first.address
        # The decision pending at the takeover is still there, and takes its feedback once.
        assert one.feedback("b", [pending.decision_id], loss=0.1)["applied"] == 1
        assert one.feedback("b", [pending.decision_id], loss=0.1)["applied"] == 0
    finally:
        first.stop()
        second.stop()


def test_http_requests_for_a_router_owned_elsewhere_are_forwarded(postgres):
    import requests

    first = Server(free_port(), config(postgres), http=True).wait_ready()
    second = Server(free_port(), config(postgres), http=True).wait_ready()
    try:
        LaserRouterClient(first.address).create_router("h", context_dim=4)
        body = {"queries": [{"id": "q", "context": [1, 0, 0, 0], "prompt": "p", "responses": ["a", "bb"]}]}
        reply = requests.post(second.http + "/v1/routers/h/score", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        decision = reply.json()["results"][0]["decisionId"]
        ack = requests.post(second.http + "/v1/routers/h/feedback", json={"decisionIds": [decision], "loss": 0.5},
                            headers={"x-request-timeout-ms": "10000"}, timeout=30)
        assert ack.status_code == 200 and ack.json()["applied"] == 1, ack.text
        assert owner_of(postgres, "h") == first.address and forwarded(second) >= 2
        assert arms(LaserRouterClient(first.address), "h")[1] == 0
    finally:
        first.stop()
        second.stop()


def test_replicas_with_tls_forward_over_tls(postgres, tmp_path):
    ca = make_certificates(tmp_path)
    tls = (f'[server.tls]\ncert_path = "{tmp_path / "server.pem"}"\nkey_path = "{tmp_path / "server.key"}"\n'
           f'peer_ca_path = "{tmp_path / "ca.pem"}"\n')
    text = config(postgres, lease_seconds=1.0).replace("[routers]\n", tls + "[routers]\n", 1)
    first = Server(free_port(), text).wait_ready()
    second = Server(free_port(), text).wait_ready()
    try:
        def tls_client(server):  # by the name the certificate carries
            return LaserRouterClient(server.address.replace("127.0.0.1", "localhost"), root_certificates=ca)

        owner = tls_client(first)
        owner.create_router("r", context_dim=4)
        (result,) = owner.score("r", [Query(id="q", context=[1, 0, 0, 0], prompt="p", responses=["a", "b"])])
        through = tls_client(second)
        assert through.feedback("r", [result.decision_id], loss=0.2)["applied"] == 1
        assert arms(through, "r") == arms(owner, "r") and arms(owner, "r")[1] == 0
        assert owner_of(postgres, "r") == first.address and forwarded(second) >= 2
    finally:
        first.stop()
        second.stop()


def test_a_paused_owner_is_fenced_and_steps_down(postgres):
    """SIGSTOP the owner of a router past its lease, let another replica take the router over
    and serve it, SIGCONT the old owner: none of its writes land, and it steps down from the
    router (forwarding its requests to the new owner) while it keeps running."""
    owner = Server(free_port(), config(postgres, lease_seconds=1.0)).wait_ready()
    other = Server(free_port(), config(postgres, lease_seconds=1.0)).wait_ready()
    try:
        old = LaserRouterClient(owner.address, retries=0, timeout=5)
        old.create_router("r", context_dim=4)
        (result,) = old.score("r", [Query(id="q", context=[1, 0, 0, 0], prompt="p", responses=["a", "b"])])
        old.feedback("r", [result.decision_id], loss=0.2)
        owner.process.send_signal(signal.SIGSTOP)
        time.sleep(1.5)
        new = LaserRouterClient(other.address, timeout=10)
        for i in range(3):
            (result,) = new.score("r", [Query(id=str(i), context=[0, 1, 0, 0], prompt="p", responses=["a", "b"])])
            new.feedback("r", [result.decision_id], loss=0.3)
        assert owner_of(postgres, "r") == other.address
        owner.process.send_signal(signal.SIGCONT)
        served = 0
        for i in range(20):
            # Its stale copy may answer a Score until its first write is refused; from then
            # on its requests for the router go to the new owner.
            try:
                old.score("r", [Query(id="late", context=[0, 0, 1, 0], prompt="p", responses=["a", "b"])])
                served += 1
            except LaserRouterError as error:
                assert error.code == grpc.StatusCode.UNAVAILABLE, error
            time.sleep(0.1)
        assert served >= 15 and forwarded(owner) >= 15, "the old owner forwards to the new one"
        assert owner.process.poll() is None, "it steps down from the router, not from serving"
        after = arms(new, "r")
        assert sum(s for s, _ in after[0].values()) == 4 + served
        other.kill()
        other.start()
        other.wait_ready(timeout=30)
        assert arms(LaserRouterClient(other.address), "r") == after, "no write of the old owner landed"
    finally:
        if owner.process.poll() is None:
            owner.process.send_signal(signal.SIGCONT)
        owner.stop()
        other.stop()


def test_models_published_on_one_replica_serve_on_all(postgres):
    """AddRewardModel on one replica: the others load it from the catalog; RemoveRewardModel
    likewise."""
    first = Server(free_port(), config(postgres)).wait_ready()
    second = Server(free_port(), config(postgres)).wait_ready()
    try:
        one, two = LaserRouterClient(first.address), LaserRouterClient(second.address)
        one.add_reward_model(name="length2", model_path=str(FIXTURES / "length" / "model.onnx"),
                             tokenizer_path=str(FIXTURES / "tokenizer.json"), input_format="pair",
                             output_name="logits")

        def names(client):
            return sorted(m.name for m in client.list_reward_models())

        deadline = time.time() + 20
        while "length2" not in names(two):
            assert time.time() < deadline, "the other replica did not load the model"
            time.sleep(0.2)
        two.create_router("uses", context_dim=4)
        assert {a.reward_model for a in two.get_router("uses").arms} == {"length", "polite", "length2"}
        two.remove_reward_model("polite")
        while "polite" in names(one):
            assert time.time() < deadline, "the other replica did not unload the model"
            time.sleep(0.2)
    finally:
        first.stop()
        second.stop()


def test_replicas_under_kills_pauses_and_a_database_restart_answer_only_retryable_codes(postgres):
    """3 replicas on one database, 4 trainers using the client library over all of them (one
    round_robin channel, keyed Feedback retried until a 60 s deadline, attempts cut at 2 leases),
    the owner of their router SIGKILLed 5 times (restarted at once), SIGSTOPped past its lease
    twice, and PostgreSQL restarted once: clients see only OK, UNAVAILABLE, ABORTED or
    DEADLINE_EXCEEDED (an attempt cut short, retried), no trainer loses a feedback, every
    acknowledged feedback counts exactly once, decisions left pending survive. Prints the
    replica-side takeover time and the client-visible gap per fault (the longest stretch without
    a successful answer around it). Waits follow from the lease and from how long the replicas
    took to start here (the machine's load), not from fixed seconds."""
    lease = 1.0
    started = time.monotonic()
    replicas = [Server(free_port(), config(postgres, lease_seconds=lease)) for _ in range(3)]
    for replica in replicas:
        replica.wait_ready(timeout=120)
    startup = (time.monotonic() - started) / 3  # one replica's start, on this machine now
    # A takeover: the lease lapsing, a replica re-reading it (a quarter lease), recovering the
    # router; each step slows down with the machine's load as a start does.
    takeover_bound = 3 * lease + 10 * startup
    addresses = [r.address for r in replicas]
    LaserRouterClient(addresses[0]).create_router("chaos", context_dim=4)
    lease_row = "FROM laser_lease WHERE stream = 'router/chaos'"

    def owner():
        holder = postgres.sql(f"SELECT address {lease_row}")
        return addresses.index(holder) if holder in addresses else None

    faults = ["kill", "kill", "pause", "kill", "postgres", "kill", "pause", "kill"]
    events, takeovers = [], []
    with chaos.Trainers(addresses, "chaos", timeout=60, attempt_timeout=2 * lease) as trainers:
        try:
            rng = random.Random(7)
            for fault in faults:
                time.sleep(rng.uniform(0.3, 1.0))
                epoch = int(postgres.sql(f"SELECT epoch {lease_row}"))
                victim = replicas[owner()]
                at = time.monotonic()
                if fault == "kill":
                    victim.kill()
                    victim.start()  # back at once (it may take the router over itself)
                elif fault == "pause":
                    victim.process.send_signal(signal.SIGSTOP)
                    time.sleep(2 * lease + 0.5)
                    victim.process.send_signal(signal.SIGCONT)
                else:
                    postgres.stop("fast")
                    time.sleep(1.0)
                    postgres.start()
                # Recovered: clients are answered again (and, but after a database restart,
                # another epoch of the lease serves the router).
                while True:
                    moved = fault == "postgres" or int(postgres.sql(f"SELECT epoch {lease_row}")) > epoch
                    answered = any(end > at and code == grpc.StatusCode.OK
                                   for _, end, code, _ in list(trainers.attempts.seen))
                    if moved and answered:
                        break
                    assert time.monotonic() - at < takeover_bound + (2 * lease + 0.5 if fault == "pause" else 0), \
                        f"no recovery from {fault} within {takeover_bound:.1f} s: " \
                        f"{[(round(b - at, 2), round(e - at, 2), c.name, m) for b, e, c, m in trainers.attempts.seen if e > at][-12:]}"
                    time.sleep(0.05)
                if fault != "postgres":
                    takeovers.append(time.monotonic() - at)
                events.append((fault, at))
            time.sleep(0.5)
        finally:
            for replica in replicas:  # a paused one must not outlive the test
                if replica.process.poll() is None:
                    replica.process.send_signal(signal.SIGCONT)
    ends = [at for _, at in events[1:]] + [float("inf")]
    gaps = {kind: [] for kind in ("kill", "pause", "postgres")}
    for (fault, at), until in zip(events, ends):
        gap = trainers.attempts.gap_after(at, until)
        if gap is not None:
            gaps[fault].append(gap)
    codes = trainers.attempts.codes()
    fed = trainers.fed
    print(f"\nlease {lease} s, replica start {startup:.2f} s, takeover bound {takeover_bound:.1f} s; "
          f"{len(trainers.attempts.seen)} attempts, codes {sorted(c.name for c in codes)}, "
          f"{len(fed)} feedbacks acknowledged, {len(trainers.errors)} calls given up")
    for code in sorted(codes - chaos.ALLOWED, key=lambda c: c.name):
        print(f"  {code.name}: {[m for _, _, c, m in trainers.attempts.seen if c == code][:5]}")
    print(f"replica-side recovery after a kill or pause: {chaos.summary(takeovers)}")
    for kind, values in gaps.items():
        print(f"client-visible gap after {kind}: {chaos.summary(values)}")
    chaos.record({"lease": lease, "takeovers": takeovers, "gaps": gaps, "codes": sorted(c.name for c in codes),
                  "given_up": len(trainers.errors), "acknowledged": len(fed)})
    try:
        trainers.assert_nothing_lost(LaserRouterClient(replicas[owner() or 0].address))
        assert len(fed) > 50 and len(takeovers) == 7
        worst = max(gaps["kill"] + gaps["pause"])
        assert worst < takeover_bound + 2 * lease, f"a client waited {worst:.1f} s for a takeover"
    finally:
        for replica in replicas:
            replica.stop()


def test_postgres_restarted_under_traffic(postgres):
    server = Server(free_port(), config(postgres)).wait_ready()
    idle = Server(free_port(), config(postgres)).wait_ready()  # a replica that owns no router
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
            assert not serving(idle), "a replica owning no router cannot take one over either"
            failures_while_down = len(codes)
            time.sleep(1.5)
            assert len(codes) > failures_while_down or codes, "requests must have been refused"
            postgres.start()
            deadline = time.time() + 20
            while not (serving(server) and serving(idle)):
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
        idle.stop()


def test_a_stopping_owner_hands_the_lease_over_and_state_commands_respect_it(postgres):
    """SIGTERM: the owner hands its routers' leases back on its way out, so another replica
    takes a router over at once, well before a 30 s lease would lapse. `laser-router state
    inspect` on the database names the owner of a router a replica holds, and reads the
    router's state once none does; `state export` of an owned router is refused."""
    slow_lease = config(postgres, lease_seconds=30.0)
    owner = Server(free_port(), slow_lease).wait_ready()
    other = Server(free_port(), slow_lease).wait_ready()
    try:
        client = LaserRouterClient(owner.address)
        client.create_router("handover", context_dim=4)
        client.score("handover", [Query(id="q", context=[1, 0, 0, 0], prompt="p", responses=["a", "b"])])
        config_file = owner.dir.name + "/config.toml"
        inspect = [str(binary()), "state", "inspect", "--config", config_file]
        held = subprocess.run(inspect, capture_output=True, text=True, timeout=30)
        assert held.returncode == 0 and f'router "handover": owned by' in held.stdout, held.stdout + held.stderr
        export = [str(binary()), "state", "export", "handover", owner.dir.name + "/handover.laser",
                  "--config", config_file]
        refused = subprocess.run(export, capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0 and "owned by another replica" in refused.stderr, refused.stderr
        owner.process.send_signal(signal.SIGTERM)
        assert owner.process.wait(timeout=30) == 0
        stopped = time.time()
        assert arms(LaserRouterClient(other.address), "handover")[1] == 1
        assert time.time() - stopped < 10, "the other replica waited for the lease to lapse"
        assert owner_of(postgres, "handover") == other.address
        other.process.send_signal(signal.SIGTERM)
        assert other.process.wait(timeout=30) == 0
        shown = subprocess.run(inspect, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and 'router "handover": policy' in shown.stdout, shown.stdout + shown.stderr
    finally:
        owner.stop()
        other.stop()


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
        # Moved to its own stream on first use, and out of the catalog.
        assert owner_of(postgres, "old") == server.address
        client.create_router("old", context_dim=4)  # still there: confirmed, not created
        server.kill()
        server.start()
        server.wait_ready()
        assert arms(client, "old") == before
    finally:
        server.stop()
