"""Export a network to ONNX (opset 17) with the ``onnx`` package's helper API.

The graph computes what ``Network.forward(x, train=False)`` computes: normalised input
(N, C, H, W) in, logits (N, outputs) out. Layer by layer:

- conv: ``Conv`` with the resolved padding (``same`` pads the extra row/column at the bottom
  and right, which ONNX's explicit pads express exactly); a learned combination (Bouvrie 2006,
  section 3.3) is a depthwise ``Conv`` (group = input maps, one kernel each) followed by a
  1x1 ``Conv`` whose weights alpha = softmax(c) are computed here, at export time.
- pool: ``MaxPool`` / ``AveragePool``; ``subsample`` (Bouvrie's beta * sum + b) is
  ``AveragePool`` times kh*kw*beta plus b (``Mul``, ``Add``), then its activation.
- fc: ``Flatten`` (C, H, W order) before the first one, then ``Gemm`` with transB.
- activations: ``Relu``, ``LeakyRelu``, ``PRelu``, ``Sigmoid``, ``Tanh``; maxout is a
  ``Reshape`` to (N, outputs, pieces, ...) and ``ReduceMax`` over the pieces.
- dropout is the identity at inference and is left out.

The normalisation and class names go in ``metadata_props`` as JSON strings.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from cnncli.errors import CnncliError, UsageError

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def require_onnx():
    """Import the onnx package or explain how to install it (exit 2)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError(
            "exporting to ONNX needs the onnx package, which is not installed",
            hint="pip install 'cnncli[onnx]'",
        ) from None
    return onnx


