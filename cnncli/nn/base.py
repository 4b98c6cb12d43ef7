"""What every layer shares: the workspace that holds its buffers and the layer protocol."""

from __future__ import annotations

import numpy as np

from cnncli.nn.activations import Identity, make_activation
from cnncli.spec.model import param_shapes


class Workspace:
    """Per-layer scratch arrays, reused from step to step.

    ``get(key, shape, dtype)`` returns the buffer stored under ``key`` when its shape and dtype
    still fit and allocates a new one otherwise (a new batch size), so a training loop allocates
    once. ``zero=True`` fills a new buffer with zeros (padding borders that are never written).
    Attributes set on a workspace hold what backward needs from forward.
    """

    # gradcheck sets this to the layer's patterns() to evaluate with the branches held fixed
    freeze: list | None = None

    def __init__(self, shared: Workspace | None = None) -> None:
        self._bufs: dict[str, np.ndarray] = {}
        # scratch that every layer of one chunk may use in turn (never kept across layers)
        self.shared = shared if shared is not None else self

    def get(self, key: str, shape: tuple[int, ...], dtype, zero: bool = False) -> np.ndarray:
        a = self._bufs.get(key)
        if a is None or a.shape != tuple(shape) or a.dtype != dtype:
            a = np.zeros(shape, dtype=dtype) if zero else np.empty(shape, dtype=dtype)
            self._bufs[key] = a
        return a

    def scratch(self, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A temporary of ``shape`` carved from one flat buffer that only ever grows."""
        size = 1
        for d in shape:
            size *= d
        a = self._bufs.get(key)
        if a is None or a.size < size or a.dtype != dtype:
            a = np.empty(size, dtype=dtype)
            self._bufs[key] = a
        return a[:size].reshape(shape)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._bufs.values())

    def clear(self) -> None:
        self._bufs.clear()
        for k in [k for k in vars(self) if k not in ("_bufs", "shared")]:
            delattr(self, k)


class Layer:
    """A layer built from its canonical spec (``cnncli.spec.model.Conv``/``Pool``/``FC``).

    Inputs and outputs are NHWC maps ``(N, H, W, C)`` or vectors ``(N, units)``. Parameters live
    in the network's dict under their checkpoint names (PyTorch layouts); a layer reads them
    from the ``params`` argument and writes gradients into ``grads`` (overwriting).
    """

    kind = "layer"

    def __init__(self, spec, dtype) -> None:
        self.spec = spec
        self.name = spec.name
        self.dtype = np.dtype(dtype)
        self.in_shape = tuple(spec.in_shape)
        self.out_shape = tuple(spec.out_shape)
        self.act: Identity = make_activation(spec.activation, self.out_shape[0], spec.name)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return param_shapes(self.spec)

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {}

    def prepare(self, params) -> None:
        """Called once per forward pass before any chunk runs (e.g. weight layout changes)."""

    def forward(self, x, ws: Workspace, params, train: bool, nchw: bool = False):
        raise NotImplementedError

    def backward(self, dy, ws: Workspace, params, grads, need_dx: bool):
        raise NotImplementedError

    def patterns(self, ws: Workspace) -> list[np.ndarray]:
        """Discrete choices of the last forward (ReLU branches, max positions): gradcheck
        compares them to notice a finite-difference step that crossed a kink."""
        p = self.act.pattern(ws)
        return [] if p is None else [p]

    def penalty(self, params) -> tuple[float, dict[str, np.ndarray]] | None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}: {self.in_shape} -> {self.out_shape})"
