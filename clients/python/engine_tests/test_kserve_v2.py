"""Reward models on real inference engines (MLServer, KServe's ModelServer) through the
kserve_v2 backend, over real sockets: scores equal the in-process backend's, outages are
survived, deadlines honoured, bad specs refused with the engine's reason."""

import re
import threading
import time
import urllib.request

import grpc
import pytest

from conftest import CONFIG, DEMO, FIXTURES, Server, free_port
from laser_router_client import LaserRouterClient, LaserRouterError, Query
from laser_router_client._pb.laser.v1 import admin_pb2

TEMPLATE = "Question: {prompt}\nAnswer: {response}"
QUERIES = [
    ("What is 2 + 2?", ["4", "It is 4, or 2 2", "four", "22 44 66 88"]),
    ("Was the medicine any good?", ["It worked great, I am glad I tried it.", "Terrible side effects.", "ok"]),
    ("Rate the hotel from 1 to 10", ["10 out of 10, the staff were kind", "3", "I would not go back"]),
    ("Tell me about the 1990s", ["In 1995 there were 3 big releases", "nothing much"]),
]


def numeric_spec(name, engine, model, send, **remote):
    return dict(
        name=name, input_format="template", template=TEMPLATE, output_name="scores", output_index=1,
        tokenizer_path=str(FIXTURES / "tokenizer.json") if send == "tokens" else "",
        kserve_v2=admin_pb2.KserveV2Spec(endpoints=[engine.url], model_name=model, send=send, **remote),
    )


def scores_through(client, reward_model):
    """Every query's scores from `reward_model`, through a POLICY_FIXED router."""
    router = f"fixed-{reward_model}"
    client.create_router(router, context_dim=2, policy="fixed", fixed_reward_model=reward_model)
    queries = [Query(id=str(i), context=[1.0, 0.0], prompt=p, responses=r) for i, (p, r) in enumerate(QUERIES)]
    results = client.score(router, queries)
    assert {r.reward_model for r in results} == {reward_model}
    return [r.scores for r in results]


