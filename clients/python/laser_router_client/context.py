"""The LASeR context from hidden states a trainer already has: the mean over the prompt's
tokens (attention mask applied), optionally L2-normalized. Works on numpy arrays and, when
torch is installed, on torch tensors (returned as float32 numpy, ready for `Query.context`).

The paper's reference code averages the policy's *input-token embeddings* (padding
included); passing the last hidden state gives vectors of another scale, so α and λ tuned for
one do not carry over to the other without `normalize=True` (or the router's
`l2_normalize_context`).

`ContextStandardizer` goes further: per-dimension standardization by running statistics of
the contexts seen so far, then L2 normalization. Prompt embeddings share a large common part
(the template, the language): LinUCB's ridge shrinks the small directions that tell prompts
apart, and standardizing brings them to unit scale (docs/learning.md measures the effect).
"""

from typing import Any

import numpy as np


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        return value.detach().to("cpu").float().numpy()
    return np.asarray(value)


def prompt_context(hidden_states: Any, attention_mask: Any, normalize: bool = False) -> np.ndarray:
    """Mean-pool `hidden_states` [batch, seq, dim] (or [seq, dim]) over the positions where
    `attention_mask` [batch, seq] (or [seq]) is 1. Returns float32 [batch, dim] (or [dim])."""
    hidden = _to_numpy(hidden_states).astype(np.float64)
    mask = _to_numpy(attention_mask).astype(np.float64)
    single = hidden.ndim == 2
    if single:
        hidden, mask = hidden[None], mask[None]
    if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden_states {hidden.shape} and attention_mask {mask.shape} do not match "
            "([batch, seq, dim] and [batch, seq])"
        )
    counts = mask.sum(axis=1, keepdims=True)
    pooled = (hidden * mask[:, :, None]).sum(axis=1) / np.maximum(counts, 1.0)
    if normalize:
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        pooled = pooled / np.where(norms > 0, norms, 1.0)
    pooled = pooled.astype(np.float32)
    return pooled[0] if single else pooled


class ContextStandardizer:
    """Running per-dimension standardization, then L2 normalization, of contexts.

    `standardizer(contexts)` first folds the batch [batch, dim] (or one [dim] context) into the
    running mean and variance (Welford/Chan, float64), then returns each context as
    `(x - mean) / std` (dimensions with no spread so far are left at 0), divided by its L2
    norm, as float32. Use one per router, in the order contexts are sent; `state()` and
    `ContextStandardizer.from_state(...)` carry it across a trainer's checkpoint.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)  # sum of squared deviations from the mean

    def __call__(self, contexts: Any) -> np.ndarray:
        batch = _to_numpy(contexts).astype(np.float64)
        single = batch.ndim == 1
        if single:
            batch = batch[None]
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"contexts {batch.shape} are not [batch, {self.dim}]")
        self._observe(batch)
        std = np.sqrt(self.m2 / max(self.count, 1))
        scaled = np.where(std > 0, (batch - self.mean) / np.where(std > 0, std, 1.0), 0.0)
        norms = np.linalg.norm(scaled, axis=1, keepdims=True)
        out = (scaled / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return out[0] if single else out

    def _observe(self, batch: np.ndarray) -> None:
        n = len(batch)
        batch_mean = batch.mean(axis=0)
        batch_m2 = ((batch - batch_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    def state(self) -> dict:
        return {"dim": self.dim, "count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "ContextStandardizer":
        restored = cls(state["dim"])
        restored.count = int(state["count"])
        restored.mean = np.asarray(state["mean"], dtype=np.float64)
        restored.m2 = np.asarray(state["m2"], dtype=np.float64)
        return restored
