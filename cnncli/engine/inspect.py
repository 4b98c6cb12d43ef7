"""Layer-by-layer health of a network on a sample of data, as data (``cnncli inspect``).

One forward pass (inference mode) keeps every layer's output; one training-mode forward and
backward of the loss gives the gradients; one optimizer step on a copy of the weights gives
the update each layer would receive. Figures per layer:

- ``active_fraction``: share of outputs > 0 (relu family only; None for other activations);
- ``dead_fraction``: share of units never > 0 on any sample, a unit being a feature map
  (conv, pool) or a neuron (FC): dead ReLUs (CS231n notes, "Commonly used activation functions");
- ``saturated_fraction``: share of sigmoid outputs below 0.01 or above 0.99, or of tanh outputs
  beyond +-0.99, where the gradient all but vanishes (sigmoid/tanh only);
- ``mean``/``std`` of the outputs; ``weight_norm``/``grad_norm``: L2 norms of the layer's main
  tensor (``weight``, or ``beta`` for a subsample pool) and of its gradient;
- ``update_ratio``: |update| / |weight| for that tensor; the CS231n notes ("Babysitting the
  learning process") suggest about 1e-3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

RELU_FAMILY = ("relu", "leaky_relu", "prelu")
SATURATING = ("sigmoid", "tanh")
DEAD_WARN = 0.5
SATURATED_WARN = 0.5
RATIO_TARGET = 1e-3
RATIO_LOW, RATIO_HIGH = 1e-5, 1e-1       # two orders of magnitude either side of the target
VANISHING = 1e-3                         # relative gradient of the first layer vs the last


@dataclass
class LayerHealth:
    name: str
    type: str
    activation: str
    units: int
    active_fraction: float | None
    dead_fraction: float | None
    saturated_fraction: float | None
    mean: float
    std: float
    weight_norm: float | None
    grad_norm: float | None
    update_ratio: float | None


@dataclass
class Health:
    samples: int
    loss: float
    lr: float
    layers: list[LayerHealth] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "loss": self.loss,
            "lr": self.lr,
            "layers": [asdict(layer) for layer in self.layers],
            "warnings": list(self.warnings),
        }


def _main_tensor(layer, params: dict) -> str | None:
    for suffix in ("weight", "beta"):
        key = f"{layer.name}.{suffix}"
        if key in params:
            return key
    return None


def _norm(a: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.square(a, dtype=np.float64))))


def activation_stats(out: np.ndarray, act: str) -> dict:
    """Active/dead/saturated shares, mean and std of one layer's outputs (N, C[, H, W])."""
    out = np.asarray(out)
    units = int(out.shape[1])
    stats: dict = {
        "units": units,
        "active_fraction": None,
        "dead_fraction": None,
        "saturated_fraction": None,
        "mean": float(np.mean(out, dtype=np.float64)),
        "std": float(np.std(out, dtype=np.float64)),
    }
    if act in RELU_FAMILY:
        positive = out > 0
        stats["active_fraction"] = float(np.mean(positive))
        axes = (0, *range(2, out.ndim))
        ever = positive.any(axis=axes)
        stats["dead_fraction"] = float(1.0 - np.mean(ever))
    elif act == "sigmoid":
        stats["saturated_fraction"] = float(np.mean((out < 0.01) | (out > 0.99)))
    elif act == "tanh":
        stats["saturated_fraction"] = float(np.mean(np.abs(out) > 0.99))
    return stats


