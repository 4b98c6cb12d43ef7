"""Augmentation throughput (images/s) for the batch shapes training uses.

    python bench/augment.py
"""

from __future__ import annotations

import time

import numpy as np

from cnncli.spec.model import Augment
from cnncli.train.augment import augment_batch

CASES = [
    ("1x28x28, all four", (64, 1, 28, 28), Augment(rotate=10, shift=2, scale=0.1, noise=0.02)),
    ("1x28x28, geometric", (64, 1, 28, 28), Augment(rotate=10, shift=2, scale=0.1)),
    ("1x28x28, noise only", (64, 1, 28, 28), Augment(noise=0.02)),
    ("3x32x32, all four", (64, 3, 32, 32), Augment(rotate=10, shift=2, scale=0.1, noise=0.02)),
]


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'case':24s} {'images/s':>10s}")
    for name, shape, spec in CASES:
        x = rng.random(shape).astype(np.float32)
        augment_batch(x, spec, rng)
        reps = 30
        t = time.perf_counter()
        for _ in range(reps):
            augment_batch(x, spec, rng)
        rate = reps * shape[0] / (time.perf_counter() - t)
        print(f"{name:24s} {rate:10.0f}")


if __name__ == "__main__":
    main()
