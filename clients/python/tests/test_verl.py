"""The verl adapter called the way verl's reward loop calls a custom reward function, and
the step feedback hook (OpenRLHF, verl), against the real server.

verl (volcengine/verl, verl/experimental/reward_loop/reward_manager/naive.py,
NaiveRewardManager.run_single) awaits, once per response and many concurrently,
``compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)``; the
custom function's ``reward_kwargs`` from the config reach it as extra keyword arguments
(verl/trainer/ppo/reward.py, _call_with_kwargs_async). Its gsm8k preprocessing
(examples/data_preprocess/gsm8k.py) stores ``index`` and ``question`` in extra_info."""

import asyncio
import functools

import pytest

from conftest import pairwise_agreement
from laser_router_client import AsyncLaserRouterClient, LaserRouterClient, Query
from laser_router_client.signals import StepFeedback
from laser_router_client.verl import LaserVerlReward, compute_score, compute_score_sync

QUESTIONS = ["How do I thank a colleague?", "What is 6 times 7?", "Name a long river."]
RESPONSES = ["Thank you, kindly!", "It is 42.", "The Nile is a very long river in Africa indeed.",
             "Please and thanks.", "Sorry, no idea."]


def items():
    """Two samples per question (verl's rollout.n = 2), as verl's DataProto rows carry them."""
    return [dict(data_source="openai/gsm8k", solution_str=RESPONSES[(q + n) % len(RESPONSES)],
                 ground_truth="42", extra_info={"split": "train", "index": q, "question": QUESTIONS[q]})
            for q in range(len(QUESTIONS)) for n in range(2)]


def test_concurrent_calls_become_one_score_with_a_group_per_prompt(http_server):
    async def run():
        async with AsyncLaserRouterClient(http_server.address) as client:
            adapter = LaserVerlReward(client, "verl-run")
            # verl's reward loop: one awaited call per response, gathered.
            results = await asyncio.gather(*[adapter.compute_score(**item) for item in items()])
            return adapter.scores_sent, results

    scores_sent, results = asyncio.run(run())
    assert scores_sent == 1
    assert all(set(r) == {"score", "reward_model"} for r in results)
    sync = LaserRouterClient(http_server.address)
    # Both samples of a question were scored by one RM (one decision per question).
    for q in range(len(QUESTIONS)):
        pair = results[2 * q:2 * q + 2]
        assert pair[0]["reward_model"] == pair[1]["reward_model"]
    info = sync.get_router("verl-run")
    assert info.pending_decisions == len(QUESTIONS)
    assert sum(a.selections for a in info.arms) == len(QUESTIONS)
    # Each query's category is its data_source.
    assert {c.category for c in info.categories} == {"openai/gsm8k"}
    assert sum(c.selections for c in info.categories) == len(QUESTIONS)

    # The step hook: this step's loss for every pending decision, once.
    hook = StepFeedback(sync, "verl-run", run="verl-run")
    assert hook.report(step=1, loss=0.5)["applied"] == len(QUESTIONS)
    again = hook.report(step=1, loss=0.5)
    assert again["replayed"] and again["applied"] == len(QUESTIONS)
    info = sync.get_router("verl-run")
    assert info.pending_decisions == 0 and sum(a.feedback_count for a in info.arms) == len(QUESTIONS)
    assert info.rewards_seen == 1  # one step loss is one raw reward for the normalization


def test_the_scores_are_the_chosen_rms(http_server):
    """The module-level function from verl's config (reward_kwargs carry the address and router)
    returns what that RM gives each response through a router that can only pick it."""
    reward_fn = functools.partial(compute_score, laser_address=http_server.address, laser_router="verl-cfg")

    async def run():
        return await asyncio.gather(*[reward_fn(**item) for item in items()])

    results = asyncio.run(run())
    sync = LaserRouterClient(http_server.address)
    for rm in ("length", "polite"):
        sync.create_router(f"only-{rm}", policy="fixed", fixed_reward_model=rm, encoder="topics")
    for q in range(len(QUESTIONS)):
        pair = results[2 * q:2 * q + 2]
        expected = sync.score(f"only-{pair[0]['reward_model']}", [Query(
            id="0", context=None, prompt=QUESTIONS[q],
            responses=[items()[2 * q]["solution_str"], items()[2 * q + 1]["solution_str"]])])[0].scores
        assert [r["score"] for r in pair] == [float(s) for s in expected]


def test_sync_form_shares_the_group_decision(http_server):
    first, second = items()[0], items()[1]
    kwargs = dict(laser_address=http_server.address, laser_router="verl-sync")
    a, b = compute_score_sync(**first, **kwargs), compute_score_sync(**second, **kwargs)
    assert a["reward_model"] == b["reward_model"]
    info = LaserRouterClient(http_server.address).get_router("verl-sync")
    assert info.pending_decisions == 1


