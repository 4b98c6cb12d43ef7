"""Layer kind -> class. Adding a layer type means writing a class and adding a line here."""

from __future__ import annotations

from cnncli.errors import SpecError
from cnncli.nn.base import Layer
from cnncli.nn.conv import Conv2D, LearnedConv
from cnncli.nn.fc import Dense
from cnncli.nn.pool import MaxPool, MeanPool, Subsample

# (spec kind, variant) -> class; the variant is conv.combine or pool.type
LAYERS: dict[tuple[str, str], type[Layer]] = {
    ("conv", "full"): Conv2D,
    ("conv", "learned"): LearnedConv,
    ("pool", "max"): MaxPool,
    ("pool", "mean"): MeanPool,
    ("pool", "subsample"): Subsample,
    ("fc", ""): Dense,
}


def variant(spec) -> str:
    if spec.kind == "conv":
        return spec.combine
    if spec.kind == "pool":
        return spec.type
    return ""


def make_layer(spec, dtype) -> Layer:
    """The engine layer for one canonical layer spec (``Conv``, ``Pool`` or ``FC``)."""
    key = (spec.kind, variant(spec))
    cls = LAYERS.get(key)
    if cls is None:
        known = ", ".join(sorted(v for k, v in LAYERS if k == spec.kind and v))
        raise SpecError(f"{spec.name}: unknown {spec.kind} variant {key[1]!r}; expected one of "
                        f"{known}")
    return cls(spec, dtype)
