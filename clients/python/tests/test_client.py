import threading
import time

import grpc
import numpy as np
import pytest

from conftest import Server, free_port, pairwise_agreement
from laser_router_client import ContextStandardizer, LaserRouterClient, LaserRouterError, Query, prompt_context


def queries(n, dim=4):
    return [
        Query(id=f"q{i}", context=np.eye(dim)[i % dim], prompt="How are you?",
              responses=["Fine.", "Very well, thank you for asking!"])
        for i in range(n)
    ]


def test_score_then_feedback(server):
    with LaserRouterClient(server.address) as client:
        results = client.score("run", queries(3), explain=True)
        assert [r.id for r in results] == ["q0", "q1", "q2"]
        for result in results:
            assert result.reward_model in ("length", "polite")
            assert len(result.scores) == 2 and sorted(result.ranking) == [0, 1]
            assert len(result.arms) == 2
        ack = client.feedback("run", [r.decision_id for r in results], loss=0.4)
        assert ack == {"applied": 3, "duplicate": 0, "not_applied": 0, "replayed": False}
        again = client.feedback("run", [results[0].decision_id], loss=0.4)
        assert again["duplicate"] == 1 and again["applied"] == 0
        info = client.get_router("run")
        assert sum(arm.feedback_count for arm in info.arms) == 3


def test_groups_per_decision_losses_and_keyed_step_feedback(server):
    with LaserRouterClient(server.address) as client:
        grouped = [Query(id=f"c{i}", context=np.eye(4)[0], prompt="Same prompt", responses=["Fine.", "Well!"],
                         group="prompt-1") for i in range(3)]
        first = client.score("grpo", grouped[:2])
        later = client.score("grpo", grouped[2:])  # another call, same group
        assert len({r.decision_id for r in first + later}) == 1
        assert len({r.reward_model for r in first + later}) == 1
        others = client.score("grpo", queries(2))
        ack = client.feedback("grpo", losses={others[0].decision_id: 0.2, others[1].decision_id: 0.8})
        assert ack["applied"] == 2
        step = client.feedback("grpo", all_pending=True, loss=0.3, idempotency_key="run-a/step-1")
        assert step == {"applied": 1, "duplicate": 0, "not_applied": 0, "replayed": False}
        retry = client.feedback("grpo", all_pending=True, loss=0.3, idempotency_key="run-a/step-1")
        assert retry == {"applied": 1, "duplicate": 0, "not_applied": 0, "replayed": True}
        with pytest.raises(LaserRouterError) as reused:
            client.feedback("grpo", all_pending=True, loss=0.9, idempotency_key="run-a/step-1")
        assert reused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert client.get_router("grpo").pending_decisions == 0


