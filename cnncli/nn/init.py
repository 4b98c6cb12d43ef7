"""Weight initialisation from an explicit NumPy Generator.

``he``: normal with std sqrt(2 / fan_in) (He et al. 2015, "Delving deep into rectifiers"),
the default for the ReLU family and maxout. ``xavier``: uniform on [-a, a] with
a = sqrt(6 / (fan_in + fan_out)) (Glorot and Bengio 2010). Biases start at 0. Values are drawn
in float64 and then cast, so a float32 and a float64 network built from one random seed agree
to float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np

from cnncli.errors import SpecError


def weights(shape: tuple[int, ...], method: str, fan_in: int, fan_out: int,
            rng: np.random.Generator, dtype) -> np.ndarray:
    if method == "he":
        w = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    elif method == "xavier":
        a = math.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-a, a, size=shape)
    else:
        raise SpecError(f"unknown init {method!r}; expected 'he' or 'xavier'")
    return w.astype(dtype)


def zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


def full(shape: tuple[int, ...], value: float, dtype) -> np.ndarray:
    return np.full(shape, value, dtype=dtype)
