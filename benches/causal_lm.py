#!/usr/bin/env python3
"""Causal-LM reward models (score = "log_likelihood"): the server against the same ONNX graph
run by ONNX Runtime alone and against torch on CPU, and the server's peak memory per batch at
a 4k and a 128k vocabulary.

Per vocabulary, a random Llama (hidden 128, 2 layers; scripts/export_causal_lm.py's wrapper) is
exported; the workload is 16 chat prompts x 4 responses (64 sequences). Each side scores the
same token ids in the same batches (length-sorted, cut at the server's max_batch_sequences and
max_batch_tokens): the server through one gRPC Score per round (tokenization included), ONNX
Runtime alone on pre-tokenized ids (onnxruntime's Python package, the server's version), torch
on the same ids (log_softmax + gather). Rounds alternate between the sides and each keeps its
best, so a ratio survives a neighbour's load.

Memory: the server's VmHWM (peak RSS) after loading and probing, then after scoring, at each
vocabulary: what the inference added, against the logits a whole batch would take
(sequences x padded tokens x vocabulary x 4 bytes) and the bound the worker keeps
(2 x max_batch_tokens x vocabulary x 4 bytes: the logits and their log-softmax of one batch).

Usage (the trainer tests' environment, plus `pip install onnxruntime==1.31.1`):
  ~/.cache/laser-router/trainers-*/bin/python benches/causal_lm.py [ROUNDS]
"""
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python"))
sys.path.insert(0, str(ROOT / "clients" / "python" / "tests"))
from conftest import Server, free_port  # noqa: E402
from laser_router_client import LaserRouterClient, Query  # noqa: E402

spec = importlib.util.spec_from_file_location("export_causal_lm", ROOT / "scripts" / "export_causal_lm.py")
export_causal_lm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export_causal_lm)

MAX_BATCH_SEQUENCES, MAX_BATCH_TOKENS = 64, 1024
PROMPTS = [f"Question {i}: what is {i} plus {i}? Explain the steps briefly." for i in range(16)]
RESPONSES = ["It is the sum.", "The answer is twice the number, as adding a number to itself doubles it.",
             "No idea.", "Add them: the quick brown fox jumps over the lazy dog, then count."]


def build(folder: Path, vocab: int):
    tokenizer = export_causal_lm.tiny_tokenizer(folder)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    export_causal_lm.export(model, folder)
    return tokenizer, model


def sequences(tokenizer: Tokenizer):
    """The server's split (docs/llm-reward-models.md): prompt part, then response part."""
    out = []
    for prompt in PROMPTS:
        prefix = f"<s><|user|>\n{prompt}</s>\n<|assistant|>\n"
        head = tokenizer.encode(prefix, add_special_tokens=False).ids
        for response in RESPONSES:
            out.append(head + tokenizer.encode(f"{response}</s>\n", add_special_tokens=False).ids)
    return out


def batches(ids):
    """The worker's cut: length-sorted, at most MAX_BATCH_SEQUENCES and MAX_BATCH_TOKENS padded."""
    order = sorted(ids, key=len)
    cut, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and end - start < MAX_BATCH_SEQUENCES and \
                (end - start + 1) * len(order[end]) <= MAX_BATCH_TOKENS:
            end += 1
        cut.append(order[start:end])
        start = end
    return cut


def padded(batch):
    longest = max(len(s) for s in batch)
    ids = np.zeros((len(batch), longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, s in enumerate(batch):
        ids[row, :len(s)], mask[row, :len(s)] = s, 1
    return ids, mask


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_vocab(vocab: int, rounds: int):
    folder = Path(tempfile.mkdtemp(prefix=f"causal-lm-{vocab}-"))
    tokenizer, model = build(folder, vocab)
    ids = sequences(tokenizer)
    cut = batches(ids)
    feeds = [padded(b) for b in cut]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    torch.set_num_threads(os.cpu_count())
    config = f"""
[routers]
create_on_first_use = true
[[reward_models]]
name = "lm"
model = "{folder / 'model.onnx'}"
tokenizer = "{folder / 'tokenizer.json'}"
input_format = "chat"
score = "log_likelihood"
max_length = 512
max_batch_sequences = {MAX_BATCH_SEQUENCES}
max_batch_tokens = {MAX_BATCH_TOKENS}
"""
    server = Server(free_port(), config).wait_ready()
    try:
        loaded_kb = peak_rss_kb(server.process.pid)
        queries = [Query(id=str(i), context=[1.0], prompt=p, responses=RESPONSES) for i, p in enumerate(PROMPTS)]
        best = {"server": float("inf"), "onnxruntime alone": float("inf"), "torch": float("inf")}
        with LaserRouterClient(server.address) as client:
            client.create_router("lm-only", context_dim=1, reward_models=["lm"])
            client.score("lm-only", queries)  # warm-up
            scored_kb = peak_rss_kb(server.process.pid)

            def through_server():
                client.score("lm-only", queries)

            def ort_alone():
                for ids_, mask in feeds:
                    session.run(["token_logprobs"], {"input_ids": ids_, "attention_mask": mask})

            def with_torch():
                with torch.no_grad():
                    for ids_, mask in feeds:
                        t_ids = torch.from_numpy(ids_)
                        logits = model(input_ids=t_ids, attention_mask=torch.from_numpy(mask)).logits
                        torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, t_ids[:, 1:, None])

            sides = {"server": through_server, "onnxruntime alone": ort_alone, "torch": with_torch}
            for _ in range(rounds):
                for name, side in sides.items():
                    side()
                    started = time.perf_counter()
                    for _ in range(3):
                        side()
                    best[name] = min(best[name], (time.perf_counter() - started) / 3)
    finally:
        server.stop()
    sizes = [len(b) * max(len(s) for s in b) for b in cut]
    whole = len(ids) * max(len(s) for s in ids) * vocab * 4
    bound = 2 * MAX_BATCH_TOKENS * vocab * 4  # the logits and their log-softmax, one batch
    print(f"vocabulary {vocab}: {len(ids)} sequences, {len(cut)} batches (padded tokens {sizes})")
    for name, seconds in best.items():
        print(f"  {name}: {seconds * 1000:.1f} ms per Score's sequences ({len(ids) / seconds:.0f} sequences/s)")
    print(f"  ratio server / onnxruntime alone (throughput): {best['onnxruntime alone'] / best['server']:.2f}")
    print(f"  ratio server / torch (throughput): {best['torch'] / best['server']:.2f}")
    print(f"  server peak RSS: {loaded_kb / 1024:.0f} MiB loaded, {scored_kb / 1024:.0f} MiB after scoring: "
          f"+{(scored_kb - loaded_kb) / 1024:.0f} MiB; logits of all {len(ids)} sequences at once would be "
          f"{whole / 2**20:.0f} MiB, the worker's bound (2 x max_batch_tokens x vocabulary x 4 B) {bound / 2**20:.0f} MiB")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for vocab in [int(v) for v in os.environ.get("VOCABS", "4096,131072").split(",")]:
        run_vocab(vocab, rounds)


if __name__ == "__main__":
    main()
