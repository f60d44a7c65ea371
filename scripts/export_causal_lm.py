#!/usr/bin/env python3
"""Turn a Hugging Face causal LM into the ONNX form laser-router scores by likelihood.

The exported graph takes `input_ids` and `attention_mask` ([batch, tokens], right-padded) and
returns `token_logprobs` ([batch, tokens - 1], float32): at position t, log π(token t+1 |
tokens ..= t) — the log-probability of each given next token, not the logits. The server sums
it over a response's tokens (score "log_likelihood", "mean_log_likelihood", or "implicit" with
a reference model exported the same way). Why in the graph: the server never receives a
[batch, tokens, vocabulary] tensor (at a 128k vocabulary and 1,024 padded tokens that is half a
gigabyte per output); inside the graph ONNX Runtime holds the logits and their log-softmax for
one batch at a time, and the server's `max_batch_tokens` bounds that batch
(docs/llm-reward-models.md; a log-sum-exp form instead of log_softmax measured 2.2x slower on
ONNX Runtime 1.31 with the same peak memory, benches/causal_lm.py).

Beside model.onnx the output folder gets the model's tokenizer.json and tokenizer_config.json
(its chat template), which the RM's spec names.

Usage:
  python3 scripts/export_causal_lm.py MODEL_DIR OUT_DIR            # any HF causal LM folder
  python3 scripts/export_causal_lm.py --tiny-llama SEED OUT_DIR    # a tiny random Llama and a
                                                                   # byte-level tokenizer, made
                                                                   # here (tests, no model hub);
                                                                   # OUT_DIR/hf holds its HF form
                                                                   # (--vllm: a shape vLLM serves)
Needs torch, transformers and onnx (the trainer tests' environment has them).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

# A small chat template in the Zephyr style the tests and the tiny model use.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class TokenLogprobs(torch.nn.Module):
    """A causal LM whose output is the log-prob of each given next token."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def export(model, out: Path, opset: int = 17) -> Path:
    """Write OUT/model.onnx for `model` (a transformers causal LM in eval mode)."""
    out.mkdir(parents=True, exist_ok=True)
    wrapped = TokenLogprobs(model.eval())
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]], dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.long)
    path = out / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            wrapped, (ids, mask), str(path),
            input_names=["input_ids", "attention_mask"], output_names=["token_logprobs"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                          "attention_mask": {0: "batch", 1: "tokens"},
                          "token_logprobs": {0: "batch", 1: "next_tokens"}},
            opset_version=opset, dynamo=False)
    return path


def tiny_tokenizer(out: Path):
    """A byte-level BPE tokenizer trained here on a few sentences, with <s>, </s>, <pad> and the
    chat template above; saved as tokenizer.json and tokenizer_config.json in OUT."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["The quick brown fox jumps over the lazy dog.", "What is two plus two? It is four.",
              "<|user|> <|assistant|> Hello, how can I help you today?",
              "Reward models score responses; routers pick reward models."] * 20
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "chat_template": TINY_CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"}))
    return tokenizer


def tiny_llama(seed: int, vocab_size: int, vllm: bool = False):
    """A randomly initialised two-layer Llama (grouped-query attention, RoPE), small enough to
    export and run in seconds. `vllm`: heads of 64 dimensions (vLLM's CPU attention refuses
    head_dim 8: "Unsupported CPU attention configuration")."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    shape = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1) \
        if vllm else dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    config = LlamaConfig(vocab_size=vocab_size, num_hidden_layers=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, **shape)
    return LlamaForCausalLM(config).eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a Hugging Face causal LM folder, or the seed with --tiny-llama")
    parser.add_argument("out", type=Path)
    parser.add_argument("--tiny-llama", action="store_true",
                        help="make a tiny random Llama (seed = SOURCE) and its tokenizer instead")
    parser.add_argument("--vllm", action="store_true",
                        help="with --tiny-llama: a shape vLLM's CPU backend serves (head_dim 64)")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()
    if args.tiny_llama:
        tokenizer = tiny_tokenizer(args.out)
        model = tiny_llama(int(args.source), tokenizer.get_vocab_size(), vllm=args.vllm)
        # The torch weights (for comparisons) with the tokenizer: a folder vLLM can serve.
        model.save_pretrained(args.out / "hf")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(args.out / name, args.out / "hf" / name)
    else:
        from transformers import AutoModelForCausalLM

        source = Path(args.source)
        model = AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch.float32)
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (source / name).exists():
                shutil.copy(source / name, args.out / name)
        if not (args.out / "tokenizer.json").exists():
            print(f"{source} has no tokenizer.json (a fast tokenizer): save one with "
                  "AutoTokenizer.from_pretrained(...).save_pretrained(...)", file=sys.stderr)
            return 1
    path = export(model, args.out, args.opset)
    print(f"wrote {path} (inputs input_ids, attention_mask; output token_logprobs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
