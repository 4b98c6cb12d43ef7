"""The network: layers built from a ``NetSpec``, their parameters and gradients by name.

    net = Network(spec, dtype="float32", seed=0)
    logits = net.forward(x, train=True)          # x: (N, C, H, W)
    dx = net.backward(dlogits)                   # fills net.grads, returns dL/dx (N, C, H, W)

``net.params`` and ``net.grads`` are dicts name -> ndarray with the same keys in network order,
named and laid out as ``cnncli.spec.model.param_shapes`` says (PyTorch layouts). Parameters are
updated in place (an optimizer, ``set_params``), so references to them stay valid; gradients
are overwritten by every ``backward``, never accumulated.

Inside, maps are NHWC and every layer reuses its buffers from step to step. With
``threads=2`` a batch is cut into two halves that run on two Python threads (NumPy and BLAS
release the GIL) with BLAS held to one thread each; the halves and the sum of their gradients
are fixed by the batch alone, so results do not depend on timing.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cnncli.errors import CheckpointError, DataError, SpecError, UsageError
from cnncli.nn.base import Layer, Workspace
from cnncli.nn.registry import make_layer
from cnncli.spec.model import NetSpec

DTYPES = ("float32", "float64")
# inference of a large array runs in pieces of this many images, so memory stays bounded
INFER_PIECE = 256
# below this many images per thread a batch is not split
MIN_CHUNK = 8

_controller = None


def _blas_controller():
    """threadpoolctl's controller (None when threadpoolctl is not installed)."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controller = False
        else:
            _controller = ThreadpoolController()
    return _controller or None


