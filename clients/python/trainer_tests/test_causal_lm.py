"""Causal-LM reward models (LASeR's own kind of RM): tiny random Llamas built and exported here
with scripts/export_causal_lm.py (no model hub), served by the real binary, and their Score
scores compared with torch computing the same quantity on the same tokens:

- log_likelihood: Σ log π(response tokens | chat-templated prompt)
- mean_log_likelihood: the same per response token
- implicit: β·(Σ log π − Σ log π_ref) with a second Llama as the reference (RewardBench)

plus a plain-template RM, left-truncation of long prompts, hot add through Admin, and the
errors a wrong spec gets."""

import math
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import requests
import torch
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

from conftest import FIXTURES, Server, free_port
from laser_router_client import LaserRouterClient, LaserRouterError, Query

ROOT = Path(__file__).resolve().parents[3]
EXPORT = ROOT / "scripts" / "export_causal_lm.py"
BETA = 0.5
# The judge's instruction as the config file writes it (a TOML string: \n is a newline).
JUDGE = "Rate the answer from 1 to 5.\\nQuestion: {prompt}\\nAnswer: {response}"
PROMPTS = ["What is two plus two?", "Say hello."]
RESPONSES = [["It is four.", "Five, surely.", "four"], ["Hello, how can I help you today?", "No."]]


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    """A policy and a reference Llama (different seeds, same tokenizer), exported."""
    folder = tmp_path_factory.mktemp("llamas")
    for name, seed in (("policy", 1), ("reference", 2)):
        subprocess.run([sys.executable, str(EXPORT), "--tiny-llama", str(seed), str(folder / name)],
                       check=True, capture_output=True)
    return folder


def config(llamas: Path, max_length: int = 512) -> str:
    policy, reference = llamas / "policy", llamas / "reference"
    common = f'model = "{policy / "model.onnx"}"\ntokenizer = "{policy / "tokenizer.json"}"\n' \
             f"max_length = {max_length}\n"
    return f"""
[routers]
create_on_first_use = true

[[reward_models]]
name = "likelihood"
{common}input_format = "chat"
score = "log_likelihood"

[[reward_models]]
name = "mean_likelihood"
{common}input_format = "chat"
score = "mean_log_likelihood"

[[reward_models]]
name = "dpo"
{common}input_format = "chat"
score = {{ implicit = {{ reference_model = "{reference / 'model.onnx'}", reference_tokenizer = "{reference / 'tokenizer.json'}", beta = {BETA} }} }}

[[reward_models]]
name = "judge"
{common}input_format = "chat"
score = {{ judge = {{ template = "{JUDGE}", ratings = ["1", "2", "3", "4", "5"] }} }}

[[reward_models]]
name = "plain"
{common}input_format = "template"
template = "Q: {{prompt}}\\nA: {{response}}"
score = "log_likelihood"

[[reward_models]]
name = "polite"
model = "{FIXTURES / 'polite' / 'model.onnx'}"
tokenizer = "{FIXTURES / 'tokenizer.json'}"
input_format = "pair"
"""


def torch_logprob_sums(model, prompt_ids, response_ids):
    """Σ log π(response token | everything before it), computed by torch."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    start = len(prompt_ids)
    return sum(logprobs[t - 1, ids[0, t]].item() for t in range(max(start, 1), ids.shape[1])), \
        ids.shape[1] - max(start, 1)


def split(tokenizer, prefix: str, rest: str, special: bool):
    """The server's split: the prompt part (special tokens unless a chat template writes them)
    and the rest, tokenized apart and concatenated."""
    return tokenizer.encode(prefix, add_special_tokens=special).ids, \
        tokenizer.encode(rest, add_special_tokens=False).ids


def chat_parts(prompt: str, response: str):
    """The tiny template (scripts/export_causal_lm.py) split where the server splits it: the
    prompt part (what apply_chat_template gives with add_generation_prompt, checked below)
    and the response with the turn's closing tokens."""
    prefix = f"<s><|user|>\n{prompt}</s>\n<|assistant|>\n"
    return prefix, f"{response}</s>\n"