def test_labels_reward_each_decision_with_its_agreement_and_survive_a_restart(server):
    """Labels for some decisions, a loss for another, in one call: each labelled decision's
    reward is the pairwise agreement of the scores it answered with; a SIGKILL and restart
    keeps the kept scores, so labels sent afterwards are judged the same way."""
    three = ["Fine.", "Very well, thank you for asking!", "ok"]
    with LaserRouterClient(server.address) as client:
        client.create_router("judged", context_dim=4, policy="thompson", normalization="quantile", seed=3)
        results = client.score("judged", [Query(id=f"q{i}", context=np.eye(4)[i], prompt="How are you?",
                                                responses=three) for i in range(4)])

        labels = [1.0, 0.0, 1.0]
        ack = client.feedback("judged", losses={results[2].decision_id: 0.7},
                              labels={results[0].decision_id: labels, results[1].decision_id: 2})
        assert ack == {"applied": 3, "duplicate": 0, "not_applied": 0, "replayed": False}
        expected = {results[0].reward_model: [pairwise_agreement(results[0].scores, labels)]}
        expected.setdefault(results[1].reward_model, []).append(pairwise_agreement(results[1].scores, [0.0, 0.0, 1.0]))
        expected.setdefault(results[2].reward_model, []).append(0.5)  # the first loss: neutral (the default)
        arms = {arm.reward_model: arm for arm in client.get_router("judged").arms}
        for rm, rewards in expected.items():
            assert arms[rm].feedback_count == len(rewards)
            assert abs(arms[rm].mean_reward - sum(rewards) / len(rewards)) < 1e-6
        # Refused whole, naming what is wrong: nothing applied.
        with pytest.raises(LaserRouterError) as count:
            client.feedback("judged", labels={results[3].decision_id: [1.0, 0.0]})
        assert count.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "2 labels" in count.value.message and "3 responses" in count.value.message
        with pytest.raises(LaserRouterError) as nan:
            client.feedback("judged", labels={results[3].decision_id: [1.0, float("nan"), 0.0]})
        assert nan.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "signals[0].labels.values[1]" in nan.value.message
        assert client.get_router("judged").pending_decisions == 1
        # Categories: each decision counts under its query's; GetRouter shows them per RM.
        tagged = client.score("judged", [Query(id="t", context=np.eye(4)[0], prompt="p", responses=three,
                                                category="gsm8k")])[0]
        table = {(c.category, c.reward_model): c for c in client.get_router("judged").categories}
        assert table[("gsm8k", tagged.reward_model)].selections == 1
        client.feedback("judged", labels={tagged.decision_id: [0.0, 1.0, 0.0]})
        row = {(c.category, c.reward_model): c for c in client.get_router("judged").categories}[
            ("gsm8k", tagged.reward_model)]
        assert row.feedback_count == 1
        assert abs(row.mean_reward - pairwise_agreement(tagged.scores, [0.0, 1.0, 0.0])) < 1e-6
        expected.setdefault(tagged.reward_model, []).append(pairwise_agreement(tagged.scores, [0.0, 1.0, 0.0]))
        with pytest.raises(LaserRouterError) as long_category:
            client.score("judged", [Query(id="t", context=np.eye(4)[0], prompt="p", responses=three,
                                          category="x" * 65)])
        assert long_category.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "queries[0].category" in long_category.value.message
    server.kill()
    server.start()
    server.wait_ready()
    with LaserRouterClient(server.address) as client:
        ack = client.feedback("judged", labels={results[3].decision_id: 0})
        assert ack["applied"] == 1
        arm = {a.reward_model: a for a in client.get_router("judged").arms}[results[3].reward_model]
        before = expected.get(results[3].reward_model, [])
        mean = (sum(before) + pairwise_agreement(results[3].scores, [1.0, 0.0, 0.0])) / (len(before) + 1)
        assert abs(arm.mean_reward - mean) < 1e-6


