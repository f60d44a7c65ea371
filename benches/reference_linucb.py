#!/usr/bin/env python3
"""The LASeR reference algorithm's cost, for side-by-side comparison with the Rust bench.

Does what the paper's code (scripts/utils/linucb.py) does on every selection: for each
arm, `np.linalg.inv(A)`, then θ = A⁻¹b and UCB = x·θ + α·sqrt(xᵀA⁻¹x); argmax; then
A += x xᵀ, b += r x for the chosen arm. The stream is the same deterministic one the Rust
bench uses: x_t[i] = sin(0.001·(t·d + i)), r_t = (1 + cos(t)) / 2.

Prints `seconds_per_decision=<float>` on its last line.
Usage: python3 benches/reference_linucb.py DIM ARMS DECISIONS
"""
import sys
import time

import numpy as np


def main():
    dim, arms, decisions = (int(v) for v in sys.argv[1:4])
    alpha = 0.1
    a = [np.identity(dim) for _ in range(arms)]
    b = [np.zeros(dim) for _ in range(arms)]
    started = time.perf_counter()
    for t in range(decisions):
        x = np.sin(0.001 * (t * dim + np.arange(dim)))
        ucbs = []
        for k in range(arms):
            a_inv = np.linalg.inv(a[k])
            theta = a_inv @ b[k]
            ucbs.append(x @ theta + alpha * np.sqrt(x @ a_inv @ x))
        chosen = int(np.argmax(ucbs))
        reward = (1.0 + np.cos(t)) / 2.0
        a[chosen] += np.outer(x, x)
        b[chosen] += reward * x
    elapsed = time.perf_counter() - started
    print(f"reference: d={dim} K={arms} decisions={decisions} total={elapsed:.3f}s")
    print(f"seconds_per_decision={elapsed / decisions:.6f}")


if __name__ == "__main__":
    main()