def default_threads() -> int:
    """Python threads a training step may use: the cores this process may run on, at most 2."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


class Network:
    """A feed-forward CNN built from a canonical ``NetSpec``.

    Parameters
    ----------
    spec : NetSpec
        The network, shapes already inferred (``cnncli.spec.load_config(...).model``).
    dtype : "float32" (default) or "float64".
    seed : int or None
        Random seed of the weight initialisation and of the network's own dropout generator
        (``net.rng``); None draws fresh entropy.
    threads : int
        1 runs everything on the calling thread; 2 or more cut each batch into that many
        chunks run concurrently (needs threadpoolctl to keep BLAS single-threaded meanwhile;
        without it, 1 is used).
    """

    def __init__(self, spec: NetSpec, dtype: Any = "float32", seed: int | None = 0,
                 threads: int = 1, *, _init: bool = True) -> None:
        if not isinstance(spec, NetSpec):
            raise UsageError(f"Network needs a NetSpec; got {type(spec).__name__} "
                             "(use cnncli.engine.network.build for configs and paths)")
        if np.dtype(dtype).name not in DTYPES:
            raise UsageError(f"dtype {np.dtype(dtype).name!r} is not supported; expected "
                             "float32 or float64")
        if not spec.layers:
            raise SpecError(f"network {spec.name!r} has no layers")
        self.spec = spec
        self.dtype = np.dtype(dtype)
        self.layers: list[Layer] = [make_layer(layer, self.dtype) for layer in spec.layers]
        self.seed = seed
        self.rng = np.random.default_rng(None if seed is None else [seed, 1])
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self._owner: dict[str, Layer] = {}
        init_rng = np.random.default_rng(seed)
        for layer in self.layers:
            shapes = layer.param_shapes()
            values = layer.init_params(init_rng) if _init else {
                k: np.zeros(s, self.dtype) for k, s in shapes.items()}
            if list(values) != list(shapes) or any(
                    values[k].shape != tuple(s) for k, s in shapes.items()):
                raise AssertionError(f"{layer.name}: parameters {list(values)} do not match "
                                     f"{shapes}")
            for k, s in shapes.items():
                self.params[k] = np.ascontiguousarray(values[k], dtype=self.dtype)
                self.grads[k] = np.zeros(s, self.dtype)
                self._owner[k] = layer
        self._fuse()
        self.threads = max(1, int(threads))
        self.activations: dict[str, np.ndarray] = {}
        self._ws: list[list[Workspace]] = []
        self._chunk_grads: list[dict[str, np.ndarray]] = []
        self._pool = None
        self._ready: tuple[int, list[slice]] | None = None
        self.infer_piece = INFER_PIECE

    # ---- description ------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.spec.input)

    @property
    def outputs(self) -> int:
        return self.spec.outputs

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __repr__(self) -> str:
        return (f"Network({self.spec.name!r}, {len(self.layers)} layers, "
                f"{self.n_params:,} parameters, {self.dtype.name})")

    # ---- parameters -------------------------------------------------------------------------
    def set_params(self, values: dict[str, Any], strict: bool = True) -> None:
        """Copy ``values`` into the parameters in place (cast to the network's dtype).

        Every name must be known and every shape must match; with ``strict`` every parameter
        must be given. Raises CheckpointError otherwise.
        """
        unknown = [k for k in values if k not in self.params]
        if unknown:
            raise CheckpointError(f"unknown tensor {unknown[0]!r} for network "
                                  f"{self.spec.name!r}; expected names like "
                                  f"{', '.join(list(self.params)[:3])}")
        if strict:
            missing = [k for k in self.params if k not in values]
            if missing:
                raise CheckpointError(f"tensor {missing[0]!r} is missing "
                                      f"({len(missing)} of {len(self.params)} missing)")
        for k, v in values.items():
            v = np.asarray(v)
            if v.shape != self.params[k].shape:
                raise CheckpointError(f"tensor {k!r} has shape {list(v.shape)}, expected "
                                      f"{list(self.params[k].shape)}")
        for k, v in values.items():
            np.copyto(self.params[k], np.asarray(v), casting="unsafe")

    def astype(self, dtype: Any) -> Network:
        """A new network with the same spec and parameters in ``dtype``."""
        net = Network(self.spec, dtype=dtype, seed=self.seed, threads=self.threads, _init=False)
        net.set_params(self.params)
        return net

    def penalty(self) -> tuple[float, dict[str, np.ndarray]]:
        """The sparsity penalty of learned combinations and its gradient by tensor name.

        (0.0, {}) when no layer has one. The trainer adds the value to the loss and the
        gradients to ``net.grads``.
        """
        total, grads = 0.0, {}
        for layer in self.layers:
            res = layer.penalty(self.params)
            if res is not None:
                total += res[0]
                grads.update(res[1])
        return total, grads

    # ---- forward / backward -----------------------------------------------------------------
    def forward(self, x: np.ndarray, train: bool = False, rng: np.random.Generator | None = None,
                keep: bool = False) -> np.ndarray:
        """Logits ``(N, outputs)`` for images ``x (N, C, H, W)``.

        ``train`` turns dropout on (uniform draws from ``rng``, default ``net.rng``) and
        prepares ``backward``. ``keep`` stores every layer's output in ``net.activations``
        (NCHW maps or (N, units)), keyed by layer name.
        """
        x = self._check_input(x)
        n = x.shape[0]
        out = np.empty((n, self.outputs), self.dtype)
        if keep:
            self.activations = {layer.name: np.empty((n,) + layer.out_shape, self.dtype)
                                for layer in self.layers}
        self._ready = None
        if n == 0:
            return out
        for layer in self.layers:
            layer.prepare(self.params)
        if train:
            pieces = [slice(0, n)]
            rng = self.rng if rng is None else rng
            draws = self._dropout_draws(n, rng)
        else:
            pieces = [slice(s, min(n, s + self.infer_piece)) for s in range(0, n, self.infer_piece)]
            draws = {}
        for piece in pieces:
            chunks = self._chunks(piece)
            self._ensure_chunks(len(chunks))
            self._run(lambda ci, sl: self._forward_chunk(ci, sl, x, out, train, draws, keep),
                      chunks)
        if train:
            self._ready = (n, chunks)
        return out

    def backward(self, dlogits: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Fill ``net.grads`` with dL/dparams and return dL/dx ``(N, C, H, W)``.

        ``dlogits`` is dL/dlogits for the batch of the last ``forward(..., train=True)``.
        ``input_grad=False`` skips the input gradient (a training step does not need it) and
        returns None.
        """
        if self._ready is None:
            raise UsageError("backward() needs a forward(x, train=True) first, once per backward")
        n, chunks = self._ready
        dl = np.asarray(dlogits)
        if dl.shape != (n, self.outputs):
            raise UsageError(f"dlogits has shape {dl.shape}; expected {(n, self.outputs)} "
                             "(the batch of the last forward)")
        dy = np.array(dl, dtype=self.dtype, order="C", copy=True)
        dx = np.empty((n,) + self.input_shape, self.dtype) if input_grad else None
        self._ready = None
        self._run(lambda ci, sl: self._backward_chunk(ci, sl, dy, dx, input_grad, len(chunks)),
                  chunks)
        if len(chunks) > 1:
            for k, g in self.grads.items():
                np.copyto(g, self._chunk_grads[0][k])
                for cg in self._chunk_grads[1:]:
                    g += cg[k]
        return dx

    # ---- internals --------------------------------------------------------------------------
    def _fuse(self) -> None:
        """ReLU followed by max pooling: max and ReLU commute, so the pool applies the ReLU
        derivative on its four times smaller output and the ReLU's own backward is skipped."""
        from cnncli.nn.activations import ReLU
        from cnncli.nn.pool import MaxPool

        for prev, nxt in zip(self.layers, self.layers[1:], strict=False):
            if isinstance(nxt, MaxPool) and isinstance(prev.act, ReLU):
                prev.act.deferred = True
                nxt.relu_input = True

    def _check_input(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        want = self.input_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise DataError(f"input has shape {tuple(x.shape)}; network {self.spec.name!r} "
                            f"expects (N, {', '.join(map(str, want))})")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise DataError(f"input has dtype {x.dtype}; expected numbers")
        if not np.issubdtype(x.dtype, np.floating) or (
                x.dtype != self.dtype and self.layers[0].kind == "pool"):
            # conv and FC layers cast while copying the input; pooling compares values, so
            # it must see them in the network's own precision
            x = x.astype(self.dtype)
        return x

    def _dropout_draws(self, n: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
        draws = {}
        for i, layer in enumerate(self.layers):
            if getattr(layer, "dropout", 0.0) > 0.0:
                draws[i] = rng.random((n, layer.out_shape[0]), dtype=self.dtype)
        return draws

    def _chunks(self, piece: slice) -> list[slice]:
        n = piece.stop - piece.start
        k = self.threads if _blas_controller() is not None else 1
        k = max(1, min(k, n // MIN_CHUNK))
        bounds = [piece.start + (n * i) // k for i in range(k + 1)]
        return [slice(bounds[i], bounds[i + 1]) for i in range(k)]

    def _ensure_chunks(self, k: int) -> None:
        while len(self._ws) < k:
            shared = Workspace()
            self._ws.append([Workspace(shared) for _ in self.layers])
        if k > 1:
            while len(self._chunk_grads) < k:
                self._chunk_grads.append({name: np.zeros_like(g) for name, g in self.grads.items()})

    def _run(self, fn, chunks: list[slice]) -> None:
        """fn(chunk index, rows) for every chunk: the first on this thread, the others on the
        pool, with BLAS held to one thread meanwhile so that threads do not fight over cores."""
        if len(chunks) == 1:
            fn(0, chunks[0])
            return
        with _blas_controller().limit(limits=1, user_api="blas"):
            self._dispatch(fn, chunks)

    def _dispatch(self, fn, chunks: list[slice]) -> None:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=self.threads,
                                            thread_name_prefix="cnncli-net")
        futures = [self._pool.submit(fn, ci, sl) for ci, sl in enumerate(chunks[1:], start=1)]
        err = None
        try:
            fn(0, chunks[0])
        except BaseException as e:  # noqa: BLE001 - re-raised after the other chunks end
            err = e
        for f in futures:
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001
                err = err or e
        if err is not None:
            raise err

    def _forward_chunk(self, ci, sl, x, out, train, draws, keep) -> None:
        h = x[sl]
        wss = self._ws[ci]
        params = self.params
        for i, layer in enumerate(self.layers):
            ws = wss[i]
            ws.layer_input = h
            if i in draws:
                ws.dropout_u = draws[i][sl]
            h = layer.forward(h, ws, params, train, nchw=(i == 0))
            if keep:
                a = self.activations[layer.name]
                np.copyto(a[sl], h.transpose(0, 3, 1, 2) if h.ndim == 4 else h)
        np.copyto(out[sl], h)

    def _backward_chunk(self, ci, sl, dy, dx, input_grad, nchunks) -> None:
        grads = self.grads if nchunks == 1 else self._chunk_grads[ci]
        h = dy[sl]
        wss = self._ws[ci]
        params = self.params
        for i in range(len(self.layers) - 1, -1, -1):
            need = i > 0 or input_grad
            h = self.layers[i].backward(h, wss[i], params, grads, need)
        if input_grad:
            np.copyto(dx[sl], h)

    def _forward_from(self, start: int, train: bool = True, prepare: int | None = None
                      ) -> np.ndarray:
        """Re-run layers ``start..`` on the input the last forward gave layer ``start``
        (single chunk only; gradcheck uses it to perturb one layer's parameters cheaply).
        ``prepare``: the only layer whose parameters changed since the last forward, if known."""
        wss = self._ws[0]
        for i in range(start, len(self.layers)):
            if prepare is None or i == prepare:
                self.layers[i].prepare(self.params)
        h = wss[start].layer_input
        for i in range(start, len(self.layers)):
            layer = self.layers[i]
            wss[i].layer_input = h
            h = layer.forward(h, wss[i], self.params, train, nchw=(i == 0))
        return np.array(h, dtype=self.dtype)

    def workspace_bytes(self) -> int:
        """Bytes held by the reusable buffers of all layers (for memory reports)."""
        seen = set()
        total = 0
        for chunk in self._ws:
            for ws in chunk:
                for w in (ws, ws.shared):
                    if id(w) not in seen:
                        seen.add(id(w))
                        total += w.nbytes()
        return total

    def release(self) -> None:
        """Drop every buffer (they are made again on the next forward)."""
        for chunk in self._ws:
            for ws in chunk:
                ws.clear()
                ws.shared.clear()
        self._ready = None

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


def build(spec: Any, dtype: Any = "float32", seed: int | None = 0, threads: int = 1) -> Network:
    """A Network from a NetSpec, a Config, or anything ``cnncli.spec.load_config`` accepts
    (a path, a bundled config name, YAML text, a dict)."""
    from cnncli.spec.model import Config

    if isinstance(spec, Network):
        return spec.astype(dtype) if np.dtype(dtype) != spec.dtype else spec
    config = None
    if isinstance(spec, Config):
        config = spec
    elif not isinstance(spec, NetSpec):
        from cnncli.spec import load_config

        config = load_config(spec)
    net = Network(config.model if config else spec, dtype=dtype, seed=seed, threads=threads)
    # the resolved config travels with the network, so cnncli.save() can store it
    net.config_resolved = config.resolved if config else None
    return net