def test_missing_prompt_is_a_clear_error(http_server):
    async def run():
        async with AsyncLaserRouterClient(http_server.address) as client:
            await LaserVerlReward(client, "verl-bad").compute_score(solution_str="x", extra_info={"index": 1})

    try:
        asyncio.run(run())
    except ValueError as error:
        assert "extra_info['prompt']" in str(error)
    else:
        raise AssertionError("a call without the prompt must fail")


def contains_truth(data_source=None, solution_str="", ground_truth=None, extra_info=None):
    """A rule-based verifier of verl's reward shape (verl's gsm8k scorer returns a float too)."""
    return {"score": float(str(ground_truth) in solution_str)}


def test_labels_from_a_verifier_are_reported_with_their_scores_when_a_group_spans_scores(http_server):
    """Four samples per question arrive one at a time, Scores of two responses: each question's
    responses reach the router in several Scores and share one decision, which kept only the
    first Score's scores. The adapter reports every labelled response with the score it got;
    each decision's reward is the agreement over all of them."""
    solutions = ["It is 42.", "No idea.", "Maybe 41.", "42, since 6 x 7 = 42.", "Forty-two? 42."]
    samples = [dict(data_source="openai/gsm8k", solution_str=solutions[(q + n) % len(solutions)],
                    ground_truth="42", extra_info={"index": q, "question": QUESTIONS[q]})
               for n in range(4) for q in range(len(QUESTIONS))]  # verl's order per sample, not per prompt

    async def run():
        async with AsyncLaserRouterClient(http_server.address) as client:
            adapter = LaserVerlReward(client, "verl-labels", max_batch=2, labels_fn=contains_truth, group_size=4)
            results = []
            for start in range(0, len(samples), 2):  # pairs arrive together, one Score each
                results += await asyncio.gather(*[adapter.compute_score(**s) for s in samples[start:start + 2]])
            for _ in range(100):  # the complete groups report at once, without waiting
                if sum(len(labels) for labels, _ in adapter.label_reports) == len(QUESTIONS):
                    break
                await asyncio.sleep(0.02)
            return adapter, results

    adapter, results = asyncio.run(run())
    assert adapter.scores_sent == len(samples) // 2
    reported = {d: labels for labels, _ in adapter.label_reports for d, labels in labels.items()}
    assert len(reported) == len(QUESTIONS)
    assert all(isinstance(counts, dict) for _, counts in adapter.label_reports)
    expected = {}
    for q in range(len(QUESTIONS)):
        mine = [(r["score"], float("42" in s["solution_str"])) for s, r in zip(samples, results)
                if s["extra_info"]["index"] == q]
        rm = {r["reward_model"] for s, r in zip(samples, results) if s["extra_info"]["index"] == q}
        assert len(rm) == 1, "a question's samples share one decision"
        (decision_id, labels), = [(d, l) for d, l in reported.items()
                                  if sorted(zip(l["scores"], l["values"])) == sorted(mine)]
        expected.setdefault(rm.pop(), []).append(pairwise_agreement(labels["scores"], labels["values"]))
    info = LaserRouterClient(http_server.address).get_router("verl-labels")
    assert info.pending_decisions == 0
    assert info.rewards_seen == 0, "labels stay out of the loss history"
    arms = {arm.reward_model: arm for arm in info.arms}
    for rm, rewards in expected.items():
        assert arms[rm].feedback_count == len(rewards)
        assert abs(arms[rm].mean_reward - sum(rewards) / len(rewards)) < 1e-6


def test_labels_named_in_the_config_report_after_the_delay_and_bad_labels_fail_the_call(http_server):
    """``laser_labels`` as verl's config names it (a module:function path), without the group
    size: the decision is reported ``laser_label_delay`` after its last response."""
    reward_fn = functools.partial(compute_score, laser_address=http_server.address, laser_router="verl-named",
                                  laser_labels=f"{__name__}:contains_truth", laser_label_delay=0.2)

    async def run():
        results = await asyncio.gather(*[reward_fn(**item) for item in items()])
        await asyncio.sleep(1.0)
        return results

    results = asyncio.run(run())
    info = LaserRouterClient(http_server.address).get_router("verl-named")
    # Questions 0 and 1 have one sample with "42" and one without: judged. Question 2's two
    # samples are both without: labels that never differ answer it without learning.
    assert info.pending_decisions == 0
    assert sum(arm.feedback_count for arm in info.arms) == 2
    assert all(r["reward_model"] for r in results)

    async def nan():
        async with AsyncLaserRouterClient(http_server.address) as client:
            adapter = LaserVerlReward(client, "verl-named", labels_fn=lambda **_: float("nan"))
            await adapter.compute_score(**items()[0])

    with pytest.raises(ValueError, match="finite"):
        asyncio.run(nan())
    with pytest.raises(ValueError, match="module:function"):
        LaserVerlReward(None, "r", labels_fn="nomodule")
