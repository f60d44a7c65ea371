"""A real TRL GRPOTrainer (tiny random causal LM on CPU) routed by laser-router.

What the server must show after each run: every decision got exactly one feedback, there is
one decision per prompt group the trainer scored, and a group's completions were scored by
one RM. The runs use `num_iterations = 2`, so each generation trains two optimizer steps and
its decisions are reported after both."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from collections import defaultdict

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

from conftest import FIXTURES
from laser_router_client import LaserRouterClient, Query
from laser_router_client.trl import LaserRouterGRPO

PROMPTS = [
    "please write a polite reply about the weather",
    "give me a long answer about cooking pasta",
    "thank you for the help with my code",
    "explain briefly how rain forms",
    "sorry to bother you, can you list three rivers",
    "describe a quiet morning in a small town",
]


def tokenizer() -> PreTrainedTokenizerFast:
    # The fixture RMs' WordPiece tokenizer (no model hub): [CLS] starts, [SEP] ends.
    return PreTrainedTokenizerFast(tokenizer_file=str(FIXTURES / "tokenizer.json"), bos_token="[CLS]",
                                   eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")


def tiny_model(tok: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))


CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message.role }}|> {{ message.content }} [SEP] {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def trainer(laser: LaserRouterGRPO, output_dir, max_steps: int, extra_callbacks=(), batch_size: int = 8,
            conversational: bool = False, columns=None, **config) -> GRPOTrainer:
    tok = tokenizer()
    if conversational:
        tok.chat_template = CHAT_TEMPLATE
    args = GRPOConfig(output_dir=str(output_dir), per_device_train_batch_size=batch_size, num_generations=4,
                      num_iterations=2, max_completion_length=10, max_steps=max_steps, logging_steps=1,
                      report_to="none", use_cpu=True, learning_rate=1e-3, seed=0,
                      **{"save_strategy": "no", **config})
    return GRPOTrainer(model=tiny_model(tok), processing_class=tok, reward_funcs=[laser.reward_function],
                       callbacks=[laser.callback, *extra_callbacks], args=args,
                       train_dataset=Dataset.from_dict({"prompt": [
                           [{"role": "user", "content": p}] if conversational else p for p in PROMPTS * 4],
                           **{name: values * 4 for name, values in (columns or {}).items()}}))


def assert_each_decision_reported_once(client: LaserRouterClient, router: str, decisions: set) -> None:
    info = client.get_router(router)
    assert info.pending_decisions == 0
    assert sum(a.selections for a in info.arms) == len(decisions)
    assert sum(a.feedback_count for a in info.arms) == len(decisions)
    assert info.rewards_seen == len(decisions)


def assert_one_rm_per_group(laser: LaserRouterGRPO) -> None:
    by_group = defaultdict(set)
    for d in laser.decisions:
        by_group[d["group"]].add((d["decision_id"], d["reward_model"]))
    assert all(len(v) == 1 for v in by_group.values()), by_group


@pytest.mark.parametrize("signal", ["dpo", "loss"])
def test_grpo_run_reports_every_decision_once(encoder_server, tmp_path, signal):
    client = LaserRouterClient(encoder_server.address)
    laser = LaserRouterGRPO(client, router=f"grpo-{signal}", signal=signal)
    run = trainer(laser, tmp_path, max_steps=6)
    run.train()

    decisions = {d["decision_id"] for d in laser.decisions}
    groups = {d["group"] for d in laser.decisions}
    assert len(decisions) == len(groups) >= 6
    assert_one_rm_per_group(laser)
    # Each decision is reported once, after both optimizer steps that trained on its generation.
    reported = [r["decision_id"] for r in laser.reports]
    assert sorted(reported) == sorted(decisions)
    assert all(r["step"] >= r["scored_at"] + 2 for r in laser.reports), laser.reports
    assert_each_decision_reported_once(client, f"grpo-{signal}", decisions)
    if signal == "dpo":
        # The signal is each decision's own: not one value for all.
        assert len({round(r["loss"], 9) for r in laser.reports}) > 1


def test_rewards_are_the_chosen_rms_scores(encoder_server, tmp_path):
    client = LaserRouterClient(encoder_server.address)
    laser = LaserRouterGRPO(client, router="grpo-scores")
    calls = []
    score = laser.score

    def recording(prompts, completions, completion_ids=None, step=0, *args, **kwargs):
        before = len(laser.decisions)
        rewards = score(prompts, completions, completion_ids, step, *args, **kwargs)
        calls.append((list(prompts), list(completions), rewards, laser.decisions[before:]))
        return rewards

    laser.score = recording
    trainer(laser, tmp_path, max_steps=4).train()
    # Each completion's reward is what its group's RM gives it: re-scored through a router
    # that can only pick that RM.
    for rm in ("length", "polite"):
        client.create_router(f"only-{rm}", policy="fixed", fixed_reward_model=rm, encoder="topics")
    checked = 0
    for prompts, completions, rewards, decisions in calls:
        by_prompt = {}
        for prompt, completion, reward in zip(prompts, completions, rewards):
            by_prompt.setdefault(prompt, []).append((completion, reward))
        assert len(decisions) == len(by_prompt)
        for decision, (prompt, pairs) in zip(decisions, by_prompt.items()):
            again = client.score(f"only-{decision['reward_model']}", [Query(
                id="0", context=None, prompt=prompt, responses=[c for c, _ in pairs])])[0]
            assert again.reward_model == decision["reward_model"]
            assert again.scores == pytest.approx([r for _, r in pairs], abs=1e-5)
            checked += len(pairs)
    assert checked == sum(len(completions) for _, completions, _, _ in calls) == 2 * 8


def test_a_verifiable_reward_goes_to_the_router_as_labels(encoder_server, tmp_path):
    """labels_fn, TRL's reward-function shape: labelled prompts are reported at once with
    their labels (the server rewards the agreement, outside the loss history); the prompt
    without ground truth keeps the DPO-style signal. Every decision is answered once."""
    unlabelled = "describe a quiet morning in a small town"

    def correct(prompts, completions, **columns):
        assert "trainer_state" in columns
        return [None if p == unlabelled else float(len(c) % 2) for p, c in zip(prompts, completions)]

    client = LaserRouterClient(encoder_server.address)
    laser = LaserRouterGRPO(client, router="grpo-labels", labels_fn=correct)
    trainer(laser, tmp_path, max_steps=4).train()
    labelled = [r for r in laser.reports if "labels" in r]
    by_loss = [r for r in laser.reports if "loss" in r]
    assert labelled and by_loss
    assert sorted(r["decision_id"] for r in laser.reports) == sorted(d["decision_id"] for d in laser.decisions)
    groups = {d["decision_id"]: d["group"] for d in laser.decisions}
    assert all(r["step"] == r["scored_at"] for r in labelled)
    informative = sum(len(set(r["labels"])) > 1 for r in labelled)
    info = client.get_router("grpo-labels")
    assert info.pending_decisions == 0
    assert info.rewards_seen == len(by_loss), "labels stay out of the loss history"
    assert sum(a.feedback_count for a in info.arms) == informative + len(by_loss)
    assert len(groups) == len(laser.reports)


TASKS = ["reply", "explain", "reply", "explain", "reply", "explain"]  # one per PROMPTS entry


def test_a_dataset_column_is_each_querys_category(encoder_server, tmp_path):
    """category_column: TRL passes the dataset's columns to reward functions; the named one
    is each prompt's category, which a router with context_categories sees as one-hot slots
    and GetRouter counts per category."""
    client = LaserRouterClient(encoder_server.address)
    client.create_router("grpo-tasks", encoder="topics", context_categories=["reply", "explain"])
    laser = LaserRouterGRPO(client, router="grpo-tasks", category_column="task")
    trainer(laser, tmp_path, max_steps=2, columns={"task": TASKS}).train()
    info = client.get_router("grpo-tasks")
    assert {c.category for c in info.categories} == {"reply", "explain"}
    assert sum(c.selections for c in info.categories) == len(laser.decisions)
    assert info.pending_decisions == 0
    missing = LaserRouterGRPO(client, router="grpo-tasks", category_column="topic")
    with pytest.raises(ValueError, match="category_column 'topic'"):
        missing.score(["p"], ["c"], completion_ids=[[1]], task=["reply"])


def test_server_killed_and_restarted_mid_run(encoder_server, tmp_path):
    client = LaserRouterClient(encoder_server.address, timeout=120)
    laser = LaserRouterGRPO(client, router="grpo-crash")
    restarted = threading.Event()
    killed_at = []

    def crash_after_two_scores():
        deadline = time.time() + 120
        while len(laser.decisions) < 4 and time.time() < deadline:
            time.sleep(0.01)
        killed_at.append(len(laser.decisions))
        encoder_server.kill()
        time.sleep(0.5)
        encoder_server.start()
        encoder_server.wait_ready()
        restarted.set()

    killer = threading.Thread(target=crash_after_two_scores, daemon=True)
    killer.start()
    trainer(laser, tmp_path, max_steps=8).train()
    killer.join(timeout=60)
    assert restarted.is_set()
    assert len(laser.decisions) > killed_at[0], "the run went on scoring after the restart"

    decisions = {d["decision_id"] for d in laser.decisions}
    assert len(decisions) == len({d["group"] for d in laser.decisions})
    assert_one_rm_per_group(laser)
    assert sorted(r["decision_id"] for r in laser.reports) == sorted(decisions)
    assert_each_decision_reported_once(client, "grpo-crash", decisions)


class _CrashAfterSave:
    """A trainer crash right after checkpoint-2 is written (callbacks run in order: the
    adapter's on_save has saved its decisions awaiting a report)."""

    def __getattr__(self, name):
        if name == "on_save":
            def on_save(args, state, control, **kwargs):
                raise KeyboardInterrupt("crash after checkpoint")
            return on_save
        return lambda *args, **kwargs: None


def test_resumed_run_reports_the_checkpoints_pending_decisions(encoder_server, tmp_path):
    client = LaserRouterClient(encoder_server.address)
    first = LaserRouterGRPO(client, router="grpo-resume")
    with pytest.raises(KeyboardInterrupt):
        trainer(first, tmp_path, max_steps=6, extra_callbacks=[_CrashAfterSave()],
                save_strategy="steps", save_steps=2).train()
    pending_at_crash = {p.decision_id for p in first.pending}
    assert pending_at_crash, "the checkpoint holds decisions awaiting a report"
    assert client.get_router("grpo-resume").pending_decisions == len(pending_at_crash)

    second = LaserRouterGRPO(client, router="grpo-resume")
    trainer(second, tmp_path, max_steps=6, save_strategy="steps",
            save_steps=2).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert pending_at_crash <= {r["decision_id"] for r in second.reports}
    decisions = {d["decision_id"] for d in first.decisions} | {d["decision_id"] for d in second.decisions}
    assert_each_decision_reported_once(client, "grpo-resume", decisions)


def test_two_ranks_share_the_decision_of_a_prompt_split_between_them(encoder_server, tmp_path):
    """Two processes (torch.distributed, gloo on CPU), 6 completions per rank, 4 per prompt:
    every step one prompt's completions are split across the ranks. Both ranks must get the
    same decision and RM for it, and the decision is applied once though both report it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    str(Path(__file__).parent / "ranked_run.py"), encoder_server.address, str(tmp_path)],
                   check=True, timeout=300, env=env, capture_output=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    by_group = [{d["group"]: (d["decision_id"], d["reward_model"]) for d in rank["decisions"]} for rank in ranks]
    shared = set(by_group[0]) & set(by_group[1])
    assert len(shared) >= 2, "a prompt split across the ranks at every generation"
    assert all(by_group[0][g] == by_group[1][g] for g in shared)
    decisions = {d for rank in by_group for d, _ in rank.values()}
    assert_each_decision_reported_once(LaserRouterClient(encoder_server.address), "grpo-ranks", decisions)


def test_conversational_prompts(encoder_server, tmp_path):
    """Chat-format prompts and completions (lists of messages): the RMs get their text, the
    DPO-style signal tokenizes the prompt with the chat template."""
    client = LaserRouterClient(encoder_server.address)
    laser = LaserRouterGRPO(client, router="grpo-chat")
    seen = []
    prompt_ids = laser._prompt_ids

    def recording(prompt):
        ids = prompt_ids(prompt)
        seen.append((prompt, ids))
        return ids

    laser._prompt_ids = recording
    run = trainer(laser, tmp_path, max_steps=4, conversational=True)
    run.train()
    decisions = {d["decision_id"] for d in laser.decisions}
    assert decisions and sorted(r["decision_id"] for r in laser.reports) == sorted(decisions)
    assert_each_decision_reported_once(client, "grpo-chat", decisions)
    # The signal's prompt is the chat-template rendering, ending with the generation prompt.
    assert seen and all(isinstance(p, list) for p, _ in seen)
    text = run.processing_class.decode(seen[0][1])
    assert "user" in text and text.rstrip().endswith("assistant | >"), text