def test_a_prior_from_labelled_pairs_routes_each_kind_of_prompt_to_the_rm_that_was_right(server):
    """Pairs of two kinds: on context e0 the polite response is the better one (the `polite`
    RM is right, `length` wrong), on e1 the longer one (`length` right). The prior alone
    (policy offline) then routes e0 to polite and e1 to length, durably."""
    polite = [{"context": np.eye(4)[0], "prompt": "Can you help?", "chosen": "Glad to help, thank you!",
               "rejected": "No idea what you are asking about here at all"} for _ in range(6)]
    long = [{"context": np.eye(4)[1], "prompt": "Explain it.", "chosen": "It works in three steps: first the input is read",
             "rejected": "Thanks, sorry!"} for _ in range(6)]
    with LaserRouterClient(server.address) as client:
        client.create_router("prior", context_dim=4, policy="offline")
        entered = client.add_prior("prior", polite + long, idempotency_key="labelled-v1")
        assert entered["arms"] == {"length": (12, 0.5), "polite": (12, 0.5)}
        assert entered["sequences_scored"] == 2 * 12 * 2 and not entered["replayed"]
        again = client.add_prior("prior", polite + long, idempotency_key="labelled-v1")
        assert again["replayed"] and again["arms"] == {}

        def routed(router):
            picks = client.score(router, [Query(id=str(k), context=np.eye(4)[k], prompt="p", responses=["a", "b"])
                                          for k in (0, 1)])
            return [p.reward_model for p in picks]

        assert routed("prior") == ["polite", "length"]
        # More pairs than an RM's queue holds (256 jobs): scored in slices, not refused as overload.
        client.create_router("big-prior", context_dim=4, policy="offline")
        many = client.add_prior("big-prior", (polite + long) * 50)
        assert many["arms"] == {"length": (600, 0.5), "polite": (600, 0.5)}
        # Refusals name the field or the reason; nothing enters.
        client.create_router("no-arms-model", context_dim=4, policy="random")
        for router, pairs, weight, code, words in [
            ("no-arms-model", polite, None, grpc.StatusCode.FAILED_PRECONDITION, "policy random"),
            ("missing", polite, None, grpc.StatusCode.NOT_FOUND, "missing"),
            ("prior", [dict(polite[0], context=[1.0, 0.0])], None, grpc.StatusCode.INVALID_ARGUMENT, "expects 4"),
            ("prior", [polite[0], dict(polite[0], context=None)], None, grpc.StatusCode.INVALID_ARGUMENT, "pairs.context"),
            ("prior", polite, 0.0, grpc.StatusCode.INVALID_ARGUMENT, "weight"),
            ("prior", [dict(polite[0], chosen="")], None, grpc.StatusCode.INVALID_ARGUMENT, "pairs[0].chosen"),
        ]:
            with pytest.raises(LaserRouterError) as refused:
                client.add_prior(router, pairs, weight=weight)
            assert refused.value.code == code and words in refused.value.message, refused.value.message
    server.kill()
    server.start()
    server.wait_ready()
    with LaserRouterClient(server.address) as client:
        after_restart = client.score("prior", [Query(id=str(k), context=np.eye(4)[k], prompt="p", responses=["a", "b"])
                                               for k in (0, 1)])
        assert [r.reward_model for r in after_restart] == ["polite", "length"]
        # GetRouter shows what the prior put into each arm (durable; the replay added nothing).
        held = {a.reward_model: (a.prior_pairs, a.prior_weight, a.prior_accuracy)
                for a in client.get_router("prior").arms}
        assert held == {"length": (12, 12.0, 0.5), "polite": (12, 12.0, 0.5)}
        assert {a.prior_pairs for a in client.get_router("big-prior").arms} == {600}
        # Feedback is counted but does not move an offline router's arms.
        results = client.score("prior", [Query(id="x", context=np.eye(4)[0], prompt="p", responses=["a", "b"])])
        client.feedback("prior", [results[0].decision_id], reward=-5.0)
        assert client.score("prior", [Query(id="y", context=np.eye(4)[0], prompt="p", responses=["a", "b"])])[0] \
            .reward_model == "polite"


def test_a_router_with_context_categories_routes_each_category_from_a_categorized_prior(server):
    """The pairs of the prior test, every one at the same context: only their `category`
    tells the kinds apart. A router that sees categories as one-hot slots routes each
    category to the RM that was right on it; one that does not, cannot."""
    same = np.ones(4, dtype=np.float32)
    polite = [{"context": same, "prompt": "Can you help?", "chosen": "Glad to help, thank you!",
               "rejected": "No idea what you are asking about here at all", "category": "support"}] * 6
    long = [{"context": same, "prompt": "Explain it.", "chosen": "It works in three steps: first the input is read",
             "rejected": "Thanks, sorry!", "category": "explain"}] * 6
    with LaserRouterClient(server.address) as client:
        client.create_router("sliced", context_dim=4, policy="offline", context_categories=["support", "explain"])
        client.create_router("blind", context_dim=4, policy="offline")
        assert list(client.get_router("sliced").settings.context_categories) == ["support", "explain"]
        for router in ("sliced", "blind"):
            client.add_prior(router, polite + long)

        def routed(router):
            picks = client.score(router, [Query(id=c, context=same, prompt="p", responses=["a", "b"], category=c)
                                          for c in ("support", "explain")])
            return [p.reward_model for p in picks]

        assert routed("sliced") == ["polite", "length"]
        # Blind: at the one context each RM was right on half the pairs; the arms tie.
        blind = client.score("blind", [Query(id=c, context=same, prompt="p", responses=["a", "b"], category=c)
                                       for c in ("support", "explain")], explain=True)
        for result in blind:
            means = sorted(arm.mean for arm in result.arms)
            assert means[0] == pytest.approx(means[1]), result.arms
        with pytest.raises(LaserRouterError) as refused:
            client.add_prior("sliced", [dict(polite[0], category="x" * 65)])
        assert "pairs[0].category" in refused.value.message
        with pytest.raises(LaserRouterError) as refused:
            client.create_router("twice", context_dim=4, context_categories=["a", "a"])
        assert "context_categories" in refused.value.message and "named twice" in refused.value.message