class _Graph:
    """Accumulates nodes and initialisers with unique names."""

    def __init__(self, helper, numpy_helper) -> None:
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, name: str, value: np.ndarray, dtype=np.float32) -> str:
        arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.inits.append(self.numpy_helper.from_array(arr, name=name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.name(base)
        self.nodes.append(
            self.helper.make_node(op_type, inputs, [out], name=out, **attrs)
        )
        return out


def _activation(g: _Graph, x: str, act, layer_name: str, params: dict,
                out_hw: tuple[int, int] | None, units: int) -> str:
    """Apply ``act`` to x: (N, maps, H, W) when ``out_hw`` is (H, W), else (N, maps)."""
    t = act.type
    if t == "none":
        return x
    if t == "relu":
        return g.op("Relu", [x], f"{layer_name}_relu")
    if t == "leaky_relu":
        return g.op("LeakyRelu", [x], f"{layer_name}_lrelu", alpha=float(act.alpha))
    if t == "sigmoid":
        return g.op("Sigmoid", [x], f"{layer_name}_sigmoid")
    if t == "tanh":
        return g.op("Tanh", [x], f"{layer_name}_tanh")
    if t == "prelu":
        slope = np.asarray(params[f"{layer_name}.slope"])
        if out_hw is not None:
            slope = slope.reshape(-1, 1, 1)
        s = g.const(f"{layer_name}.slope", slope)
        return g.op("PRelu", [x, s], f"{layer_name}_prelu")
    if t == "maxout":
        # output j = max of maps j*pieces ... j*pieces + pieces - 1
        dims = [-1, units, int(act.pieces), *(out_hw or ())]
        shape = g.const(g.name(f"{layer_name}_maxout_shape"), np.array(dims), np.int64)
        r = g.op("Reshape", [x, shape], f"{layer_name}_maxout_reshape")
        return g.op("ReduceMax", [r], f"{layer_name}_maxout", axes=[2], keepdims=0)
    raise CnncliError(f"cannot export activation '{t}' of layer {layer_name}")


def _onnx_pads(padding: tuple[int, int, int, int]) -> list[int]:
    top, bottom, left, right = (int(p) for p in padding)
    return [top, left, bottom, right]


def build_model(spec, params: dict, *, metadata: dict | None = None, name: str | None = None):
    """The ``onnx.ModelProto`` computing ``spec`` with ``params`` (float32)."""
    onnx = require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    from cnncli.spec.model import FC, Conv, Pool

    g = _Graph(helper, numpy_helper)
    p = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    x = INPUT_NAME
    for layer in spec.layers:
        ln = layer.name
        if isinstance(layer, Conv):
            common = {
                "kernel_shape": [int(d) for d in layer.size],
                "strides": [int(d) for d in layer.stride],
                "pads": _onnx_pads(layer.padding),
            }
            w = g.const(f"{ln}.weight", p[f"{ln}.weight"])
            b = g.const(f"{ln}.bias", p[f"{ln}.bias"])
            if layer.combine == "learned":
                cin = int(layer.in_shape[0])
                d = g.op("Conv", [x, w], f"{ln}_depthwise", group=cin, **common)
                c = p[f"{ln}.combine"].astype(np.float64)  # (maps, in): one softmax per row
                e = np.exp(c - c.max(axis=1, keepdims=True))
                alpha = e / e.sum(axis=1, keepdims=True)
                a = g.const(f"{ln}.alpha", alpha.reshape(alpha.shape[0], cin, 1, 1))
                x = g.op("Conv", [d, a, b], f"{ln}_combine", kernel_shape=[1, 1])
            else:
                x = g.op("Conv", [x, w, b], f"{ln}_conv", **common)
            hw = (int(layer.out_shape[1]), int(layer.out_shape[2]))
            x = _activation(g, x, layer.activation, ln, p, hw, layer.filters)
        elif isinstance(layer, Pool):
            attrs = {
                "kernel_shape": [int(d) for d in layer.size],
                "strides": [int(d) for d in layer.stride],
            }
            if layer.type == "max":
                x = g.op("MaxPool", [x], f"{ln}_max", **attrs)
            else:
                x = g.op("AveragePool", [x], f"{ln}_avg", **attrs)
            if layer.type == "subsample":
                kh, kw = layer.size
                scale = p[f"{ln}.beta"] * float(kh * kw)
                s = g.const(f"{ln}.scale", scale.reshape(-1, 1, 1))
                b = g.const(f"{ln}.bias", p[f"{ln}.bias"].reshape(-1, 1, 1))
                x = g.op("Mul", [x, s], f"{ln}_beta")
                x = g.op("Add", [x, b], f"{ln}_bias")
                hw = (int(layer.out_shape[1]), int(layer.out_shape[2]))
                x = _activation(g, x, layer.activation, ln, p, hw, int(layer.out_shape[0]))
        elif isinstance(layer, FC):
            if len(layer.in_shape) != 1:
                x = g.op("Flatten", [x], f"{ln}_flatten", axis=1)
            w = g.const(f"{ln}.weight", p[f"{ln}.weight"])
            b = g.const(f"{ln}.bias", p[f"{ln}.bias"])
            x = g.op("Gemm", [x, w, b], f"{ln}_gemm", transB=1)
            x = _activation(g, x, layer.activation, ln, p, None, layer.units)
        else:  # pragma: no cover - the spec only holds these three kinds
            raise CnncliError(f"cannot export layer {ln} of kind {layer.kind}")
    g.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name="output"))

    c, h, w_ = (int(d) for d in spec.input)
    graph = helper.make_graph(
        g.nodes,
        name or spec.name or "cnncli",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", c, h, w_])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", spec.outputs])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cnncli",
        doc_string="cnncli network: normalised input (N, C, H, W) in, logits out. "
        "Metadata: cnncli.normalization, cnncli.classes.",
    )
    model.ir_version = min(model.ir_version, 8)  # opset 17 pairs with IR 8; older runtimes load it
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    return model


def export_onnx(net, meta: dict, path: str | os.PathLike) -> dict:
    """Write ``net`` (with the checkpoint metadata ``meta``) to ``path`` as ONNX, atomically.

    Returns a short description: path, bytes, opset, nodes, inputs and outputs.
    """
    from cnncli.io.atomic import atomic_write_bytes

    cfg = meta.get("config_obj")
    spec = cfg.model if cfg is not None else net.spec
    metadata = {
        "cnncli.normalization": meta.get("normalization"),
        "cnncli.classes": meta.get("classes"),
        "cnncli.input_shape": list(spec.input),
        "cnncli.input": "normalised images (N, C, H, W): apply cnncli.normalization first",
    }
    framing = (meta.get("config") or {}).get("data", {}).get("framing")
    if framing:
        metadata["cnncli.framing"] = framing
    model = build_model(spec, net.params, metadata=metadata)
    data = model.SerializeToString()
    atomic_write_bytes(path, data)
    return {
        "path": str(path),
        "bytes": len(data),
        "opset": OPSET,
        "nodes": len(model.graph.node),
        "input": [INPUT_NAME, ["N", *spec.input]],
        "output": [OUTPUT_NAME, ["N", spec.outputs]],
    }
