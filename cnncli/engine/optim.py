"""Optimizers: SGD (momentum, Nesterov) and Adam, with the update rules of PyTorch's
``torch.optim.SGD`` and ``torch.optim.Adam`` (weight decay as an L2 term added to the gradient).

    opt = make_optimizer(config.train.optimizer, weight_decay=config.train.weight_decay)
    opt.step(net.params, net.grads, lr)          # updates the parameters in place

Weight decay applies to ``*.weight`` tensors only: never to biases, subsample beta, PReLU slopes
or combination logits. State is keyed by parameter name and saved as
``optim.<param>.<slot>`` (slots ``momentum``; ``m`` and ``v``) plus ``optim.step``, so a
checkpoint restores it bit for bit. A step allocates nothing once the state exists.
"""

from __future__ import annotations

import math

import numpy as np

from cnncli.errors import CheckpointError, SpecError
from cnncli.spec.model import Optimizer as OptimizerSpec

PREFIX = "optim."


def decays(name: str) -> bool:
    """Whether weight decay applies to the tensor called ``name``."""
    return name.endswith(".weight")


class Optimizer:
    """Base class: state by parameter name, a step counter, scratch buffers."""

    type = "base"
    slots: tuple[str, ...] = ()

    def __init__(self, weight_decay: float = 0.0) -> None:
        if not (weight_decay >= 0.0 and math.isfinite(weight_decay)):
            raise SpecError(f"weight_decay must be a finite number >= 0; got {weight_decay}",
                            field="train.weight_decay")
        self.weight_decay = float(weight_decay)
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.step_count = 0
        self._scratch: dict[tuple[str, int], np.ndarray] = {}

    # ---- stepping ---------------------------------------------------------------------------
    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        """One update of every parameter in place, from the gradients of the same names."""
        self.step_count += 1
        for name, p in params.items():
            self._update(name, p, grads[name], float(lr))

    def _update(self, name, p, g, lr) -> None:
        raise NotImplementedError

    def _slot(self, name: str, slot: str, p: np.ndarray) -> np.ndarray:
        st = self.state.setdefault(name, {})
        a = st.get(slot)
        if a is None:
            a = st[slot] = np.zeros_like(p)
        elif a.shape != p.shape:
            raise CheckpointError(f"optimizer state {PREFIX}{name}.{slot} has shape "
                                  f"{list(a.shape)}, but the parameter has {list(p.shape)}")
        return a

    def _tmp(self, k: int, p: np.ndarray) -> np.ndarray:
        """Scratch k shaped like p, carved from a flat buffer that only grows."""
        buf = self._scratch.get((p.dtype.str, k))
        if buf is None or buf.size < p.size:
            buf = self._scratch[(p.dtype.str, k)] = np.empty(p.size, p.dtype)
        return buf[:p.size].reshape(p.shape)

    def _decayed(self, name: str, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        """g + weight_decay * p for weights (in scratch 0), g itself otherwise."""
        if self.weight_decay and decays(name):
            d = self._tmp(0, p)
            np.multiply(p, self.weight_decay, out=d)
            d += g
            return d
        return g

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """``optim.<param>.<slot>`` -> array (copies) and ``optim.step`` -> int64 array (1,)."""
        out = {f"{PREFIX}{name}.{slot}": a.copy()
               for name, st in self.state.items() for slot, a in st.items()}
        out[f"{PREFIX}step"] = np.array([self.step_count], dtype=np.int64)
        return out

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned (keys without the ``optim.`` prefix are ignored,
        so a whole checkpoint's tensors may be passed)."""
        step_key = f"{PREFIX}step"
        if step_key not in d:
            raise CheckpointError(f"optimizer state has no {step_key!r}")
        step = np.asarray(d[step_key])
        if step.size != 1 or not np.issubdtype(step.dtype, np.integer) or int(step.flat[0]) < 0:
            raise CheckpointError(f"{step_key} must hold one integer >= 0")
        state: dict[str, dict[str, np.ndarray]] = {}
        for key, value in d.items():
            if not key.startswith(PREFIX) or key == step_key:
                continue
            name, _, slot = key[len(PREFIX):].rpartition(".")
            if not name or slot not in self.slots:
                raise CheckpointError(f"unexpected optimizer tensor {key!r} for {self.type} "
                                      f"(slots: {', '.join(self.slots) or 'none'})")
            state.setdefault(name, {})[slot] = np.array(value, copy=True)
        self.state = state
        self.step_count = int(step.flat[0])


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as PyTorch computes it:
    d = g + wd * w;  v = mu * v + d;  w -= lr * v   (Nesterov: w -= lr * (d + mu * v))."""

    type = "sgd"
    slots = ("momentum",)

    def __init__(self, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise SpecError(f"momentum must be in [0, 1); got {momentum}",
                            field="train.optimizer.momentum")
        if nesterov and momentum == 0.0:
            raise SpecError("nesterov needs a momentum > 0", field="train.optimizer.nesterov")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, name, p, g, lr):
        d = self._decayed(name, p, g)
        if self.momentum:
            v = self._slot(name, "momentum", p)
            v *= self.momentum
            v += d
            if self.nesterov:
                u = self._tmp(1, p)
                np.multiply(v, self.momentum, out=u)
                u += d
                d = u
            else:
                d = v
        u = self._tmp(1, p)
        np.multiply(d, lr, out=u)
        p -= u


class Adam(Optimizer):
    """Adam (Kingma and Ba 2015), as PyTorch computes it:
    m = b1 m + (1-b1) d;  v = b2 v + (1-b2) d^2;
    w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    type = "adam"
    slots = ("m", "v")

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(weight_decay)
        for field, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise SpecError(f"{field} must be in [0, 1); got {b}",
                                field=f"train.optimizer.{field}")
        if not eps > 0:
            raise SpecError(f"eps must be > 0; got {eps}", field="train.optimizer.eps")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _update(self, name, p, g, lr):
        t = self.step_count
        d = self._decayed(name, p, g)
        m = self._slot(name, "m", p)
        v = self._slot(name, "v", p)
        b1, b2 = self.beta1, self.beta2
        m *= b1
        u = self._tmp(1, p)
        np.multiply(d, 1.0 - b1, out=u)
        m += u
        v *= b2
        np.multiply(d, d, out=u)
        u *= 1.0 - b2
        v += u
        step_size = lr / (1.0 - b1 ** t)
        np.sqrt(v, out=u)
        u /= math.sqrt(1.0 - b2 ** t)
        u += self.eps
        np.divide(m, u, out=u)
        u *= step_size
        p -= u


def make_optimizer(spec: OptimizerSpec, weight_decay: float = 0.0) -> Optimizer:
    """The optimizer a config's ``train.optimizer`` and ``train.weight_decay`` describe."""
    if spec.type == "sgd":
        return SGD(momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=weight_decay)
    if spec.type == "adam":
        return Adam(beta1=spec.beta1, beta2=spec.beta2, eps=spec.eps, weight_decay=weight_decay)
    raise SpecError(f"unknown optimizer {spec.type!r}; expected sgd or adam",
                    field="train.optimizer.type")