def score_with(client, router: str, prompt: str, responses):
    return client.score(router, [Query(id="q", context=[1.0], prompt=prompt, responses=responses)])[0]


@pytest.fixture(scope="module")
def served(llamas):
    running = Server(free_port(), config(llamas)).wait_ready()
    yield running
    running.stop()


def fixed_router(client, name: str):
    client.create_router(f"only-{name}", context_dim=1, reward_models=[name])
    return f"only-{name}"


def test_chat_template_prompt_matches_transformers(llamas):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(str(llamas / "policy"))
    rendered = hf.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                      add_generation_prompt=True)
    assert rendered == chat_parts(PROMPTS[0], "")[0]


def test_likelihood_mean_and_implicit_scores_equal_torch(llamas, served):
    tokenizer = Tokenizer.from_file(str(llamas / "policy" / "tokenizer.json"))
    policy = LlamaForCausalLM.from_pretrained(str(llamas / "policy" / "hf")).eval()
    reference = LlamaForCausalLM.from_pretrained(str(llamas / "reference" / "hf")).eval()
    with LaserRouterClient(served.address) as client:
        routers = {name: fixed_router(client, name) for name in ("likelihood", "mean_likelihood", "dpo", "plain", "judge")}
        for prompt, responses in zip(PROMPTS, RESPONSES):
            got = {name: score_with(client, router, prompt, responses) for name, router in routers.items()}
            for i, response in enumerate(responses):
                prefix, rest = chat_parts(prompt, response)
                prompt_ids, response_ids = split(tokenizer, prefix, rest, special=False)
                total, count = torch_logprob_sums(policy, prompt_ids, response_ids)
                reference_total, _ = torch_logprob_sums(reference, prompt_ids, response_ids)
                assert got["likelihood"].reward_model == "likelihood"
                assert got["likelihood"].scores[i] == pytest.approx(total, abs=1e-4, rel=1e-5)
                assert got["mean_likelihood"].scores[i] == pytest.approx(total / count, abs=1e-4)
                assert got["dpo"].scores[i] == pytest.approx(BETA * (total - reference_total), abs=1e-4)
                # A plain template: the prompt part gets the tokenizer's BOS.
                plain_ids, plain_response = split(tokenizer, f"Q: {prompt}\nA: ", response, special=True)
                assert plain_ids[0] == tokenizer.token_to_id("<s>")
                plain, _ = torch_logprob_sums(policy, plain_ids, plain_response)
                assert got["plain"].scores[i] == pytest.approx(plain, abs=1e-4, rel=1e-5)
                # The judge: each rating's likelihood after the instruction's user turn,
                # normalized over the ratings; the score is the mean rating under it.
                instruction = f"Rate the answer from 1 to 5.\nQuestion: {prompt}\nAnswer: {response}"
                judge_prefix = tokenizer.encode(chat_parts(instruction, "")[0], add_special_tokens=False).ids
                logps = [torch_logprob_sums(policy, judge_prefix, tokenizer.encode(r, add_special_tokens=False).ids)[0]
                         for r in "12345"]
                weights = [math.exp(lp - max(logps)) for lp in logps]
                mean_rating = sum((k + 1) * w for k, w in enumerate(weights)) / sum(weights)
                assert got["judge"].scores[i] == pytest.approx(mean_rating, abs=1e-4)
            assert all(1.0 <= s <= 5.0 for s in got["judge"].scores)
            # The implicit reward is not the likelihood: the reference matters.
            assert any(abs(a - BETA * b) > 1e-3 for a, b in zip(got["dpo"].scores, got["likelihood"].scores))


