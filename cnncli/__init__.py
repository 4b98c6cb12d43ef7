"""cnncli: convolutional neural networks on a NumPy engine, from the command line or Python.

    import cnncli
    net = cnncli.build("lenet5", dtype="float32", seed=0)
    logits = net.forward(x, train=False)
    dx = net.backward(dlogits)
    net, meta = cnncli.load("runs/latest/best.safetensors")
    cnncli.save(net, "model.safetensors", meta)

Heavy modules (NumPy, the engine) load on first use, so importing cnncli is cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["build", "load", "save", "losses", "__version__"]


def build(spec: Any, dtype: str = "float32", seed: int | None = 0):
    """Build a network from a config path, a bundled config name, YAML text or a dict."""
    from cnncli.engine.network import build as _build

    return _build(spec, dtype=dtype, seed=seed)


def load(path: Any):
    """Load a checkpoint (file or run folder): returns (network, metadata)."""
    from cnncli.io.checkpoint import load_model

    return load_model(path)


def save(net: Any, path: Any, meta: dict | None = None) -> None:
    """Save a network's weights (and metadata) to a safetensors file, atomically."""
    from cnncli.io.checkpoint import save_model

    save_model(net, path, meta)


def __getattr__(name: str) -> Any:
    if name == "losses":
        import importlib

        return importlib.import_module("cnncli.nn.losses")
    raise AttributeError(f"module 'cnncli' has no attribute {name!r}")
