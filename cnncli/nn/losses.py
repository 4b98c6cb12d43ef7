"""Losses on the network's outputs (logits), averaged over the batch.

    loss_fn = losses.get("cross_entropy")
    loss, dlogits = loss_fn(logits, labels)    # logits (N, K), labels (N,) integers in [0, K)

``dlogits`` is the gradient of the mean loss, ready for ``net.backward``; it has the logits'
dtype and ``loss`` is a Python float.

- ``cross_entropy``: softmax cross-entropy, -log softmax(s)_y, with the maximum subtracted first.
- ``mse``: Bouvrie's squared error E = 1/2 sum_k (s_k - t_k)^2 against one-hot targets t
  (Bouvrie 2006, "Notes on Convolutional Neural Networks", section 2).
- ``hinge``: the multiclass SVM loss sum_{j != y} max(0, s_j - s_y + 1) (CS231n notes,
  "Linear classification").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cnncli.errors import DataError, SpecError
from cnncli.nn.functional import log_softmax
from cnncli.nn.functional import softmax as _softmax

LossFn = Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits ``(N, K)`` (stable: the row maximum is subtracted)."""
    return _softmax(np.asarray(logits), axis=-1)


def _check(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits)
    if not np.issubdtype(logits.dtype, np.floating):
        logits = logits.astype(np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2:
        raise DataError(f"logits must be (N, classes); got shape {logits.shape}")
    if labels.shape != (logits.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be {logits.shape[0]} integers, one per row of the logits; got "
            f"shape {labels.shape} of {labels.dtype}"
        )
    k = logits.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        bad = labels[(labels < 0) | (labels >= k)][0]
        raise DataError(f"label {int(bad)} is outside 0..{k - 1} for a network with {k} outputs")
    return logits, labels.astype(np.intp, copy=False)


def cross_entropy(logits, labels) -> tuple[float, np.ndarray]:
    logits, labels = _check(logits, labels)
    n = logits.shape[0]
    rows = np.arange(n)
    logp = log_softmax(logits, axis=1)
    loss = -float(np.sum(logp[rows, labels], dtype=np.float64)) / n
    d = np.exp(logp)
    d[rows, labels] -= 1
    d /= n
    return loss, d


def mse(logits, labels) -> tuple[float, np.ndarray]:
    logits, labels = _check(logits, labels)
    n = logits.shape[0]
    d = logits.copy()
    d[np.arange(n), labels] -= 1
    loss = 0.5 * float(np.sum(np.square(d, dtype=np.float64))) / n
    d /= n
    return loss, d


def hinge(logits, labels) -> tuple[float, np.ndarray]:
    logits, labels = _check(logits, labels)
    n = logits.shape[0]
    rows = np.arange(n)
    margins = logits - logits[rows, labels][:, None] + 1
    margins[rows, labels] = 0
    active = margins > 0
    loss = float(np.sum(np.where(active, margins, 0), dtype=np.float64)) / n
    d = active.astype(logits.dtype)
    d[rows, labels] = -active.sum(axis=1)
    d /= n
    return loss, d


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse, "hinge": hinge}


def get(name: str) -> LossFn:
    """The loss function called ``name`` (``cross_entropy``, ``mse`` or ``hinge``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise SpecError(
            f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}", field="train.loss"
        ) from None