def test_encoder_routers_take_contexts_from_the_prompt(server):
    with LaserRouterClient(server.address) as client:
        import os
        fixtures = os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests", "fixtures", "reward_models")
        encoder = client.add_encoder(name="topics", model_path=os.path.abspath(os.path.join(fixtures, "topics", "model.onnx")),
                                     tokenizer_path=os.path.abspath(os.path.join(fixtures, "tokenizer.json")))
        assert (encoder.name, encoder.dim) == ("topics", 4)
        client.create_router("from-prompts", encoder="topics")
        results = client.score("from-prompts", [Query(id="q", context=None, prompt="What is 6 times 7?",
                                                      responses=["42", "Thanks for asking!"])])
        assert results[0].reward_model in ("length", "polite")
        assert client.get_router("from-prompts").settings.context_dim == 4
        with pytest.raises(LaserRouterError) as in_use:
            client.remove_encoder("topics")
        assert in_use.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert [e.name for e in client.list_encoders()] == ["topics"]


def test_errors_name_the_field(server):
    with LaserRouterClient(server.address) as client:
        with pytest.raises(LaserRouterError) as refused:
            client.score("run", [Query(id="q", context=[1.0, 2.0], prompt="p", responses=["r"])])
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "expects 4" in refused.value.message
        with pytest.raises(LaserRouterError) as unknown:
            client.feedback("run", ["no-such-decision"], reward=1.0)
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ValueError):
            client.feedback("run", ["x"])


def test_admin_calls(server):
    with LaserRouterClient(server.address) as client:
        created = client.create_router("sequential", context_dim=4, policy="round_robin", normalization="none")
        assert created.name == "sequential"
        picks = [client.score("sequential", queries(1))[0].reward_model for _ in range(4)]
        assert picks == ["length", "polite", "length", "polite"]
        assert [m.name for m in client.list_reward_models()] == ["length", "polite"]
        assert [r.name for r in client.list_routers()] == ["sequential"]
        client.delete_router("sequential")
        assert client.list_routers() == []


def test_retries_until_the_server_is_up():
    port = free_port()
    started = {}

    def start_later():
        time.sleep(0.5)
        started["server"] = Server(port).wait_ready()

    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        with LaserRouterClient(f"127.0.0.1:{port}", timeout=60, backoff=0.2) as client:
            results = client.score("late", queries(1))
            assert results[0].decision_id
    finally:
        thread.join()
        if "server" in started:
            started["server"].stop()


def test_retries_until_its_deadline_then_answers_the_last_code():
    port = free_port()
    with LaserRouterClient(f"127.0.0.1:{port}", backoff=0.05, timeout=1.5) as client:
        started = time.monotonic()
        with pytest.raises(LaserRouterError) as error:
            client.score("nobody", queries(1))
        took = time.monotonic() - started
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
        assert 1.0 <= took < 2.5, took  # retried until (about) its 1.5 s deadline, not past it


class LostReplies(grpc.UnaryUnaryClientInterceptor):
    """A hop that loses the first `lose` replies after the server applied the request (as a
    broken connection to a replica that had answered does), answering UNAVAILABLE instead;
    records every attempt's request."""

    def __init__(self, lose):
        self.lose, self.sent = lose, []

    def intercept_unary_unary(self, continuation, details, request):
        self.sent.append(request)
        outcome = continuation(details, request)
        if self.lose > 0 and outcome.code() == grpc.StatusCode.OK:
            self.lose -= 1
            outcome.result()  # the server answered: applied
            raise LostReply()
        return outcome


