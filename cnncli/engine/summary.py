"""The layer table of a network, from shapes alone: no arrays, no data.

Per layer: output shape, parameters (the sizes of ``param_shapes``), FLOPs for one
image in the forward pass, float32 activation memory of its output, receptive field
and the rows/columns the floor of the output-size formula leaves unused, plus
``explain`` lines with the arithmetic written out.

Counting rules (DESIGN.md section 8): conv and FC count 2 FLOPs per multiply-add and
1 per bias add; pools, activations and dropout count 1 per output element. Output
size: floor((W - F + 2P)/S) + 1 (CS231n notes, "Convolutional Neural Networks").
Receptive field: r' = r + (F - 1) * j, j' = j * S, from r = j = 1 at the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cnncli.spec.model import FC, Conv, Layer, NetSpec, Pool, param_shapes

BYTES = 4  # float32


@dataclass(frozen=True)
class Row:
    name: str                         # conv1, pool1, fc1 (the checkpoint's names)
    type: str                         # conv | pool | fc
    options: str                      # "6 5x5 /1 pad 2, relu"
    output_shape: tuple[int, ...]
    params: int
    flops: int
    activation_bytes: int             # the layer's output, float32, one image
    receptive_field: tuple[int, int] | None   # (rows, cols) of input pixels; None for FC
    jump: tuple[int, int] | None      # input pixels between neighbouring outputs
    dropped: tuple[int, int] = (0, 0)  # input rows / cols the floor leaves unused
    explain: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "type": self.type, "options": self.options,
            "output_shape": list(self.output_shape), "params": self.params,
            "flops": self.flops, "activation_bytes": self.activation_bytes,
            "receptive_field": list(self.receptive_field) if self.receptive_field else None,
            "jump": list(self.jump) if self.jump else None,
            "dropped": list(self.dropped),
        }


@dataclass(frozen=True)
class Summary:
    name: str
    input: tuple[int, ...]
    rows: tuple[Row, ...]
    total_params: int
    total_flops: int
    total_activation_bytes: int
    notes: tuple[str, ...] = field(default=())

    @property
    def param_bytes(self) -> int:
        return self.total_params * BYTES

    @property
    def input_bytes(self) -> int:
        return math.prod(self.input) * BYTES

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input": list(self.input),
            "layers": [r.to_json() for r in self.rows],
            "total_params": self.total_params,
            "total_flops": self.total_flops,
            "total_activation_bytes": self.total_activation_bytes,
            "param_bytes": self.param_bytes,
            "notes": list(self.notes),
        }


# ---- formatting helpers -----------------------------------------------------------------------


def human_count(n: float) -> str:
    """61706 -> '61.7 K', 62378344 -> '62.4 M'."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    """246824 -> '241 KiB'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{n:.0f} B"


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in s)


def _pair(p: tuple[int, int]) -> str:
    return f"{p[0]}x{p[1]}"


def _stride(s: tuple[int, int]) -> str:
    return str(s[0]) if s[0] == s[1] else f"{s[0]}x{s[1]}"


def _act_count(act_type: str, n: int) -> tuple[int, str]:
    if act_type == "none":
        return 0, ""
    return n, f" + {n:,} ({act_type})"


def _out_formula(n: int, k: int, before: int, after: int, s: int, out: int) -> str:
    pad = f" + {before} + {after}" if before != after else (f" + 2*{before}" if before else "")
    return f"floor(({n} - {k}{pad})/{s}) + 1 = {out}"


def _size_lines(layer: Conv | Pool, pad: tuple[int, int, int, int]) -> list[str]:
    general = "floor((W - F + 2P)/S) + 1" if isinstance(layer, Conv) else "floor((W - F)/S) + 1"
    _, h, w = layer.in_shape
    _, oh, ow = layer.out_shape
    (kh, kw), (sh, sw) = layer.size, layer.stride
    fh = _out_formula(h, kh, pad[0], pad[1], sh, oh)
    fw = _out_formula(w, kw, pad[2], pad[3], sw, ow)
    if fh == fw:
        return [f"output size: {general} = {fh} (rows and columns)"]
    return [f"output rows: {fh}", f"output cols: {fw}"]