def inspect_network(
    net,
    x: np.ndarray,
    y: np.ndarray,
    *,
    loss: str = "cross_entropy",
    optimizer=None,
    lr: float = 0.01,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> Health:
    """Health figures of ``net`` on normalised inputs x (N, C, H, W) with labels y (N,).

    ``optimizer`` is the config's optimizer description (``cnncli.spec.model.Optimizer``);
    without one, the update is taken as plain SGD: lr * grad.
    """
    from cnncli.nn import losses

    spec = net.spec
    x = np.asarray(x)
    y = np.asarray(y, dtype=np.int64)
    net.forward(x, train=False, keep=True)
    acts = {k: np.array(v, copy=True) for k, v in net.activations.items()}

    rng = np.random.default_rng(seed)
    logits = net.forward(x, train=True, rng=rng)
    value, dlogits = losses.get(loss)(logits, y)
    net.backward(dlogits, input_grad=False)
    grads = {k: np.array(g, copy=True) for k, g in net.grads.items()}

    updates = _updates(net.params, grads, optimizer, lr, weight_decay)

    health = Health(samples=int(x.shape[0]), loss=float(value), lr=float(lr))
    for layer in spec.layers:
        act = layer.activation.type
        if layer.kind == "pool" and layer.type != "subsample":
            act = "none"  # max and mean pools apply no activation
        out = acts.get(layer.name)
        if out is None:
            continue
        stats = activation_stats(out, act)
        key = _main_tensor(layer, net.params)
        w_norm = g_norm = ratio = None
        if key is not None:
            w_norm = _norm(net.params[key])
            g_norm = _norm(grads[key])
            ratio = _norm(updates[key]) / w_norm if w_norm > 0 else None
        health.layers.append(
            LayerHealth(
                name=layer.name,
                type=layer.kind if layer.kind != "pool" else f"pool/{layer.type}",
                activation=act,
                weight_norm=w_norm,
                grad_norm=g_norm,
                update_ratio=ratio,
                **stats,
            )
        )
    health.warnings = diagnose(health, net.params)
    return health


def _updates(params: dict, grads: dict, optimizer, lr: float, weight_decay: float) -> dict:
    """The change one optimizer step would make to each tensor (a copy is stepped)."""
    if optimizer is None:  # plain SGD; weight decay on weights only, as the optimizers do
        return {k: lr * (grads[k] + (weight_decay * params[k] if k.endswith(".weight") else 0))
                for k in params}
    from cnncli.engine.optim import make_optimizer

    opt = make_optimizer(optimizer, weight_decay)
    stepped = {k: np.array(v, copy=True) for k, v in params.items()}
    opt.step(stepped, grads, lr)
    return {k: stepped[k] - params[k] for k in params}


def diagnose(health: Health, params: dict | None = None) -> list[str]:
    """Plain-language warnings for layers that look unhealthy."""
    out: list[str] = []
    n = health.samples
    for h in health.layers:
        what = "feature maps" if h.type != "fc" else "units"
        if h.dead_fraction is not None and h.dead_fraction > DEAD_WARN:
            out.append(
                f"{h.name}: {h.dead_fraction:.0%} of its {h.units} {what} never activate on "
                f"{n} samples (dead ReLUs); a lower learning rate, a positive bias or "
                "leaky_relu can help"
            )
        if h.saturated_fraction is not None and h.saturated_fraction > SATURATED_WARN:
            out.append(
                f"{h.name}: {h.saturated_fraction:.0%} of its {h.activation} outputs are "
                "saturated, where the gradient nearly vanishes"
            )
        if h.grad_norm is not None and h.grad_norm == 0.0:
            out.append(f"{h.name}: its weights receive no gradient at all")
        elif h.update_ratio is not None and not (RATIO_LOW <= h.update_ratio <= RATIO_HIGH):
            side = "small" if h.update_ratio < RATIO_LOW else "large"
            out.append(
                f"{h.name}: update/weight ratio {h.update_ratio:.1e} is far too {side} "
                f"(about {RATIO_TARGET:.0e} is healthy) at lr {health.lr:g}"
            )
        for value in (h.mean, h.std):
            if not np.isfinite(value):
                out.append(f"{h.name}: non-finite activations")
                break
    weighted = [h for h in health.layers if h.grad_norm and h.weight_norm]
    squashing = [h for h in health.layers if h.activation in SATURATING]
    if squashing and len(weighted) >= 2:
        first, last = weighted[0], weighted[-1]
        rel = (first.grad_norm / first.weight_norm) / (last.grad_norm / last.weight_norm)
        if rel < VANISHING:
            kinds = "/".join(sorted({h.activation for h in squashing}))
            names = ", ".join(h.name for h in squashing)
            out.append(
                f"vanishing gradients: the relative gradient |grad|/|w| of {first.name} is "
                f"{rel:.1e} times that of {last.name}, through the {kinds} layers {names}"
            )
    return out
