"""The LASeR context from hidden states a trainer already has: the mean over the prompt's
tokens (attention mask applied), optionally L2-normalized. Works on numpy arrays and, when
torch is installed, on torch tensors (returned as float32 numpy, ready for `Query.context`).

The paper's reference code averages the policy's *input-token embeddings* (padding
included); passing the last hidden state gives vectors of another scale, so α and λ tuned for
one do not carry over to the other without `normalize=True` (or the router's
`l2_normalize_context`).
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