def _slope(layer: Layer, n: int) -> tuple[int, str]:
    if layer.activation.type == "prelu":
        return n, f" + {n} (prelu slopes)"
    return 0, ""


# ---- per-layer rows -----------------------------------------------------------------------------


def _conv_row(layer: Conv, rf: tuple[int, int], jump: tuple[int, int]) -> Row:
    cin = layer.in_shape[0]
    f, oh, ow = layer.out_shape
    kh, kw = layer.size
    maps = layer.maps
    area = oh * ow
    act = layer.activation
    maps_txt = f"({layer.filters}*{act.pieces})" if act.type == "maxout" else f"{maps}"
    slope, slope_txt = _slope(layer, layer.filters)
    if layer.combine == "learned":
        params = cin * kh * kw + maps * cin + maps + slope
        p_line = (f"params: {kh}*{kw}*{cin} (one kernel per input map) + {maps_txt}*{cin} "
                  f"(combination) + {maps_txt} (bias){slope_txt} = {params:,}")
        macs = cin * area * kh * kw + maps * cin * area
        mac_txt = (f"2*({cin}*{oh}*{ow}*{kh}*{kw} + {maps_txt}*{cin}*{oh}*{ow})")
    else:
        params = (kh * kw * cin + 1) * maps + slope
        p_line = f"params: ({kh}*{kw}*{cin}+1)*{maps_txt}{slope_txt} = {params:,}"
        macs = maps * area * cin * kh * kw
        mac_txt = f"2*{kh}*{kw}*{cin}*{maps_txt}*{oh}*{ow}"
    a, a_txt = _act_count(act.type, f * area)
    flops = 2 * macs + maps * area + a
    f_line = f"FLOPs: {mac_txt} + {maps * area:,} (bias){a_txt} = {flops:,}"
    lines = _size_lines(layer, layer.padding)
    if layer.dropped != (0, 0):
        lines.append(_drop_text(layer))
    lines += [p_line, f_line]
    opts = [f"{layer.filters} {_pair(layer.size)}"]
    if layer.stride != (1, 1):
        opts.append(f"/{_stride(layer.stride)}")
    if layer.padding_mode in ("same", "full"):
        opts.append(f"pad {layer.padding_mode}")
    elif layer.padding != (0, 0, 0, 0):
        t, b, lft, r = layer.padding
        opts.append(f"pad {t}" if t == b == lft == r else f"pad {t},{b},{lft},{r}")
    text = " ".join(opts) + f", {_act_name(layer)}"
    if layer.combine == "learned":
        text += ", learned combination"
    return Row(layer.name, "conv", text, layer.out_shape, params, flops,
               math.prod(layer.out_shape) * BYTES, rf, jump, layer.dropped, tuple(lines))


def _act_name(layer: Layer) -> str:
    act = layer.activation
    if act.type == "leaky_relu":
        return f"leaky_relu {act.alpha:g}"
    if act.type == "maxout":
        return f"maxout x{act.pieces}"
    return act.type


def _pool_row(layer: Pool, rf: tuple[int, int], jump: tuple[int, int]) -> Row:
    c, oh, ow = layer.out_shape
    n = c * oh * ow
    lines = _size_lines(layer, (0, 0, 0, 0))
    if layer.dropped != (0, 0):
        lines.append(_drop_text(layer))
    if layer.type == "subsample":
        slope, slope_txt = _slope(layer, c)
        params = 2 * c + slope
        lines.append(f"params: 2*{c} (beta and bias per map){slope_txt} = {params:,}")
        a, a_txt = _act_count(layer.activation.type, n)
        flops = 3 * n + a
        lines.append(f"FLOPs: 3*{c}*{oh}*{ow} (window sum, *beta, +bias){a_txt} = {flops:,}")
    else:
        params = 0
        flops = n
        lines.append("params: 0")
        lines.append(f"FLOPs: {c}*{oh}*{ow} (1 per output) = {flops:,}")
    text = f"{layer.type} {_pair(layer.size)}"
    if layer.stride != layer.size:
        text += f" /{_stride(layer.stride)}"
    if layer.type == "subsample" and layer.activation.type != "none":
        text += f", {_act_name(layer)}"
    return Row(layer.name, "pool", text, layer.out_shape, params, flops, n * BYTES, rf, jump,
               layer.dropped, tuple(lines))