class LostReply(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "reply lost on the way"


def test_a_retried_feedback_carries_the_same_key_and_applies_once(server):
    hop = LostReplies(0)
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), hop)
    with LaserRouterClient(channel=channel, backoff=0.01) as client:
        (result,) = client.score("keys", queries(1))
        hop.lose = 1
        answer = client.feedback("keys", [result.decision_id], loss=0.3)
        feedbacks = [r for r in hop.sent if hasattr(r, "idempotency_key")]
        assert len(feedbacks) == 2 and feedbacks[0].idempotency_key
        assert feedbacks[0].idempotency_key == feedbacks[1].idempotency_key, "one key for all attempts"
        # The first attempt applied it; the retry answers as the first attempt did.
        assert answer["applied"] == 1 and answer["replayed"] is True, answer
        assert sum(a.feedback_count for a in client.get_router("keys").arms) == 1
        other = client.feedback("keys", all_pending=True, loss=0.1)
        assert hop.sent[-1].idempotency_key != feedbacks[0].idempotency_key, "a new call, a new key"
        assert other["applied"] == 0


def test_an_attempt_cut_short_by_a_paused_server_is_retried(server):
    import signal

    with LaserRouterClient(server.address, timeout=20, attempt_timeout=0.5, backoff=0.05) as client:
        client.score("paused", queries(1))
        server.process.send_signal(signal.SIGSTOP)
        threading.Timer(1.5, server.process.send_signal, args=(signal.SIGCONT,)).start()
        started = time.monotonic()
        (result,) = client.score("paused", queries(1))
        assert result.decision_id and 1.0 <= time.monotonic() - started < 10
    with LaserRouterClient(server.address, timeout=0.5, backoff=0.05) as client:
        server.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(LaserRouterError) as error:
                client.score("paused", queries(1))
            assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's own deadline is the answer"
        finally:
            server.process.send_signal(signal.SIGCONT)


def test_gives_up_with_unavailable_after_its_retries():
    port = free_port()
    with LaserRouterClient(f"127.0.0.1:{port}", retries=2, backoff=0.05, timeout=2) as client:
        started = time.time()
        with pytest.raises(LaserRouterError) as error:
            client.score("nobody", queries(1))
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
        assert time.time() - started >= 0.05 + 0.1  # two backoffs


def test_only_calls_that_changed_nothing_and_may_succeed_later_are_retried():
    from laser_router_client.client import _retryable

    assert _retryable(grpc.StatusCode.UNAVAILABLE) and _retryable(grpc.StatusCode.ABORTED)
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED,
                 grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                 grpc.StatusCode.CANCELLED, grpc.StatusCode.UNIMPLEMENTED):
        assert not _retryable(code), code


