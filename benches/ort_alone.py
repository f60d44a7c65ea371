#!/usr/bin/env python3
"""ONNX Runtime alone on the same model and batches as `cargo bench --bench scoring`.

Reads the bench's batches (JSON: [[prompt, [responses...]], ...]), tokenizes each
(prompt, response) pair with the same tokenizer.json, pads each batch to its longest
sequence, and runs one inference per batch, one batch at a time, single process.
Prints `pairs_per_second=<float>` on its last line.

Usage: python3 benches/ort_alone.py MODEL TOKENIZER BATCHES_JSON OUTPUT_INDEX
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    model, tokenizer_path, batches_path = sys.argv[1:4]
    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    batches = json.load(open(batches_path))
    pairs = 0
    started = time.perf_counter()
    for prompt, responses in batches:
        encodings = tokenizer.encode_batch([(prompt, r) for r in responses])
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
        session.run(["logits"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        pairs += len(responses)
    elapsed = time.perf_counter() - started
    print(f"onnxruntime {ort.__version__} alone: {pairs} pairs in {elapsed:.2f}s")
    print(f"pairs_per_second={pairs / elapsed:.2f}")


if __name__ == "__main__":
    main()
