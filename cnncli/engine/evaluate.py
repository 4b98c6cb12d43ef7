"""Evaluation as data: batched prediction, loss, accuracy, confusion matrix, per-class figures.

Nothing here prints or draws; ``cnncli eval`` renders the result and ``cnncli.viz.confusion``
draws the matrix. Precision, recall and F1 follow the usual definitions (per class, one
against the rest); a class that is never predicted (or never present) gets 0.0 rather than
NaN, so every figure stays a finite JSON number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_BATCH = 256


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes), int64: row = true class, column = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} true labels but {y_pred.size} predictions")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def class_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 (float64) and support (int64) from a confusion matrix.

    precision_k = C[k, k] / sum_i C[i, k]; recall_k = C[k, k] / sum_j C[k, j];
    F1 = 2 p r / (p + r). A zero denominator gives 0.0.
    """
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(c)
    predicted = c.sum(axis=0)
    support = c.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": np.asarray(confusion).sum(axis=1).astype(np.int64),
    }


def predict_logits(
    net,
    n: int,
    batch_of: Callable[[np.ndarray], np.ndarray],
    *,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Logits (n, outputs) of ``net`` for n inputs, ``batch`` at a time.

    ``batch_of(indices)`` returns the network-ready input (len(indices), C, H, W) for those
    indices (already normalised); ``progress(done, n)`` is called after each batch.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    chunks = []
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n))
        chunks.append(np.asarray(net.forward(batch_of(idx), train=False)))
        if progress is not None:
            progress(int(idx[-1]) + 1, n)
    if not chunks:
        return np.zeros((0, net_outputs(net)), dtype=np.float32)
    return np.concatenate(chunks, axis=0)


def net_outputs(net) -> int:
    spec = getattr(net, "spec", None)
    if spec is not None:
        return int(spec.outputs)
    last = [k for k in net.params if k.endswith(".weight")][-1]
    return int(net.params[last].shape[0])


@dataclass
class EvalResult:
    """What ``cnncli eval`` reports; ``to_dict`` gives the JSON document's figures."""

    classes: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    loss: float
    confusion: np.ndarray = field(init=False)
    metrics: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.confusion = confusion_matrix(self.y_true, self.y_pred, len(self.classes))
        self.metrics = class_metrics(self.confusion)

    @property
    def samples(self) -> int:
        return int(self.y_true.size)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.y_true == self.y_pred)) if self.samples else 0.0

    def per_class(self) -> list[dict]:
        m = self.metrics
        return [
            {
                "class": name,
                "precision": float(m["precision"][k]),
                "recall": float(m["recall"][k]),
                "f1": float(m["f1"][k]),
                "support": int(m["support"][k]),
            }
            for k, name in enumerate(self.classes)
        ]

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "classes": list(self.classes),
            "per_class": self.per_class(),
            "confusion": self.confusion.tolist(),
        }


def evaluate(
    net,
    n: int,
    labels: np.ndarray,
    batch_of: Callable[[np.ndarray], np.ndarray],
    classes: Sequence[str],
    *,
    loss: str = "cross_entropy",
    batch: int = DEFAULT_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Run ``net`` over n inputs and score it against ``labels`` (model class indices).

    The loss is the training loss without regularisers, averaged over all n inputs.
    """
    from cnncli.nn import losses

    loss_fn = losses.get(loss)
    labels = np.asarray(labels, dtype=np.int64)
    logits = predict_logits(net, n, batch_of, batch=batch, progress=progress)
    value = float(loss_fn(logits, labels)[0]) if n else 0.0
    y_pred = np.argmax(logits, axis=1) if n else np.zeros(0, dtype=np.int64)
    return EvalResult(classes=list(classes), y_true=labels, y_pred=y_pred, loss=value)


def map_labels(
    data_classes: Sequence[str], model_classes: Sequence[str], y: np.ndarray, where: str
) -> np.ndarray:
    """The data's labels as model class indices, matching classes by name.

    Identical lists map as they are; a data set holding some of the model's classes is mapped
    by name; data without real names (classes "0".."k-1") is taken index for index when the
    model has at least k outputs. Anything else cannot be scored and is refused.
    """
    from cnncli.errors import DataError

    data_classes = [str(c) for c in data_classes]
    model_classes = [str(c) for c in model_classes]
    y = np.asarray(y, dtype=np.int64)
    if data_classes == model_classes:
        return y
    index = {name: i for i, name in enumerate(model_classes)}
    if data_classes and all(c in index for c in data_classes):
        table = np.array([index[c] for c in data_classes], dtype=np.int64)
        return table[y]
    unnamed = data_classes == [str(i) for i in range(len(data_classes))]
    if unnamed and len(data_classes) <= len(model_classes):
        return y
    shown = ", ".join(data_classes[:12]) + (" ..." if len(data_classes) > 12 else "")
    raise DataError(
        f"the classes of '{where}' ({shown}) are not the model's "
        f"({', '.join(model_classes[:12])}{' ...' if len(model_classes) > 12 else ''})",
        hint="evaluate on data labelled with the classes the model was trained on",
    )
