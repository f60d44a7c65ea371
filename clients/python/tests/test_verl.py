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
