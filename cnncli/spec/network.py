"""The ``model`` section: compact (pattern) and explicit (blocks) forms -> ``NetSpec``.

The compact form is desugared into the explicit one first (``desugar``), keeping a
map from each generated value back to the option it came from, so both forms go
through the same validation and give the same ``NetSpec``, and errors name what
the user wrote. Shapes are inferred layer by layer as the layers are read.

Output size of a convolution or pool (CS231n notes, "Convolutional Neural
Networks"): ``floor((W - F + P_before + P_after) / S) + 1``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from cnncli.errors import SpecError
from cnncli.spec.model import (
    ACTIVATIONS,
    COMBINES,
    FC,
    INITS,
    POOL_TYPES,
    SPARSITY_PENALTIES,
    Activation,
    Conv,
    Layer,
    NetSpec,
    Pool,
    param_shapes,
)
from cnncli.spec.pattern import PatternError, parse_pattern
from cnncli.spec.values import (
    Ctx,
    as_choice,
    as_float,
    as_int,
    as_list,
    as_pair,
    as_str,
    mapping,
)

MAX_DIM = 2**20

CONV_KEYS = ("filters", "size", "stride", "padding", "activation", "alpha", "pieces", "init",
             "combine", "sparsity", "sparsity_penalty")
POOL_KEYS = ("type", "size", "stride", "activation", "alpha", "pieces")
FC_KEYS = ("units", "activation", "alpha", "pieces", "init", "dropout")
COMPACT_FC_KEYS = FC_KEYS + ("output_activation",)
MODEL_KEYS = ("name", "input", "pattern", "conv", "pool", "fc", "blocks")
PADDING_WORDS = ("valid", "same", "full")
RELU_FAMILY = ("relu", "leaky_relu", "prelu", "maxout")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

L1_WARNING = (
    "sparsity_penalty l1 cannot make the combination sparse: with alpha = softmax(c) each "
    "output map's alphas sum to 1, so lambda * sum |alpha| is constant and its gradient is zero "
    "(Bouvrie 2006, section 3.3); 'entropy' (the default) does make it sparse")


def default_name(stem: str | None) -> str:
    """A valid model name made from a file stem (or 'model')."""
    if not stem:
        return "model"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:64]
    return name if name and NAME_RE.match(name) else "model"


# ---- compact -> explicit ----------------------------------------------------------------------


def is_compact(model: Any) -> bool:
    return isinstance(model, dict) and model.get("pattern") is not None


def desugar(ctx: Ctx, model: dict[str, Any]) -> dict[str, Any]:
    """The compact form as an explicit ``blocks:``/``fc:`` tree (raw, not yet validated)."""
    mp = ("model",)
    m = mapping(ctx, mp, model, MODEL_KEYS, section="model")
    if "blocks" in m:
        raise ctx.error(mp + ("blocks",), "give either a pattern (with conv/pool/fc option maps) "
                        "or blocks (with an fc list), not both", key=True)
    text = m["pattern"]
    if not isinstance(text, str):
        as_str(ctx, mp + ("pattern",), text)
    try:
        pat = parse_pattern(text)
    except PatternError as e:
        loc = ctx.locate(mp + ("pattern",))
        mark = ctx.mark(mp + ("pattern",))
        if loc.get("col") is not None and mark is not None and "\n" not in text:
            loc["col"] += e.offset + (1 if mark.style in ("'", '"') else 0)
        raise SpecError(e.message, hint=e.hint, **loc) from None
    n_layers = pat.n_conv
    n_blocks = len(pat.blocks)
    n_pools = pat.n_pool
    conv_block: list[int] = []          # block index of each conv layer
    for b, blk in enumerate(pat.blocks):
        conv_block += [b] * blk.n_conv

    def options(key: str, keys: tuple[str, ...], count: int, noun: str) -> dict[str, Any]:
        if key not in m:
            if count:
                if key == "pool":
                    return {}
                raise ctx.error(mp, f"missing required key 'model.{key}': the pattern has "
                                f"{count} {noun} layer{'s' if count > 1 else ''}")
            return {}
        if count == 0:
            raise ctx.error(mp + (key,), f"the pattern has no {noun} layer; remove model.{key} "
                            "or add one to the pattern", key=True)
        return mapping(ctx, mp + (key,), m[key], keys, section=key,
                       what=" of options (each a value for all layers or a list)")

    conv_opts = options("conv", CONV_KEYS, n_layers, "CONV")
    pool_opts = options("pool", POOL_KEYS, n_pools, "POOL")
    fc_opts = options("fc", COMPACT_FC_KEYS, pat.fc, "FC")

    def spread(key: str, value: Any, n: int, fits: dict[int, str], index_of) -> list:
        """[(value, source path)] for each of n layers, by the broadcasting rule."""
        src = mp + key
        if not isinstance(value, list):
            return [(value, src)] * n
        if len(value) == 1:
            return [(value[0], src + (0,))] * n
        if len(value) in fits:
            return [(value[index_of(len(value), i)], src + (index_of(len(value), i),))
                    for i in range(n)]
        lengths = sorted({1, *fits})
        told = ", ".join(f"{k} ({fits.get(k, 'one value for all')})" for k in lengths)
        raise ctx.error(src, f"has {len(value)} values; lengths that fit this pattern: {told}")

    blocks: list[dict[str, Any]] = [{"conv": []} for _ in pat.blocks]
    conv_fits = {n_blocks: "one per block", n_layers: "one per conv layer"}

    def conv_index(length: int, i: int) -> int:
        return i if length == n_layers else conv_block[i]

    per_conv: list[dict[str, Any]] = [{} for _ in range(n_layers)]
    for opt, value in conv_opts.items():
        for i, (v, src) in enumerate(spread(("conv", opt), value, n_layers, conv_fits,
                                            conv_index)):
            per_conv[i][opt] = v
            ctx.alias[("model", "blocks", conv_block[i], "conv",
                       i - conv_block.index(conv_block[i]), opt)] = src
    for i, opts in enumerate(per_conv):
        b = conv_block[i]
        j = i - conv_block.index(b)
        blocks[b]["conv"].append(opts)
        ctx.alias[("model", "blocks", b, "conv", j)] = ("model", "conv")
    pool_blocks = [b for b, blk in enumerate(pat.blocks) if blk.has_pool]
    per_pool: list[dict[str, Any]] = [{} for _ in pool_blocks]
    for opt, value in pool_opts.items():
        for p, (v, src) in enumerate(spread(("pool", opt), value, n_pools,
                                            {n_pools: "one per POOL"}, lambda n, i: i)):
            per_pool[p][opt] = v
            ctx.alias[("model", "blocks", pool_blocks[p], "pool", opt)] = src
    for p, b in enumerate(pool_blocks):
        blocks[b]["pool"] = per_pool[p]
        ctx.alias[("model", "blocks", b, "pool")] = ("model", "pool")
    for b in range(n_blocks):
        ctx.alias[("model", "blocks", b)] = ("model", "pattern")
    k = pat.fc
    per_fc: list[dict[str, Any]] = [{} for _ in range(k)]
    for opt, value in fc_opts.items():
        if opt == "output_activation":
            continue
        if opt == "activation" and (not isinstance(value, list) or len(value) == 1):
            # one activation (or a list of one) is for the hidden layers only
            if k == 1 and "output_activation" not in fc_opts:
                ctx.warn(mp + ("fc", opt), "ignored: fc.activation is for the hidden layers and "
                         "this pattern has none; the output layer takes output_activation")
            hidden = spread(("fc", opt), value, k, {}, lambda n, i: i)
            for i in range(k - 1):
                per_fc[i][opt] = hidden[i][0]
                ctx.alias[("model", "fc", i, opt)] = hidden[i][1]
            continue
        for i, (v, src) in enumerate(spread(("fc", opt), value, k, {k: "one per FC layer"},
                                            lambda n, i: i)):
            per_fc[i][opt] = v
            ctx.alias[("model", "fc", i, opt)] = src
    if "output_activation" in fc_opts:
        per_fc[-1]["activation"] = fc_opts["output_activation"]
        ctx.alias[("model", "fc", k - 1, "activation")] = ("model", "fc", "output_activation")
    for i in range(k):
        ctx.alias[("model", "fc", i)] = ("model", "fc")
    ctx.alias[("model", "blocks")] = ("model", "pattern")
    _prune(per_conv, ("alpha",), lambda d: _word(d.get("activation", "relu")) == "leaky_relu")
    _prune(per_conv, ("pieces",), lambda d: _word(d.get("activation", "relu")) == "maxout")
    _prune(per_conv, ("sparsity", "sparsity_penalty"),
           lambda d: _word(d.get("combine", "full")) == "learned")
    _prune(per_fc, ("alpha",), lambda d: _word(d.get("activation")) == "leaky_relu")
    _prune(per_fc, ("pieces",), lambda d: _word(d.get("activation")) == "maxout")
    _prune(per_pool, ("activation", "alpha", "pieces"),
           lambda d: _word(d.get("type", "max")) == "subsample")
    out: dict[str, Any] = {key: m[key] for key in ("name", "input") if key in m}
    out["blocks"] = blocks
    out["fc"] = per_fc
    return out


def _word(v: Any) -> Any:
    return v.strip().lower().replace("-", "_") if isinstance(v, str) else v


def _prune(layers: list[dict[str, Any]], opts: tuple[str, ...], relevant) -> None:
    """Drop broadcast options from the layers they do not concern, as long as some layer uses
    them (if none does, they stay, and reading them warns that they are ignored)."""
    if not any(relevant(d) for d in layers):
        return
    for d in layers:
        if not relevant(d):
            for opt in opts:
                d.pop(opt, None)


# ---- explicit -> NetSpec ----------------------------------------------------------------------


def _activation(ctx: Ctx, path: tuple, opts: dict[str, Any], default: str, where: str,
                allow_maxout: bool = True) -> Activation:
    act = default
    if "activation" in opts:
        act = as_choice(ctx, path + ("activation",), opts["activation"], ACTIVATIONS)
    if act == "maxout" and not allow_maxout:
        raise ctx.error(path + ("activation",), f"maxout is not available for {where}")
    alpha, pieces = Activation.alpha, Activation.pieces
    if "alpha" in opts:
        if act == "leaky_relu":
            alpha = as_float(ctx, path + ("alpha",), opts["alpha"], lo=0.0, hi=1.0, hi_open=True)
        else:
            ctx.warn(path + ("alpha",), f"ignored: alpha is an option of leaky_relu, and this "
                     f"layer's activation is {act}")
    if "pieces" in opts:
        if act == "maxout":
            pieces = as_int(ctx, path + ("pieces",), opts["pieces"], lo=2, hi=16)
        else:
            ctx.warn(path + ("pieces",), f"ignored: pieces is an option of maxout, and this "
                     f"layer's activation is {act}")
    return Activation(act, alpha, pieces)


def _init(ctx: Ctx, path: tuple, opts: dict[str, Any], act: Activation) -> str:
    if "init" in opts:
        return as_choice(ctx, path + ("init",), opts["init"], INITS)
    return "he" if act.type in RELU_FAMILY else "xavier"


def _trace(trace: list[str], tail: str) -> str:
    return "shape trace: " + " -> ".join(trace + [tail])


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in s)


def _padding(ctx: Ctx, path: tuple, v: Any, size: tuple[int, int], stride: tuple[int, int],
             hw: tuple[int, int]) -> tuple[tuple[int, int, int, int], str]:
    (kh, kw), (sh, sw), (h, w) = size, stride, hw
    if isinstance(v, str) and not isinstance(v, bool):
        mode = as_choice(ctx, path, v, PADDING_WORDS)
        if mode == "valid":
            return (0, 0, 0, 0), "valid"
        if mode == "full":
            return (kh - 1, kh - 1, kw - 1, kw - 1), "full"
        pads = []
        for n, k, s in ((h, kh, sh), (w, kw, sw)):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]      # the extra one at bottom/right
        return (pads[0], pads[1], pads[2], pads[3]), "same"
    if isinstance(v, list):
        if len(v) == 2:
            ph = as_int(ctx, path + (0,), v[0], lo=0)
            pw = as_int(ctx, path + (1,), v[1], lo=0)
            pad = (ph, ph, pw, pw)
        elif len(v) == 4:
            t, b, l, r = (as_int(ctx, path + (i,), v[i], lo=0) for i in range(4))
            pad = (t, b, l, r)
        else:
            raise ctx.error(path, f"expected an integer, valid, same, full, [h, w] or "
                            f"[top, bottom, left, right], got a list of {len(v)}")
    elif isinstance(v, int) and not isinstance(v, bool):
        p = as_int(ctx, path, v, lo=0)
        pad = (p, p, p, p)
    else:
        try:
            p = as_int(ctx, path, v, lo=0)
        except SpecError:
            raise ctx.error(path, "expected an integer, valid, same, full, [h, w] or "
                            f"[top, bottom, left, right], got {v!r}") from None
        pad = (p, p, p, p)
    for i, k in ((0, kh), (1, kh), (2, kw), (3, kw)):
        if pad[i] > k - 1:
            raise ctx.error(path, f"padding {pad[i]} is more than the kernel size minus one "
                            f"({k - 1}): some outputs would see only padding ('full' pads "
                            f"{k - 1})")
    return pad, ("valid" if pad == (0, 0, 0, 0) else "explicit")


def _conv(ctx: Ctx, path: tuple, raw: Any, name: str, shape: tuple[int, ...],
          trace: list[str]) -> Conv:
    o = mapping(ctx, path, raw, CONV_KEYS, required=("filters", "size"), section="conv")
    filters = as_int(ctx, path + ("filters",), o["filters"], lo=1, hi=MAX_DIM)
    size = as_pair(ctx, path + ("size",), o["size"], lo=1)
    stride = as_pair(ctx, path + ("stride",), o.get("stride", 1), lo=1)
    c, h, w = shape
    pad, mode = _padding(ctx, path + ("padding",), o.get("padding", "valid"), size, stride, (h, w))
    act = _activation(ctx, path, o, "relu", "conv layers")
    init = _init(ctx, path, o, act)
    combine = as_choice(ctx, path + ("combine",), o.get("combine", "full"), COMBINES)
    sparsity, penalty = 0.0, "entropy"
    if combine == "learned":
        sparsity = as_float(ctx, path + ("sparsity",), o.get("sparsity", 0.0), lo=0.0)
        penalty = as_choice(ctx, path + ("sparsity_penalty",),
                            o.get("sparsity_penalty", "entropy"), SPARSITY_PENALTIES)
        if penalty == "l1":
            ctx.warn(path + ("sparsity_penalty",), L1_WARNING)
    else:
        for opt in ("sparsity", "sparsity_penalty"):
            if opt in o:
                ctx.warn(path + (opt,), f"ignored: {opt} applies to combine: learned")
    hh, ww = h + pad[0] + pad[1], w + pad[2] + pad[3]
    if size[0] > hh or size[1] > ww:
        padded = f" ({hh}x{ww} with padding)" if (hh, ww) != (h, w) else ""
        raise ctx.error(path + ("size",), f"a {size[0]}x{size[1]} kernel does not fit the "
                        f"{h}x{w} input of this layer{padded}\n"
                        + _trace(trace, f"{name} ({size[0]}x{size[1]} kernel on {h}x{w})"))
    out = (filters, (hh - size[0]) // stride[0] + 1, (ww - size[1]) // stride[1] + 1)
    return Conv(name=name, in_shape=shape, out_shape=out, filters=filters, size=size,
                stride=stride, padding=pad, padding_mode=mode, activation=act, init=init,
                combine=combine, sparsity=sparsity, sparsity_penalty=penalty)


def _pool(ctx: Ctx, path: tuple, raw: Any, name: str, shape: tuple[int, ...],
          trace: list[str]) -> Pool:
    o = mapping(ctx, path, raw, POOL_KEYS, section="pool")
    ptype = as_choice(ctx, path + ("type",), o.get("type", "max"), POOL_TYPES)
    size = as_pair(ctx, path + ("size",), o.get("size", 2), lo=1)
    stride = as_pair(ctx, path + ("stride",), o["stride"], lo=1) if "stride" in o else size
    if ptype == "subsample":
        act = _activation(ctx, path, o, "none", "pools", allow_maxout=False)
    else:
        for opt in ("activation", "alpha", "pieces"):
            if opt in o and not (opt == "activation" and o[opt] == "none"):
                ctx.warn(path + (opt,), f"ignored: {opt} applies to subsample pools only "
                         f"(this pool is {ptype})")
        act = Activation("none")
    c, h, w = shape
    if size[0] > h or size[1] > w:
        raise ctx.error(path + ("size",), f"a {size[0]}x{size[1]} pool does not fit the "
                        f"{h}x{w} input of this layer\n"
                        + _trace(trace, f"{name} ({size[0]}x{size[1]} window on {h}x{w})"))
    out = (c, (h - size[0]) // stride[0] + 1, (w - size[1]) // stride[1] + 1)
    return Pool(name=name, in_shape=shape, out_shape=out, type=ptype, size=size, stride=stride,
                activation=act)


def _fc(ctx: Ctx, path: tuple, raw: Any, name: str, shape: tuple[int, ...],
        last: bool) -> FC:
    o = mapping(ctx, path, raw, FC_KEYS, required=("units",), section="fc")
    units = as_int(ctx, path + ("units",), o["units"], lo=1, hi=MAX_DIM)
    act = _activation(ctx, path, o, "none" if last else "relu", "fc layers")
    init = _init(ctx, path, o, act)
    dropout = as_float(ctx, path + ("dropout",), o.get("dropout", 0.0), lo=0.0, hi=1.0,
                       hi_open=True)
    return FC(name=name, in_shape=shape, out_shape=(units,), units=units, activation=act,
              init=init, dropout=dropout)


def _input(ctx: Ctx, path: tuple, v: Any) -> tuple[int, int, int]:
    items = as_list(ctx, path, v, "a list [channels, height, width]")
    if len(items) != 3:
        raise ctx.error(path, f"expected [channels, height, width], got a list of {len(items)}")
    return tuple(as_int(ctx, path + (i,), x, lo=1, hi=MAX_DIM)  # type: ignore[return-value]
                 for i, x in enumerate(items))


def build_net(ctx: Ctx, model: Any, default: str = "model") -> tuple[NetSpec, list[tuple]]:
    """Validate an explicit (or desugared) model tree; returns the NetSpec and, per layer, the
    field path it was read from."""
    mp = ("model",)
    if is_compact(model):
        model = desugar(ctx, model)
    m = mapping(ctx, mp, model, MODEL_KEYS, required=("input",), section="model")
    for key in ("conv", "pool"):
        if key in m:
            raise ctx.error(mp + (key,), f"model.{key} (an option map) goes with a pattern; "
                            "without one, put conv layers in blocks", key=True)
    name = default
    if "name" in m:
        name = as_str(ctx, mp + ("name",), m["name"])
        if not NAME_RE.match(name):
            raise ctx.error(mp + ("name",), f"{name!r} is not a valid name: use up to 64 "
                            "letters, digits, '.', '_' and '-' (it names the run folder)")
    shape: tuple[int, ...] = _input(ctx, mp + ("input",), m["input"])
    trace = [f"input {_shape(shape)}"]
    layers: list[Layer] = []
    paths: list[tuple] = []
    blocks = as_list(ctx, mp + ("blocks",), m.get("blocks", []), "a list of blocks")
    n_conv = n_pool = 0
    for b, blk in enumerate(blocks):
        bp = mp + ("blocks", b)
        bo = mapping(ctx, bp, blk, ("conv", "pool"), required=("conv",))
        convs = bo["conv"]
        if isinstance(convs, dict):
            convs = [convs]
            cpaths = [bp + ("conv",)]
        else:
            convs = as_list(ctx, bp + ("conv",), convs, "a list of conv layers")
            cpaths = [bp + ("conv", j) for j in range(len(convs))]
        if not convs:
            raise ctx.error(bp + ("conv",), "a block needs at least one conv layer")
        for raw, cp in zip(convs, cpaths, strict=True):
            n_conv += 1
            layer = _conv(ctx, cp, raw, f"conv{n_conv}", shape, trace)
            layers.append(layer)
            paths.append(cp)
            shape = layer.out_shape
            trace.append(f"{layer.name} {_shape(shape)}")
        if "pool" in bo:
            n_pool += 1
            layer = _pool(ctx, bp + ("pool",), bo["pool"], f"pool{n_pool}", shape, trace)
            layers.append(layer)
            paths.append(bp + ("pool",))
            shape = layer.out_shape
            trace.append(f"{layer.name} {_shape(shape)}")
    if "fc" not in m:
        raise ctx.error(mp, "missing required key 'model.fc': the network needs at least one "
                        "fc layer (the last is the output layer)")
    if isinstance(m["fc"], dict):
        raise ctx.error(mp + ("fc",), "without a pattern, fc is a list of layers, e.g. "
                        "fc: [{units: 128}, {units: 10}]; an option map goes with a pattern")
    fcs = as_list(ctx, mp + ("fc",), m["fc"], "a list of fc layers")
    if not fcs:
        raise ctx.error(mp + ("fc",), "needs at least one fc layer (the output layer)")
    for i, raw in enumerate(fcs):
        fp = mp + ("fc", i)
        layer = _fc(ctx, fp, raw, f"fc{i + 1}", shape, last=i == len(fcs) - 1)
        layers.append(layer)
        paths.append(fp)
        shape = layer.out_shape
    net = NetSpec(name=name, input=layers[0].in_shape, layers=tuple(layers))
    return net, paths


def count_params(layer: Layer) -> int:
    total = 0
    for shp in param_shapes(layer).values():
        total += math.prod(shp)
    return total


# ---- NetSpec -> explicit tree ---------------------------------------------------------------


def _pair_out(p: tuple[int, int]) -> Any:
    return p[0] if p[0] == p[1] else [p[0], p[1]]


def _act_out(d: dict[str, Any], act: Activation) -> None:
    d["activation"] = act.type
    if act.type == "leaky_relu":
        d["alpha"] = act.alpha
    if act.type == "maxout":
        d["pieces"] = act.pieces


def net_to_tree(net: NetSpec) -> dict[str, Any]:
    """The explicit ``model`` section with every default written out."""
    blocks: list[dict[str, Any]] = []
    fcs: list[dict[str, Any]] = []
    for layer in net.layers:
        if isinstance(layer, Conv):
            if not blocks or "pool" in blocks[-1]:
                blocks.append({"conv": []})
            d: dict[str, Any] = {"filters": layer.filters, "size": _pair_out(layer.size),
                                 "stride": _pair_out(layer.stride)}
            t, b, l, r = layer.padding
            if layer.padding_mode in ("valid", "same", "full"):
                d["padding"] = layer.padding_mode
            elif t == b == l == r:
                d["padding"] = t
            elif t == b and l == r:
                d["padding"] = [t, l]
            else:
                d["padding"] = [t, b, l, r]
            _act_out(d, layer.activation)
            d["init"] = layer.init
            d["combine"] = layer.combine
            if layer.combine == "learned":
                d["sparsity"] = layer.sparsity
                d["sparsity_penalty"] = layer.sparsity_penalty
            blocks[-1]["conv"].append(d)
        elif isinstance(layer, Pool):
            p: dict[str, Any] = {"type": layer.type, "size": _pair_out(layer.size),
                                 "stride": _pair_out(layer.stride)}
            if layer.type == "subsample":
                _act_out(p, layer.activation)
            blocks[-1]["pool"] = p
        else:
            f: dict[str, Any] = {"units": layer.units}
            _act_out(f, layer.activation)
            f["init"] = layer.init
            f["dropout"] = layer.dropout
            fcs.append(f)
    return {"name": net.name, "input": list(net.input), "blocks": blocks, "fc": fcs}