def metric(server, name, reward_model):
    text = urllib.request.urlopen(server.metrics, timeout=5).read().decode()
    match = re.search(rf'^{name}{{[^}}]*reward_model="{reward_model}"[^}}]*}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None


def test_remote_scores_equal_the_in_process_backend(engine, server):
    client = LaserRouterClient(server.address, retries=0)
    client.add_reward_model(**numeric_spec("numeric-texts", engine, "numeric-texts", "texts"))
    client.add_reward_model(**numeric_spec("numeric-tokens", engine, "numeric-tokens", "tokens"))
    client.add_reward_model(
        name="satisfaction-remote", tokenizer_path=str(DEMO / "tokenizer.json"), input_format="pair",
        max_length=256, output_name="logits", output_index=0,
        kserve_v2=admin_pb2.KserveV2Spec(endpoints=[engine.url], model_name="demo-tokens", send="tokens"))
    infos = {m.name: m for m in client.list_reward_models()}
    texts = infos["numeric-texts"]
    assert (texts.backend, texts.available, list(texts.endpoints), texts.remote_model_name) == (
        "kserve_v2", True, [engine.url], "numeric-texts")
    assert list(texts.input_names) == ["text"] and texts.output_name == "scores"
    assert list(infos["satisfaction-remote"].input_names) == ["input_ids", "attention_mask", "token_type_ids"]
    assert infos["numeric"].backend == "onnx" and infos["numeric"].available

    for local, remotes in (("numeric", ["numeric-texts", "numeric-tokens"]), ("satisfaction", ["satisfaction-remote"])):
        expected = scores_through(client, local)
        assert len({s for scores in expected for s in scores}) > 2, "the texts must tell the responses apart"
        for remote in remotes:
            got = scores_through(client, remote)
            for want, have in zip(expected, got):
                assert have == pytest.approx(want, abs=1e-5), (remote, want, have)


def test_an_engine_that_stops_is_skipped_and_comes_back(mlserver, server):
    client = LaserRouterClient(server.address, retries=0, timeout=10)
    client.add_reward_model(**numeric_spec("remote", mlserver, "numeric-tokens", "tokens", health_interval_ms=300))
    client.create_router("busy", context_dim=2, policy="round_robin")
    log = []  # (time, phase, reward_model or error code, message)
    acknowledged = []
    phase = ["up"]
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                (result,) = client.score("busy", [Query(id="q", context=[0.5, 0.5], prompt="2 + 2?", responses=["4", "5"])])
                log.append((time.time(), phase[0], result.reward_model, ""))
                client.feedback("busy", [result.decision_id], loss=0.3)
                acknowledged.append(result.decision_id)
            except LaserRouterError as error:
                log.append((time.time(), phase[0], error.code, error.message))
            time.sleep(0.02)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(2.0)
        phase[0] = "down"
        mlserver.stop()
        down_at = time.time()
        time.sleep(3.0)
        info = {m.name: m for m in client.list_reward_models()}["remote"]
        assert not info.available and info.unavailable_reason, info
        assert metric(server, "laser_rm_available", "remote") == 0.0
        phase[0] = "restarting"
        mlserver.start()
        deadline = time.time() + 15
        while not {m.name: m for m in client.list_reward_models()}["remote"].available:
            assert time.time() < deadline, "the remote RM did not come back by itself"
            time.sleep(0.1)
        phase[0] = "back"
        time.sleep(2.0)
    finally:
        stop.set()
        worker.join()

    errors = [entry for entry in log if not isinstance(entry[2], str)]
    for _, _, code, message in errors:
        # A Score that picked the remote RM as it went down: a clean UNAVAILABLE naming it.
        assert code == grpc.StatusCode.UNAVAILABLE and "remote" in message, (code, message)
    assert len(errors) <= 3, errors
    chosen = lambda phase: [e[2] for e in log if e[1] == phase and isinstance(e[2], str)]  # noqa: E731
    assert "remote" in chosen("up") and "remote" in chosen("back")
    # Once marked down (within a second), routers do not select it.
    late = [e[2] for e in log if e[1] == "down" and e[0] > down_at + 1.0]
    assert late and "remote" not in late
    assert metric(server, "laser_rm_available", "remote") == 1.0
    # Failed Scores recorded no decision; every acknowledged feedback was applied once.
    router = client.get_router("busy")
    assert sum(arm.selections for arm in router.arms) == len(log) - len(errors)
    assert sum(arm.feedback_count for arm in router.arms) == len(acknowledged)
    assert router.pending_decisions == 0


def test_client_deadlines_hold_against_a_slow_engine(mlserver, server):
    admin = LaserRouterClient(server.address, retries=0)
    admin.add_reward_model(**numeric_spec("slow", mlserver, "numeric-slow", "tokens"))
    admin.create_router("slow-router", context_dim=2, policy="fixed", fixed_reward_model="slow")
    hurried = LaserRouterClient(server.address, retries=0, timeout=0.8)
    started = time.time()
    with pytest.raises(LaserRouterError) as refused:
        hurried.score("slow-router", [Query(id="q", context=[1.0, 0.0], prompt="1+1", responses=["2"])])
    assert refused.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.time() - started < 2.0
    time.sleep(0.5)
    router = admin.get_router("slow-router")
    assert router.pending_decisions == 0 and sum(arm.selections for arm in router.arms) == 0
    # A client's deadline says nothing of the engine's health.
    assert {m.name: m for m in admin.list_reward_models()}["slow"].available


def test_bad_specs_are_refused_with_the_engine_reason(mlserver, server):
    client = LaserRouterClient(server.address, retries=0)
    before = sorted(m.name for m in client.list_reward_models())
    nobody = f"http://127.0.0.1:{free_port()}"
    cases = [
        (dict(kserve_v2=admin_pb2.KserveV2Spec(endpoints=[nobody], model_name="numeric-tokens", send="tokens")),
         grpc.StatusCode.FAILED_PRECONDITION, [nobody.removeprefix("http://")]),
        (dict(kserve_v2=admin_pb2.KserveV2Spec(endpoints=[mlserver.url], model_name="no-such-model", send="tokens")),
         grpc.StatusCode.FAILED_PRECONDITION, ["no-such-model"]),
        (dict(output_name="probabilities"), grpc.StatusCode.INVALID_ARGUMENT, ["probabilities", "scores (FP32)"]),
        (dict(kserve_v2=admin_pb2.KserveV2Spec(endpoints=[mlserver.url], model_name="numeric-tokens", send="texts"),
              tokenizer_path=""), grpc.StatusCode.INVALID_ARGUMENT, ["BYTES", "input_ids (INT64)"]),
        (dict(kserve_v2=admin_pb2.KserveV2Spec(endpoints=[mlserver.url], model_name="numeric-texts", send="tokens")),
         grpc.StatusCode.INVALID_ARGUMENT, ["\"text\"", "input_ids"]),
        (dict(kserve_v2=admin_pb2.KserveV2Spec(endpoints=["grpc://x:1"], model_name="m")),
         grpc.StatusCode.INVALID_ARGUMENT, ["grpc://x:1"]),
    ]
    for overrides, code, words in cases:
        spec = {**numeric_spec("bad", mlserver, "numeric-tokens", "tokens"), **overrides}
        with pytest.raises(LaserRouterError) as refused:
            client.add_reward_model(**spec)
        assert refused.value.code == code, (overrides, refused.value)
        for word in words:
            assert word in refused.value.message, (word, refused.value.message)
    assert sorted(m.name for m in client.list_reward_models()) == before


def test_remote_models_are_durable_and_start_while_their_engine_is_down(mlserver, server):
    client = LaserRouterClient(server.address, retries=0)
    client.add_reward_model(**numeric_spec("durable", mlserver, "numeric-tokens", "tokens", health_interval_ms=300))
    server.kill()
    mlserver.stop()
    try:
        server.start()
        server.wait_ready()
        info = {m.name: m for m in client.list_reward_models()}["durable"]
        assert info.backend == "kserve_v2" and not info.available and info.unavailable_reason
        # A router fixed on it is told the RM is down, and why.
        client.create_router("fixed-down", context_dim=2, policy="fixed", fixed_reward_model="durable")
        with pytest.raises(LaserRouterError) as refused:
            client.score("fixed-down", [Query(id="q", context=[1.0, 0.0], prompt="1", responses=["2"])])
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert "durable" in refused.value.message and mlserver.url.removeprefix("http://") in refused.value.message
    finally:
        mlserver.start()
    deadline = time.time() + 15
    while not {m.name: m for m in client.list_reward_models()}["durable"].available:
        assert time.time() < deadline, "the durable remote RM did not come back"
        time.sleep(0.1)
    assert scores_through(client, "durable")[0] == scores_through(client, "numeric")[0]


def test_queued_jobs_are_coalesced_into_one_model_infer(mlserver, server):
    client = LaserRouterClient(server.address, retries=0)
    client.add_reward_model(**numeric_spec("coalesced", mlserver, "numeric-tokens", "tokens", max_concurrency=1))
    client.create_router("many", context_dim=2, policy="fixed", fixed_reward_model="coalesced")
    before = metric(server, "laser_rm_inference_seconds_count", "coalesced") or 0.0
    results = []

    def one(i):
        (result,) = client.score("many", [Query(id=str(i), context=[1.0, 0.0], prompt=f"{i} + {i}", responses=[str(2 * i), "no"])])
        results.append(result.scores)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 24 and all(scores[0] > scores[1] for scores in results)
    inferences = metric(server, "laser_rm_inference_seconds_count", "coalesced") - before
    assert 1 <= inferences < 24, inferences


def test_endpoints_are_used_round_robin_and_a_dead_one_is_skipped(mlserver, server):
    """One RM on two engines (MLServer and KServe serving the same model): requests reach both;
    with MLServer killed, every Score still succeeds on KServe and the RM stays available."""
    from engines import Engine

    kserve = Engine("kserve")
    try:
        client = LaserRouterClient(server.address, retries=0)
        spec = numeric_spec("both", mlserver, "numeric-tokens", "tokens", health_interval_ms=300)
        spec["kserve_v2"].endpoints.append(kserve.url)
        client.add_reward_model(**spec)
        assert list({m.name: m for m in client.list_reward_models()}["both"].endpoints) == [mlserver.url, kserve.url]
        expected = scores_through(client, "numeric")
        log = kserve.dir / "engine.log"
        infers = lambda: log.read_text().count("GRPCInferenceService/ModelInfer")  # noqa: E731
        before = infers()
        for _ in range(6):
            assert scores_through(client, "both") == expected
        assert infers() - before >= 2, "round-robin never reached the second endpoint"
        mlserver.stop()
        for _ in range(10):
            assert scores_through(client, "both") == expected
        info = {m.name: m for m in client.list_reward_models()}["both"]
        assert info.available, info.unavailable_reason
    finally:
        kserve.close()
        if mlserver.process.poll() is not None:
            mlserver.start()



def test_tls_and_an_auth_header_reach_an_engine_behind_an_ingress(mlserver, monkeypatch):
    """nginx (TLS, a bearer token required) in front of MLServer: with the CA and the token
    the RM scores as in process; without the token, or without the CA, it is refused with
    the reason."""
    from engines import TlsFront

    front = TlsFront(mlserver, token="s3cret")
    monkeypatch.setenv("LASER_TEST_RM_TOKEN", "Bearer s3cret")
    monkeypatch.setenv("LASER_TEST_WRONG_TOKEN", "Bearer nope")
    server = Server(free_port(), CONFIG).wait_ready()
    try:
        client = LaserRouterClient(server.address, retries=0)

        def spec(name, **tls):
            remote = dict(endpoints=[front.url], model_name="numeric-tokens", send="tokens", **tls)
            return {**numeric_spec(name, mlserver, "numeric-tokens", "tokens"),
                    "kserve_v2": admin_pb2.KserveV2Spec(**remote)}

        client.add_reward_model(**spec("behind-tls", tls_ca_path=str(front.ca), auth_header="authorization",
                                       auth_value_env="LASER_TEST_RM_TOKEN"))
        assert scores_through(client, "behind-tls") == scores_through(client, "numeric")
        refusals = [
            (spec("no-token", tls_ca_path=str(front.ca)), ["401"]),
            (spec("wrong-token", tls_ca_path=str(front.ca), auth_header="authorization",
                  auth_value_env="LASER_TEST_WRONG_TOKEN"), ["401"]),
            (spec("unknown-ca", auth_header="authorization", auth_value_env="LASER_TEST_RM_TOKEN"),
             [front.url.removeprefix("https://")]),
            (spec("unset-variable", tls_ca_path=str(front.ca), auth_header="authorization",
                  auth_value_env="LASER_TEST_UNSET_TOKEN"), ["LASER_TEST_UNSET_TOKEN"]),
        ]
        for bad, words in refusals:
            with pytest.raises(LaserRouterError) as refused:
                client.add_reward_model(**bad)
            assert refused.value.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
            for word in words:
                assert word in refused.value.message, (bad["name"], refused.value.message)
    finally:
        server.stop()
        front.close()
