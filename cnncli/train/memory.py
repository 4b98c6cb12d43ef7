"""How much memory training a network needs, from shapes alone (nothing is allocated).

The estimate is deliberately rough and errs high: parameters x 4 (weights, gradients and
up to two optimizer slots) plus, per image of a batch, every layer's activations (and a
conv layer's unfolded input, im2col) x 3 (the forward cache, the backward pass and
temporaries). Training is refused when it exceeds half the available RAM.
"""

from __future__ import annotations

from pathlib import Path

from cnncli.errors import CnncliError
from cnncli.spec.model import Conv, NetSpec, param_shapes

PARAM_COPIES = 4
ACTIVATION_COPIES = 3
RAM_FRACTION = 0.5


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def estimate_bytes(spec: NetSpec, batch_size: int, dtype: str = "float32") -> dict[str, int]:
    """{"params", "activations", "total"} in bytes for training with ``batch_size``."""
    item = 8 if dtype == "float64" else 4
    params = sum(_count(s) for layer in spec.layers for s in param_shapes(layer).values())
    per_image = _count(spec.input)
    for layer in spec.layers:
        per_image += _count(layer.out_shape) * layer.activation.multiplier
        if isinstance(layer, Conv):
            _, oh, ow = layer.out_shape
            kh, kw = layer.size
            per_image += oh * ow * layer.in_shape[0] * kh * kw
    p = params * PARAM_COPIES * item
    a = per_image * int(batch_size) * ACTIVATION_COPIES * item
    return {"params": p, "activations": a, "total": p + a}


def available_memory(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """MemAvailable in bytes (MemFree where the kernel does not say), or None if unknown."""
    try:
        text = Path(meminfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0]) * 1024
    return fields.get("MemAvailable", fields.get("MemFree"))


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def check_fits(spec: NetSpec, batch_size: int, dtype: str, available: int | None = None) -> dict:
    """Refuse (exit 2) a network and batch whose estimate exceeds half the available RAM."""
    est = estimate_bytes(spec, batch_size, dtype)
    avail = available_memory() if available is None else available
    if avail is None:
        return est
    limit = int(avail * RAM_FRACTION)
    if est["total"] > limit:
        raise CnncliError(
            f"training {spec.name} with batch_size {batch_size} needs about "
            f"{human(est['total'])} (parameters {human(est['params'])}, activations "
            f"{human(est['activations'])}), more than the limit of {human(limit)} "
            f"(half of the {human(avail)} available)",
            field="train.batch_size",
            hint="lower train.batch_size or make the network smaller (cnncli summary shows "
            "each layer's size)",
        )
    return est