def test_prompt_context_is_the_masked_mean():
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    context = prompt_context(hidden, mask)
    np.testing.assert_allclose(context, [[1.0, 2.0], [6.0, 7.0]])
    assert context.dtype == np.float32
    unit = prompt_context(hidden, mask, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(prompt_context(hidden[0], mask[0]), [1.0, 2.0])
    with pytest.raises(ValueError):
        prompt_context(hidden, mask[:, :2])


def test_prompt_context_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    hidden = torch.ones(1, 2, 3)
    mask = torch.tensor([[1, 0]])
    np.testing.assert_allclose(prompt_context(hidden, mask), [[1.0, 1.0, 1.0]])


def test_context_standardizer_uses_the_running_statistics_of_every_context_so_far():
    rng = np.random.default_rng(0)
    # A large shared part (as a prompt template gives) and small differences; one dimension constant.
    seen = rng.normal(size=(30, 3)) * [0.01, 1.0, 0.0] + [5.0, -2.0, 7.0]
    standardizer = ContextStandardizer(3)
    outputs = [standardizer(seen[:10]), standardizer(seen[10]), standardizer(seen[11:])]
    # Each call standardizes by the statistics of everything seen up to and including it.
    for upto, batch in ((10, seen[:10]), (11, seen[10:11]), (30, seen[11:])):
        mean, std = seen[:upto].mean(axis=0), seen[:upto].std(axis=0)
        scaled = np.where(std > 0, (batch - mean) / np.where(std > 0, std, 1), 0.0)
        expected = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
        got = outputs.pop(0)
        np.testing.assert_allclose(np.atleast_2d(got), expected, rtol=1e-5, atol=1e-6)
    assert standardizer(seen[0]).dtype == np.float32
    # The tiny first dimension now weighs as much as the second; the constant one is 0.
    late = standardizer(seen[:5])
    assert np.all(late[:, 2] == 0) and np.abs(late[:, 0]).mean() > 0.2
    restored = ContextStandardizer.from_state(standardizer.state())
    np.testing.assert_array_equal(restored(seen[:3]), standardizer(seen[:3]))
    with pytest.raises(ValueError):
        standardizer(np.zeros((2, 4)))


def test_create_router_with_the_reference_preset(server):
    client = LaserRouterClient(server.address)
    info = client.create_router("reference", context_dim=4, preset="laser_reference")
    assert info.settings.default_mode == 2  # SELECTION_MODE_PER_BATCH
    assert info.settings.alpha == pytest.approx(0.1) and info.settings.l2_lambda == 1.0
    with pytest.raises(LaserRouterError) as unknown:
        client.create_router("nope", context_dim=4, preset="laser")
    assert unknown.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "settings.preset" in unknown.value.message
    # The defaults and the named first reward, by name.
    defaults = client.create_router("defaults", context_dim=4, first_reward="neutral")
    assert defaults.settings.alpha == 1.0 and defaults.settings.l2_normalize_context
    assert defaults.settings.first_reward == 2  # FIRST_REWARD_NEUTRAL
    assert info.settings.first_reward == 1 and not info.settings.l2_normalize_context


def test_a_server_restarted_under_traffic_answers_only_retryable_codes():
    """One server (local state), 3 trainers using the client library (keyed Feedback retried
    until a 60 s deadline), the server SIGKILLed, SIGTERMed and SIGKILLed again, each time
    restarted at once: clients see only OK, UNAVAILABLE, ABORTED or DEADLINE_EXCEEDED, no trainer
    loses a feedback, every acknowledged feedback counts exactly once, decisions left pending
    survive. Prints the client-visible gap per restart."""
    import signal

    import chaos

    server = Server(free_port()).wait_ready()
    try:
        LaserRouterClient(server.address).create_router("restarts", context_dim=4)
        events = []
        with chaos.Trainers([server.address], "restarts", count=3, timeout=60, attempt_timeout=5) as trainers:
            for fault in ("kill", "term", "kill"):
                time.sleep(0.8)
                at = time.monotonic()
                if fault == "kill":
                    server.kill()
                else:
                    server.process.send_signal(signal.SIGTERM)
                    server.process.wait(timeout=60)
                server.start()
                server.wait_ready()
                while not any(end > at and code == grpc.StatusCode.OK for _, end, code, _ in list(trainers.attempts.seen)):
                    assert time.monotonic() - at < 60, f"clients not answered after {fault}"
                    time.sleep(0.05)
                events.append((fault, at))
            time.sleep(0.5)
        ends = [at for _, at in events[1:]] + [float("inf")]
        for (fault, at), until in zip(events, ends):
            print(f"\nclient-visible gap after SIG{fault.upper()} and restart: "
                  f"{trainers.attempts.gap_after(at, until) or 0:.2f} s")
        codes = trainers.attempts.codes()
        print(f"codes {sorted(c.name for c in codes)}, {len(trainers.fed)} feedbacks acknowledged")
        trainers.assert_nothing_lost(LaserRouterClient(server.address))
        assert len(trainers.fed) > 20
    finally:
        server.stop()
