"""Analytic gradients against centred finite differences, in float64.

    report = check(spec_or_net, batch=2, threshold=1e-6, seed=0)
    report.passed, report.max_rel_error, report.worst

The loss is L = sum(logits * R) + the sparsity penalty, with a fixed random R, on a random
batch; dropout is off. For every parameter tensor and for the input, the relative error of an
entry is |a - n| / max(|a| + |n|, 1e-12) (a analytic, n numeric), and a tensor's error is the
largest over the entries checked: all of them for tensors of at most ``max_entries`` entries,
otherwise a random sample of ``max_entries`` plus one directional derivative along a random
unit vector (as Chainer's ``gradient_check`` does). A perturbed parameter only re-runs the
layers from its own on, so the large FC tensors of AlexNet cost little.

ReLU-family units, maxout and max pooling are not differentiable at their kinks. Every
finite-difference evaluation compares the branches taken (ReLU signs, arg-max positions) with
those of the unperturbed network; when a step crossed a kink, the entry is evaluated again
with every branch held at its unperturbed choice (the smooth piece the point lies in, whose
derivative is the one being checked). A random input sits at a kink with probability zero, so
the step can be large enough (1e-3) for float64 rounding to stay far below the threshold.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnncli.spec.model import FC, NetSpec

EPS = 1e-3
DEFAULT_MAX_ENTRIES = 48
LARGE_FLOPS = 200e6
LARGE_ENTRIES = 12
FROZEN_AFTER = 3


@dataclass
class TensorCheck:
    """The check of one tensor: its worst relative error and where it was found."""

    tensor: str
    shape: tuple[int, ...]
    entries: int                    # entries compared one by one
    rel_error: float
    index: tuple[int, ...] | str | None   # worst entry, "direction", or None if nothing checked
    directional: bool = False       # a directional derivative was also compared
    kinks: int = 0                  # entries whose step crossed a kink (checked frozen)
    total: int = 0                  # entries in the tensor

    def __iter__(self):             # unpacks as (tensor, rel_error, index)
        return iter((self.tensor, self.rel_error, self.index))

    def where(self) -> str:
        if isinstance(self.index, tuple):
            return f"{self.tensor}[{', '.join(map(str, self.index))}]"
        if self.index == "direction":
            return f"{self.tensor} (random direction)"
        return self.tensor

    def to_json(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "rel_error": json_number(self.rel_error),
            "shape": list(self.shape),
            "entries_checked": self.entries,
            "directional": self.directional,
            "kinks": self.kinks,
            "worst_index": list(self.index) if isinstance(self.index, tuple) else self.index,
        }


@dataclass
class GradcheckReport:
    name: str
    passed: bool
    threshold: float
    max_rel_error: float
    checks: list[TensorCheck] = field(default_factory=list)
    batch: int = 2
    eps: float = EPS
    seconds: float = 0.0

    @property
    def worst(self) -> TensorCheck | None:
        return max(self.checks, key=lambda c: c.rel_error, default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "threshold": self.threshold,
            "max_rel_error": json_number(self.max_rel_error),
            "batch": self.batch,
            "eps": self.eps,
            "seconds": round(self.seconds, 3),
            "checks": [c.to_json() for c in self.checks],
        }


def json_number(x: float) -> float | None:
    """JSON has no infinity: a non-finite error (a NaN or infinite gradient) becomes null."""
    return x if math.isfinite(x) else None


def rel_error(a: float, n: float) -> float:
    """|a - n| / max(|a| + |n|, 1e-12); infinite when either is not a finite number."""
    if not (math.isfinite(a) and math.isfinite(n)):
        return math.inf
    return abs(a - n) / max(abs(a) + abs(n), 1e-12)


def without_dropout(spec: NetSpec) -> NetSpec:
    layers = tuple(dataclasses.replace(layer, dropout=0.0)
                   if isinstance(layer, FC) and layer.dropout else layer
                   for layer in spec.layers)
    return dataclasses.replace(spec, layers=layers)


class _Problem:
    """The network, batch and random loss being checked, with kink handling."""

    def __init__(self, net, x, r):
        self.net, self.x, self.r = net, x, r
        self.base_loss = self.loss(net.forward(x, train=True))
        self.base_patterns = self.patterns(0)
        # Piecewise-linear networks are affine in any one tensor once the branches are fixed,
        # so a centred difference is exact there; smooth nonlinearities (sigmoid, tanh, the
        # softmax of a learned combination) get Richardson's extrapolation on top.
        self.smooth = any(
            layer.spec.activation.type in ("sigmoid", "tanh")
            or getattr(layer.spec, "combine", "full") == "learned"
            for layer in net.layers
        )
        self.prepare_layer: int | None = None    # the layer whose parameters are perturbed
        # at the unperturbed point the frozen network is the network itself
        frozen, _ = self.evaluate(0, frozen=True)
        if not math.isclose(frozen, self.base_loss, rel_tol=1e-12, abs_tol=1e-12):
            raise RuntimeError(f"gradcheck: the forward pass with frozen branches gives "
                               f"{frozen!r}, not {self.base_loss!r}")

    def loss(self, logits) -> float:
        value = float(np.sum(logits * self.r))
        pen, _ = self.net.penalty()
        return value + pen

    def patterns(self, start: int) -> list[list[np.ndarray]]:
        wss = self.net._ws[0]
        out = []
        for i, layer in enumerate(self.net.layers):
            pats = layer.patterns(wss[i]) if i >= start else []
            out.append([p.copy() for p in pats])
        return out

    def evaluate(self, start: int, frozen: bool) -> tuple[float, bool]:
        """Loss after re-running layers start.., and whether a kink was crossed.

        ``frozen`` holds every ReLU branch and max position at its unperturbed choice: the
        network is then the smooth piece that contains the unperturbed point, whose derivative
        there is the derivative being checked.
        """
        wss = self.net._ws[0]
        if frozen:
            for i in range(start, len(wss)):
                wss[i].freeze = self.base_patterns[i] or None
        try:
            logits = self.net._forward_from(start, prepare=self.prepare_layer)
        finally:
            if frozen:
                for i in range(start, len(wss)):
                    wss[i].freeze = None
        if frozen:
            return self.loss(logits), False
        pats = self.patterns(start)
        crossed = any(
            not np.array_equal(p, b)
            for i in range(start, len(pats))
            for p, b in zip(pats[i], self.base_patterns[i], strict=True)
        )
        return self.loss(logits), crossed

    def derivative(self, arr: np.ndarray, direction: np.ndarray | int, start: int,
                   eps: float, frozen: bool = False) -> tuple[float, bool]:
        """Numeric derivative of the loss along ``direction`` (a flat index or a unit array),
        and whether it had to be taken with the branches frozen."""
        flat = arr.reshape(-1)
        if isinstance(direction, np.ndarray):
            saved = arr.copy()

            def put(t: float) -> None:
                np.multiply(direction, t, out=arr)
                np.add(arr, saved, out=arr)

            def restore() -> None:
                np.copyto(arr, saved)
        else:
            saved_value = flat[direction]

            def put(t: float) -> None:
                flat[direction] = saved_value + t

            def restore() -> None:
                flat[direction] = saved_value

        def central(step: float, frozen: bool) -> tuple[float, bool]:
            values = []
            crossed = False
            for t in (step, -step):
                put(t)
                value, kink = self.evaluate(start, frozen)
                values.append(value)
                crossed = crossed or kink
            restore()
            return (values[0] - values[1]) / (2 * step), crossed

        def estimate(frozen: bool) -> tuple[float, bool]:
            d1, k1 = central(eps, frozen)
            if not self.smooth or k1:
                return d1, k1
            d2, k2 = central(eps / 2, frozen)
            return (4 * d2 - d1) / 3, k2

        try:
            if not frozen:
                value, crossed = estimate(frozen=False)
                if not crossed:
                    return value, False
            value, _ = estimate(frozen=True)
            return value, True
        finally:
            restore()


def check(spec_or_net: Any, batch: int = 2, threshold: float = 1e-6, seed: int = 0,
          max_entries: int | None = None, eps: float = EPS) -> GradcheckReport:
    """Compare analytic and numeric gradients for every parameter tensor and the input.

    ``spec_or_net``: a Network (its parameters are checked), a NetSpec, a Config, or anything
    ``cnncli.spec.load_config`` accepts. ``max_entries``: tensors up to this size are checked
    entry by entry, larger ones on this many random entries plus a random direction; by
    default 48, or 12 for networks above 200 MFLOP per image (AlexNet), whose every
    evaluation costs a tenth of a second.
    """
    from cnncli.engine.network import Network

    t0 = time.perf_counter()
    if isinstance(spec_or_net, Network):
        spec = without_dropout(spec_or_net.spec)
        net = Network(spec, dtype="float64", seed=seed, _init=False)
        net.set_params(spec_or_net.params)
    else:
        spec = without_dropout(build_spec(spec_or_net))
        net = Network(spec, dtype="float64", seed=seed)
    if max_entries is None:
        max_entries = DEFAULT_MAX_ENTRIES if forward_flops(spec) <= LARGE_FLOPS else LARGE_ENTRIES
    rng = np.random.default_rng([seed, 7])
    x = rng.standard_normal((batch,) + tuple(spec.input))
    r = rng.standard_normal((batch, spec.outputs))

    prob = _Problem(net, x, r)
    dx = net.backward(r, input_grad=True)
    _, pgrads = net.penalty()
    analytic = {k: g.copy() for k, g in net.grads.items()}
    for k, g in pgrads.items():
        analytic[k] += g
    # re-run the base forward so every layer's cached state is the unperturbed one again
    net.forward(x, train=True)

    start_of = {}
    for i, layer in enumerate(net.layers):
        for k in layer.param_shapes():
            start_of[k] = i
    targets = [(k, net.params[k], analytic[k], start_of[k]) for k in net.params]
    targets.append(("input", x, dx, 0))

    checks = []
    for name, arr, grad, start in targets:
        checks.append(_check_tensor(prob, name, arr, grad, start, rng, max_entries, eps))
        net._forward_from(start)    # layers start.. hold the last perturbed state: refresh them
    worst = max((c.rel_error for c in checks), default=0.0)
    return GradcheckReport(
        name=spec.name, passed=bool(worst <= threshold), threshold=threshold,
        max_rel_error=worst, checks=checks, batch=batch, eps=eps,
        seconds=time.perf_counter() - t0,
    )


def _check_tensor(prob, name, arr, grad, start, rng, max_entries, eps) -> TensorCheck:
    size = arr.size
    if size <= max_entries:
        entries = np.arange(size)
        directional = False
    else:
        entries = np.sort(rng.choice(size, size=max_entries, replace=False))
        directional = True
    worst, where, kinks = 0.0, None, 0
    prob.prepare_layer = -1 if name == "input" else start
    gflat = grad.reshape(-1)
    for e in entries:
        # After a few steps that crossed kinks, go straight to the frozen evaluation: in a large
        # network nearly every step of an early layer crosses one, and this halves the cost.
        n, frozen = prob.derivative(arr, int(e), start, eps, frozen=kinks >= FROZEN_AFTER)
        kinks += frozen
        err = rel_error(float(gflat[e]), n)
        if where is None or err > worst:
            worst, where = err, tuple(int(i) for i in np.unravel_index(int(e), arr.shape))
    if directional:
        v = rng.standard_normal(arr.shape)
        v /= math.sqrt(float(np.sum(v * v)))
        n, frozen = prob.derivative(arr, v, start, eps, frozen=kinks >= FROZEN_AFTER)
        kinks += frozen
        err = rel_error(float(np.sum(grad * v)), n)
        if where is None or err > worst:
            worst, where = err, "direction"
    return TensorCheck(tensor=name, shape=tuple(arr.shape), entries=len(entries),
                       rel_error=float(worst), index=where, directional=directional,
                       kinks=kinks, total=size)


def build_spec(obj: Any) -> NetSpec:
    from cnncli.spec.model import Config

    if isinstance(obj, NetSpec):
        return obj
    if isinstance(obj, Config):
        return obj.model
    from cnncli.spec import load_config

    return load_config(obj).model


def forward_flops(spec: NetSpec) -> float:
    """Multiply-adds x 2 of the conv and FC layers, one image (enough to size the check)."""
    total = 0.0
    for layer in spec.layers:
        if layer.kind == "conv":
            c = layer.in_shape[0]
            kh, kw = layer.size
            _, ho, wo = layer.out_shape
            per_map = kh * kw * (1 if layer.combine == "learned" else c)
            total += 2.0 * per_map * layer.maps * ho * wo
        elif layer.kind == "fc":
            total += 2.0 * layer.in_features * layer.units * layer.activation.multiplier
    return total