def test_a_router_mixes_classifier_and_causal_lm_arms(served):
    with LaserRouterClient(served.address) as client:
        client.create_router("mixed", context_dim=1, policy="ensemble")
        result = score_with(client, "mixed", PROMPTS[0], RESPONSES[0])
        assert result.reward_model == "ensemble"
        assert len(result.scores) == 3 and all(math.isfinite(s) for s in result.scores)


def test_a_long_prompt_is_cut_from_the_left_and_the_response_kept(llamas):
    tokenizer = Tokenizer.from_file(str(llamas / "policy" / "tokenizer.json"))
    policy = LlamaForCausalLM.from_pretrained(str(llamas / "policy" / "hf")).eval()
    running = Server(free_port(), config(llamas, max_length=24)).wait_ready()
    try:
        prompt, response = "The quick brown fox jumps over the lazy dog. " * 4, "It is four."
        with LaserRouterClient(running.address) as client:
            got = score_with(client, fixed_router(client, "likelihood"), prompt, [response]).scores[0]
            metrics = requests.get(running.metrics, timeout=5).text
        prefix, rest = chat_parts(prompt, response)
        prompt_ids, response_ids = split(tokenizer, prefix, rest, special=False)
        kept = prompt_ids[len(prompt_ids) - (24 - len(response_ids)):]
        total, count = torch_logprob_sums(policy, kept, response_ids)
        assert count == len(response_ids)
        assert got == pytest.approx(total, abs=1e-4, rel=1e-5)
        assert 'laser_causal_lm_truncated_total{reward_model="likelihood",part="prompt"}' in metrics
    finally:
        running.stop()


def test_hot_add_through_admin_and_bad_specs_name_the_field(llamas, served):
    policy, reference = llamas / "policy", llamas / "reference"
    with LaserRouterClient(served.address) as client:
        added = client.add_reward_model(
            name="dpo_added", model_path=str(policy / "model.onnx"), tokenizer_path=str(policy / "tokenizer.json"),
            input_format="chat", score="implicit",
            implicit={"reference_model_path": str(reference / "model.onnx"), "beta": BETA})
        assert added.name == "dpo_added"
        first = score_with(client, fixed_router(client, "dpo_added"), PROMPTS[0], RESPONSES[0]).scores
        expected = score_with(client, "only-dpo", PROMPTS[0], RESPONSES[0]).scores
        assert first == pytest.approx(expected, abs=1e-5)
        client.remove_reward_model("dpo_added")

        def refused(**spec):
            base = dict(name="bad", model_path=str(policy / "model.onnx"),
                        tokenizer_path=str(policy / "tokenizer.json"), input_format="chat")
            with pytest.raises(LaserRouterError) as error:
                client.add_reward_model(**{**base, **spec})
            return error.value

        beta = refused(score="implicit", implicit={"reference_model_path": str(reference / "model.onnx"), "beta": 0})
        assert beta.code == grpc.StatusCode.INVALID_ARGUMENT and "beta" in beta.message
        missing = refused(score="implicit")
        assert "spec.implicit" in missing.message
        # A classifier graph has no token_logprobs output.
        classifier = refused(score="log_likelihood", model_path=str(FIXTURES / "polite" / "model.onnx"),
                             tokenizer_path=str(FIXTURES / "tokenizer.json"), input_format="pair")
        assert "token_logprobs" in classifier.message
        # A reference whose tokenizer is another vocabulary.
        other = refused(score="implicit", implicit={"reference_model_path": str(reference / "model.onnx"),
                                                    "reference_tokenizer_path": str(FIXTURES / "tokenizer.json"),
                                                    "beta": 0.1})
        assert "reference_tokenizer" in other.message and "differs" in other.message
        judge = refused(score="judge", judge={"template": "Rate {response}", "ratings": ["good", "bad"]})
        assert "spec" in judge.message and "not a number" in judge.message
        unknown = refused(score="likelyhood")
        assert "spec.score" in unknown.message
