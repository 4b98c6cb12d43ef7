"""``load_config``: a YAML file, bundled name, YAML text or dict -> a validated ``Config``.

Steps: read and parse strictly (``yamlio``), apply ``--set`` overrides and the
``--seed`` option to the raw tree, desugar the compact model form, validate every
section with defaults filled (``network`` for the model), and write the resolved
tree (explicit form, absolute paths) into ``Config.resolved``.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from cnncli.errors import SpecError
from cnncli.spec import network
from cnncli.spec.model import (
    FRAMINGS,
    LOSSES,
    NORMALIZE,
    OPTIMIZERS,
    SCHEDULES,
    Augment,
    Config,
    DataSpec,
    Optimizer,
    Schedule,
    TrainSpec,
)
from cnncli.spec.values import (
    Ctx,
    as_bool,
    as_choice,
    as_float,
    as_int,
    as_str,
    dotted,
    mapping,
)
from cnncli.spec.yamlio import (
    Doc,
    decode_spec,
    load_mapping,
    parse_yaml,
    read_spec_bytes,
    type_name,
)

TOP_KEYS = ("model", "data", "train")
DATA_KEYS = ("train", "test", "val_split", "normalize", "augment", "framing")
AUGMENT_KEYS = ("rotate", "shift", "scale", "noise")
TRAIN_KEYS = ("epochs", "batch_size", "loss", "optimizer", "schedule", "weight_decay", "seed",
              "early_stopping", "dtype")
OPTIMIZER_KEYS = ("type", "lr", "momentum", "nesterov", "beta1", "beta2", "eps")
SCHEDULE_KEYS = ("type", "step_size", "gamma", "min_lr", "warmup")
DTYPES = ("float32", "float64")
SEED_LIMIT = 2**63
_OPT_ONLY = {"momentum": "sgd", "nesterov": "sgd", "beta1": "adam", "beta2": "adam",
             "eps": "adam"}
_SCHED_ONLY = {"step_size": ("step",), "gamma": ("step",), "min_lr": ("cosine",)}


# ---- sources ---------------------------------------------------------------------------------


def _read_source(source: Any) -> tuple[Any, Ctx, Path, str | None, str | None]:
    """(raw tree, ctx, base folder for relative paths, source file, default model name)."""
    if isinstance(source, Config):
        source = source.resolved
    if isinstance(source, dict):
        return _plain(source, ()), Ctx(), Path.cwd(), None, None
    if isinstance(source, str) and "\n" in source:
        doc = load_mapping(source, "<config>")
        return doc.data, Ctx("<config>", doc.marks, doc.keymarks), Path.cwd(), None, None
    if isinstance(source, (str, os.PathLike)):
        text_path = os.fspath(source)
        if isinstance(text_path, bytes):
            text_path = os.fsdecode(text_path)
        path = Path(text_path)
        if not path.exists() and isinstance(source, str):
            from cnncli.resources import bundled_configs, resolve_config_path

            path = resolve_config_path(text_path)
            if not path.exists():
                names = ", ".join(bundled_configs())
                raise SpecError(f"cannot read spec '{text_path}': no such file",
                                hint=f"bundled configs: {names}" if names else None)
        shown = text_path if path == Path(text_path) else str(path)
        data = read_spec_bytes(path)
        doc: Doc = load_mapping(decode_spec(data, shown), shown)
        base = path.resolve().parent
        return (doc.data, Ctx(shown, doc.marks, doc.keymarks), base, str(path),
                network.default_name(path.stem))
    raise SpecError(f"a config is a file path, a bundled config name, YAML text or a mapping; "
                    f"got {type(source).__name__}")


def _plain(v: Any, path: tuple) -> Any:
    """A deep copy of a Python tree, checked to hold only what YAML could have given."""
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise SpecError(f"keys must be strings, got {type_name(k)} {k!r}",
                                field=dotted(path) or None)
            out[k] = _plain(x, path + (k,))
        return out
    if isinstance(v, (list, tuple)):
        return [_plain(x, path + (i,)) for i, x in enumerate(v)]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    try:  # NumPy scalars and the like
        import numbers

        if isinstance(v, numbers.Integral):
            return int(v)
        if isinstance(v, numbers.Real):
            return float(v)
    except Exception:  # noqa: BLE001
        pass
    raise SpecError(f"unsupported value of type {type(v).__name__}", field=dotted(path) or None)


# ---- --set -------------------------------------------------------------------------------------

_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def parse_key_path(key: str, arg: str) -> tuple:
    """'model.blocks[1].conv[0].size' -> ('model', 'blocks', 1, 'conv', 0, 'size')."""
    out: list[Any] = []
    i, n = 0, len(key)
    if not key:
        raise SpecError("--set needs a key before '='", path=f"--set {arg}")
    while i < n:
        m = _KEY_RE.match(key, i)
        if not m:
            raise SpecError(f"bad key path {key!r} at character {i + 1}: expected a name",
                            path=f"--set {arg}", hint="write key.path=value, e.g. "
                            "train.optimizer.lr=0.01 or model.blocks[0].conv[1].size=3")
        out.append(m.group())
        i = m.end()
        while i < n and key[i] == "[":
            j = key.find("]", i)
            idx = key[i + 1:j] if j > 0 else ""
            if not idx.isdigit() or len(idx) > 6:
                raise SpecError(f"bad list index in {key!r} at character {i + 1}: expected "
                                "[number]", path=f"--set {arg}")
            out.append(int(idx))
            i = j + 1
        if i < n:
            if key[i] != "." or i == n - 1:
                raise SpecError(f"bad key path {key!r} at character {i + 1}",
                                path=f"--set {arg}")
            i += 1
    return tuple(out)


def parse_override(arg: str) -> tuple[tuple, Any, Doc | None]:
    if not isinstance(arg, str) or "=" not in arg:
        raise SpecError(f"--set expects key.path=value, got {arg!r}",
                        hint="e.g. --set train.epochs=2 --set model.input=[1,28,28]")
    key, _, text = arg.partition("=")
    path = parse_key_path(key.strip(), arg)
    if not text.strip():
        return path, None, None
    try:
        doc = parse_yaml(text, f"--set {arg}", prefix=path)
    except SpecError as e:
        raise SpecError(f"cannot read the value {text!r}: {e.message}", path=f"--set {arg}",
                        hint=e.hint) from None
    return path, doc.data, doc


def _apply(ctx: Ctx, tree: dict, path: tuple, value: Any, doc: Doc | None, origin: str) -> None:
    node: Any = tree
    for i, seg in enumerate(path[:-1]):
        here = path[:i + 1]
        nxt = path[i + 1]
        if isinstance(seg, int):
            if not isinstance(node, list):
                raise SpecError(f"{dotted(path[:i])} is not a list (it is a "
                                f"{type_name(node)})", path=origin)
            if seg >= len(node):
                raise SpecError(f"{dotted(here)}: index {seg} is out of range ("
                                f"{dotted(path[:i])} has {len(node)} item"
                                f"{'s' if len(node) != 1 else ''})", path=origin)
            child = node[seg]
        else:
            if not isinstance(node, dict):
                raise SpecError(f"{dotted(path[:i])} is not a mapping (it is a "
                                f"{type_name(node)})", path=origin)
            child = node.get(seg)
            if child is None:
                if isinstance(nxt, int):
                    raise SpecError(f"{dotted(here)} is not a list in this config", path=origin)
                child = node[seg] = {}
        if isinstance(child, (dict, list)):
            node = child
        else:
            raise SpecError(f"{dotted(here)} is a {type_name(child)}, so it has no "
                            f"{'item' if isinstance(nxt, int) else 'key'} "
                            f"{nxt if isinstance(nxt, int) else repr(nxt)}", path=origin)
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list):
            raise SpecError(f"{dotted(path[:-1])} is not a list", path=origin)
        if last >= len(node):
            raise SpecError(f"{dotted(path)}: index {last} is out of range ("
                            f"{dotted(path[:-1])} has {len(node)} items)", path=origin)
        node[last] = value
    else:
        if not isinstance(node, dict):
            raise SpecError(f"{dotted(path[:-1])} is not a mapping", path=origin)
        node[last] = value
    ctx.origins[path] = origin
    if doc is not None:
        ctx.marks.update({k: replace(mk, line=None, col=None) for k, mk in doc.marks.items()})
    for k in [k for k in ctx.alias if k[:len(path)] == path]:
        del ctx.alias[k]


def _defers(path: tuple, raw: dict) -> bool:
    """--set into model.blocks[i] / model.fc[i] of a compact model: apply after desugaring."""
    return (len(path) >= 3 and path[0] == "model" and path[1] in ("blocks", "fc")
            and isinstance(path[2], int) and network.is_compact(raw.get("model")))


# ---- sections ---------------------------------------------------------------------------------


def _data_ref(ctx: Ctx, path: tuple, v: Any, base: Path) -> str | tuple[str, ...]:
    """One dataset reference, or a list of them read as one dataset ([digits, typeset])."""
    if not isinstance(v, list):
        return _data_path(ctx, path, v, base)
    if not v:
        raise ctx.error(path, "expected a dataset or a list of datasets, got an empty list")
    refs = tuple(_data_path(ctx, path + (i,), item, base) for i, item in enumerate(v))
    return refs[0] if len(refs) == 1 else refs


def _data_path(ctx: Ctx, path: tuple, v: Any, base: Path) -> str:
    s = as_str(ctx, path, v).strip()
    if not s:
        raise ctx.error(path, "expected a path or a dataset name, got an empty string")
    folder = Path.cwd() if ctx.origin(path) is not None else base   # --set: the current folder
    if "/" not in s and os.sep not in s and not (folder / s).exists():
        return s   # a named dataset (digits, fashion-mnist), checked when data is read
    return str((folder / Path(s).expanduser()).resolve())


def _data(ctx: Ctx, raw: Any, base: Path) -> DataSpec:
    p = ("data",)
    d = mapping(ctx, p, raw if raw is not None else {}, DATA_KEYS, section="data")
    train = _data_ref(ctx, p + ("train",), d["train"], base) if "train" in d else None
    test = _data_ref(ctx, p + ("test",), d["test"], base) if "test" in d else None
    val = as_float(ctx, p + ("val_split",), d.get("val_split", 0.1), lo=0.0, hi=1.0,
                   hi_open=True)
    normalize = as_choice(ctx, p + ("normalize",), d.get("normalize", "standardize"), NORMALIZE)
    aug = Augment()
    if "augment" in d:
        ap = p + ("augment",)
        a = mapping(ctx, ap, d["augment"], AUGMENT_KEYS)
        aug = Augment(
            rotate=as_float(ctx, ap + ("rotate",), a.get("rotate", 0.0), lo=0.0, hi=180.0),
            shift=as_float(ctx, ap + ("shift",), a.get("shift", 0.0), lo=0.0, hi=1000.0),
            scale=as_float(ctx, ap + ("scale",), a.get("scale", 0.0), lo=0.0, hi=1.0,
                           hi_open=True),
            noise=as_float(ctx, ap + ("noise",), a.get("noise", 0.0), lo=0.0, hi=10.0),
        )
    framing = None
    if "framing" in d:
        framing = as_choice(ctx, p + ("framing",), d["framing"], FRAMINGS)
    return DataSpec(train=train, test=test, val_split=val, normalize=normalize, augment=aug,
                    framing=framing)


def _optimizer(ctx: Ctx, raw: Any) -> Optimizer:
    p = ("train", "optimizer")
    if isinstance(raw, str):
        raw = {"type": raw}
    o = mapping(ctx, p, raw, OPTIMIZER_KEYS, section="optimizer")
    kind = as_choice(ctx, p + ("type",), o.get("type", "sgd"), OPTIMIZERS)
    for key, owner in _OPT_ONLY.items():
        if key in o and owner != kind:
            ctx.warn(p + (key,), f"ignored: {key} is an option of {owner}, and the optimizer "
                     f"is {kind}")
    default_lr = 0.001 if kind == "adam" else Optimizer.lr
    lr = as_float(ctx, p + ("lr",), o.get("lr", default_lr), lo=0.0, lo_open=True)
    if kind == "sgd":
        return Optimizer(
            type=kind, lr=lr,
            momentum=as_float(ctx, p + ("momentum",), o.get("momentum", Optimizer.momentum),
                              lo=0.0, hi=1.0, hi_open=True),
            nesterov=as_bool(ctx, p + ("nesterov",), o.get("nesterov", False)))
    return Optimizer(
        type=kind, lr=lr,
        beta1=as_float(ctx, p + ("beta1",), o.get("beta1", Optimizer.beta1), lo=0.0, hi=1.0,
                       hi_open=True),
        beta2=as_float(ctx, p + ("beta2",), o.get("beta2", Optimizer.beta2), lo=0.0, hi=1.0,
                       hi_open=True),
        eps=as_float(ctx, p + ("eps",), o.get("eps", Optimizer.eps), lo=0.0, hi=1.0,
                     lo_open=True))


def _schedule(ctx: Ctx, raw: Any) -> Schedule:
    p = ("train", "schedule")
    if isinstance(raw, str):
        raw = {"type": raw}
    s = mapping(ctx, p, raw, SCHEDULE_KEYS)
    kind = as_choice(ctx, p + ("type",), s.get("type", "none"), SCHEDULES)
    for key, owners in _SCHED_ONLY.items():
        if key in s and kind not in owners:
            ctx.warn(p + (key,), f"ignored: {key} is an option of the {owners[0]} schedule, "
                     f"and the schedule is {kind}")
    sched = Schedule(type=kind,
                     warmup=as_int(ctx, p + ("warmup",), s.get("warmup", 0), lo=0, hi=10**6))
    if kind == "step":
        sched = replace(
            sched,
            step_size=as_int(ctx, p + ("step_size",), s.get("step_size", Schedule.step_size),
                             lo=1, hi=10**6),
            gamma=as_float(ctx, p + ("gamma",), s.get("gamma", Schedule.gamma), lo=0.0, hi=1.0,
                           lo_open=True))
    elif kind == "cosine":
        sched = replace(sched, min_lr=as_float(ctx, p + ("min_lr",), s.get("min_lr", 0.0),
                                               lo=0.0))
    return sched


def _train(ctx: Ctx, raw: Any) -> TrainSpec:
    p = ("train",)
    t = mapping(ctx, p, raw if raw is not None else {}, TRAIN_KEYS, section="train")
    spec = TrainSpec(
        epochs=as_int(ctx, p + ("epochs",), t.get("epochs", TrainSpec.epochs), lo=1, hi=10**6),
        batch_size=as_int(ctx, p + ("batch_size",), t.get("batch_size", TrainSpec.batch_size),
                          lo=1, hi=2**20),
        loss=as_choice(ctx, p + ("loss",), t.get("loss", TrainSpec.loss), LOSSES),
        optimizer=_optimizer(ctx, t.get("optimizer", {})),
        schedule=_schedule(ctx, t.get("schedule", {})),
        weight_decay=as_float(ctx, p + ("weight_decay",), t.get("weight_decay", 0.0), lo=0.0),
        seed=as_int(ctx, p + ("seed",), t.get("seed", TrainSpec.seed), lo=0, hi=SEED_LIMIT,
                    hi_open=True),
        early_stopping=as_int(ctx, p + ("early_stopping",), t.get("early_stopping", 0), lo=0,
                              hi=10**6),
        dtype=as_choice(ctx, p + ("dtype",), t.get("dtype", TrainSpec.dtype), DTYPES),
    )
    return spec


# ---- resolved tree ----------------------------------------------------------------------------


def _ref_tree(ref: str | tuple[str, ...] | None) -> str | list[str] | None:
    return list(ref) if isinstance(ref, tuple) else ref


def to_tree(cfg: Config) -> dict[str, Any]:
    """The whole config as plain data, explicit form, every default written out."""
    d, t = cfg.data, cfg.train
    o, s = t.optimizer, t.schedule
    opt: dict[str, Any] = {"type": o.type, "lr": o.lr}
    if o.type == "sgd":
        opt.update(momentum=o.momentum, nesterov=o.nesterov)
    else:
        opt.update(beta1=o.beta1, beta2=o.beta2, eps=o.eps)
    sched: dict[str, Any] = {"type": s.type}
    if s.type == "step":
        sched.update(step_size=s.step_size, gamma=s.gamma)
    elif s.type == "cosine":
        sched.update(min_lr=s.min_lr)
    sched["warmup"] = s.warmup
    return {
        "model": network.net_to_tree(cfg.model),
        "data": {
            "train": _ref_tree(d.train), "test": _ref_tree(d.test), "val_split": d.val_split,
            "normalize": d.normalize,
            "augment": {"rotate": d.augment.rotate, "shift": d.augment.shift,
                        "scale": d.augment.scale, "noise": d.augment.noise},
            "framing": d.framing,
        },
        "train": {
            "epochs": t.epochs, "batch_size": t.batch_size, "loss": t.loss, "optimizer": opt,
            "schedule": sched, "weight_decay": t.weight_decay, "seed": t.seed,
            "early_stopping": t.early_stopping, "dtype": t.dtype,
        },
    }


# ---- entry point ------------------------------------------------------------------------------


def load_config(source: Any, overrides: Any = (), *, seed: int | None = None) -> Config:
    """Read, override, validate and resolve a config.

    ``source``: a file path (str or Path), a bundled config name ("lenet5"), YAML text (a
    str containing a newline), a mapping (relative paths against the current folder) or a
    Config. ``overrides``: ``--set`` strings ``key.path=value`` (``[i]`` for list items; the
    value is a YAML flow value). ``seed`` replaces ``train.seed``. Raises ``SpecError``
    located at the offending value (file, line, column, field path).
    """
    raw, ctx, base, src, default = _read_source(source)
    if not isinstance(raw, dict):
        raise SpecError(f"top level must be a mapping, got {type_name(raw)}", path=ctx.name)
    if isinstance(overrides, str):
        overrides = [overrides]
    parsed = [(arg,) + parse_override(arg) for arg in (overrides or ())]
    deferred = []
    for arg, path, value, doc in parsed:
        if _defers(path, raw):
            deferred.append((arg, path, value, doc))
        else:
            _apply(ctx, raw, path, value, doc, f"--set {arg}")
    if seed is not None:
        raw.setdefault("train", None)
        if not isinstance(raw["train"], dict):
            raw["train"] = {}
        raw["train"]["seed"] = seed
        ctx.origins[("train", "seed")] = "--seed"
    top = mapping(ctx, (), raw, TOP_KEYS, required=("model",))
    model = top["model"]
    if network.is_compact(model):
        model = network.desugar(ctx, model)
        raw["model"] = model
    for arg, path, value, doc in deferred:
        _apply(ctx, raw, path, value, doc, f"--set {arg}")
    net, _ = network.build_net(ctx, raw["model"], default or "model")
    data = _data(ctx, top.get("data"), base)
    train = _train(ctx, top.get("train"))
    cfg = Config(model=net, data=data, train=train, source=src, warnings=tuple(ctx.warnings))
    return replace(cfg, resolved=to_tree(cfg))