def _fc_row(layer: FC) -> Row:
    n_in = layer.in_features
    act = layer.activation
    n = layer.units * act.multiplier
    n_txt = f"({layer.units}*{act.pieces})" if act.type == "maxout" else f"{n}"
    slope, slope_txt = _slope(layer, layer.units)
    params = (n_in + 1) * n + slope
    lines = []
    if len(layer.in_shape) > 1:
        lines.append(f"input: {'*'.join(str(d) for d in layer.in_shape)} = {n_in:,} "
                     "(flattened in C, H, W order)")
    lines.append(f"params: ({n_in}+1)*{n_txt}{slope_txt} = {params:,}")
    a, a_txt = _act_count(act.type, layer.units)
    d = layer.units if layer.dropout > 0 else 0
    d_txt = f" + {d:,} (dropout)" if d else ""
    flops = 2 * n_in * n + n + a + d
    lines.append(f"FLOPs: 2*{n_in}*{n_txt} + {n:,} (bias){a_txt}{d_txt} = {flops:,}")
    text = f"{layer.units}, {_act_name(layer)}"
    if layer.dropout:
        text += f", dropout {layer.dropout:g}"
    return Row(layer.name, "fc", text, layer.out_shape, params, flops, layer.units * BYTES,
               None, None, (0, 0), tuple(lines))


def _drop_text(layer: Conv | Pool) -> str:
    rows, cols = layer.dropped
    parts = []
    if rows:
        parts.append(f"{rows} row{'s' if rows > 1 else ''}")
    if cols:
        parts.append(f"{cols} column{'s' if cols > 1 else ''}")
    _, h, w = layer.in_shape
    padded = ""
    if isinstance(layer, Conv) and layer.padding != (0, 0, 0, 0):
        t, b, lft, r = layer.padding
        padded = f" (padded to {h + t + b}x{w + lft + r})"
    return (f"the floor drops the last {' and '.join(parts)} of the {h}x{w} input{padded}: "
            f"the stride does not step exactly onto the edge")


def summarize(net: NetSpec) -> Summary:
    """The layer table of ``net``; instant even for AlexNet (shapes only)."""
    rows: list[Row] = []
    notes: list[str] = []
    rf, jump = (1, 1), (1, 1)
    for layer in net.layers:
        if isinstance(layer, (Conv, Pool)):
            (kh, kw), (sh, sw) = layer.size, layer.stride
            rf = (rf[0] + (kh - 1) * jump[0], rf[1] + (kw - 1) * jump[1])
            jump = (jump[0] * sh, jump[1] * sw)
            row = _conv_row(layer, rf, jump) if isinstance(layer, Conv) else \
                _pool_row(layer, rf, jump)
            if layer.dropped != (0, 0):
                notes.append(f"{layer.name}: {_drop_text(layer)}")
        else:
            row = _fc_row(layer)
        expected = sum(math.prod(s) for s in param_shapes(layer).values())
        if row.params != expected:  # the arithmetic above must agree with the tensors
            raise AssertionError(f"{layer.name}: {row.params} != {expected}")
        rows.append(row)
    return Summary(
        name=net.name, input=tuple(net.input), rows=tuple(rows),
        total_params=sum(r.params for r in rows), total_flops=sum(r.flops for r in rows),
        total_activation_bytes=sum(r.activation_bytes for r in rows), notes=tuple(notes))
