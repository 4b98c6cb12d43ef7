"""Typed reading of a raw config tree, with errors that name file, line, field and range.

A ``Ctx`` knows where every value came from: a position in the YAML file, a
``--set`` argument, or (for the compact model form) the option it was broadcast
from. Every reader takes the field path of the value it reads and raises
``SpecError`` located at that value.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from cnncli.errors import SpecError
from cnncli.spec.yamlio import FieldPath, Mark, type_name

MISSING: Any = object()


def dotted(path: Sequence[Any]) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


class Ctx:
    """Where values came from, and the warnings collected while reading them."""

    def __init__(self, name: str | None = None, marks: dict | None = None,
                 keymarks: dict | None = None) -> None:
        self.name = name
        self.marks: dict[FieldPath, Mark] = marks or {}
        self.keymarks: dict[FieldPath, Mark] = keymarks or {}
        self.origins: dict[FieldPath, str] = {}       # path -> "--set key=value"
        self.alias: dict[FieldPath, FieldPath] = {}   # desugared path -> path as written
        self.warnings: list[str] = []

    # -- locating ----------------------------------------------------------------------------
    def display(self, path: FieldPath) -> FieldPath:
        for i in range(len(path), 0, -1):
            head = path[:i]
            if head in self.alias:
                return self.alias[head] + path[i:]
        return path

    def origin(self, path: FieldPath) -> str | None:
        for i in range(len(path), 0, -1):
            if path[:i] in self.origins:
                return self.origins[path[:i]]
        return None

    def locate(self, path: FieldPath, key: bool = False) -> dict[str, Any]:
        origin = self.origin(path)
        if origin is not None:
            return {"path": origin, "field": dotted(path) or None}
        disp = self.display(path)
        origin = self.origin(disp)
        if origin is not None:
            return {"path": origin, "field": dotted(disp) or None}
        mark = None
        if key and disp in self.keymarks:
            mark = self.keymarks[disp]
        else:
            for i in range(len(disp), -1, -1):
                mark = self.marks.get(disp[:i])
                if mark is not None and mark.line is not None:
                    break
        return {"path": self.name, "line": mark.line if mark else None,
                "col": mark.col if mark else None, "field": dotted(disp) or None}

    def error(self, path: FieldPath, message: str, hint: str | None = None,
              key: bool = False) -> SpecError:
        return SpecError(message, hint=hint, **self.locate(path, key=key))

    def warn(self, path: FieldPath, message: str) -> None:
        text = str(SpecError(message, **self.locate(path)))
        if text not in self.warnings:
            self.warnings.append(text)

    def mark(self, path: FieldPath) -> Mark | None:
        """The mark of the value at ``path`` itself (for its source text and style)."""
        if self.origin(path) is not None:
            return self.marks.get(path)
        return self.marks.get(self.display(path))


# ---- readers ----------------------------------------------------------------------------------

_NUMBER = re.compile(r"^[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _bool_note(ctx: Ctx, path: FieldPath, v: bool) -> str:
    m = ctx.mark(path)
    raw = m.raw if m is not None and m.raw else ("true" if v else "false")
    return f" (YAML reads '{raw}' as {str(v).lower()}; quote it)"


def _got(ctx: Ctx, path: FieldPath, v: Any) -> str:
    t = type_name(v)
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, str):
        return f"string {v[:40]!r}"
    if isinstance(v, (int, float)):
        return f"{t} {v!r}"
    return t


# names people try for a key, per section, and where the option really lives
ALIASES: dict[str, dict[str, str]] = {
    "train": {"learning_rate": "optimizer.lr", "lr": "optimizer.lr",
              "momentum": "optimizer.momentum", "num_epochs": "epochs", "batch": "batch_size",
              "batchsize": "batch_size", "random_seed": "seed", "l2": "weight_decay",
              "patience": "early_stopping", "lr_schedule": "schedule", "scheduler": "schedule"},
    "optimizer": {"learning_rate": "lr", "name": "type", "beta_1": "beta1", "beta_2": "beta2",
                  "epsilon": "eps"},
    "conv": {"kernel": "size", "kernel_size": "size", "num_filters": "filters",
             "out_channels": "filters", "channels": "filters", "strides": "stride",
             "pad": "padding"},
    "pool": {"kernel": "size", "kernel_size": "size", "pool_size": "size", "kind": "type",
             "mode": "type", "strides": "stride"},
    "fc": {"out_features": "units", "neurons": "units", "size": "units",
           "drop": "dropout", "dropout_rate": "dropout"},
    "model": {"layers": "blocks", "dense": "fc", "input_shape": "input", "arch": "pattern"},
    "data": {"validation_split": "val_split", "val": "val_split", "path": "train",
             "normalise": "normalize", "augmentation": "augment"},
}


def mapping(ctx: Ctx, path: FieldPath, v: Any, allowed: Iterable[str],
            required: Iterable[str] = (), what: str = "",
            section: str | None = None) -> dict[str, Any]:
    """A mapping with only ``allowed`` keys (null values count as absent)."""
    if not isinstance(v, dict):
        raise ctx.error(path, f"expected a mapping{what}, got {_got(ctx, path, v)}")
    allowed = list(allowed)
    out = {}
    for k, val in v.items():
        if not isinstance(k, str):
            raise ctx.error(path, f"keys must be names, got {_got(ctx, path, k)}")
        if k not in allowed:
            aliases = ALIASES.get(section or "", {})
            low = k.lower()
            near = difflib.get_close_matches(low, [*allowed, *aliases], n=1, cutoff=0.6)
            if near:
                hint = f"did you mean '{aliases.get(near[0], near[0])}'?"
            else:
                hint = "known keys: " + ", ".join(allowed)
            err = ctx.error(path + (k,), f"unknown key '{dotted(ctx.display(path) + (k,))}'",
                            hint=hint, key=True)
            err.field = None      # the message names it already
            raise err
        if val is not None:
            out[k] = val
    for k in required:
        if k not in out:
            raise ctx.error(path, f"missing required key '{dotted(ctx.display(path) + (k,))}'")
    return out


def as_int(ctx: Ctx, path: FieldPath, v: Any, lo: int | None = None,
           hi: int | None = None, hi_open: bool = False, what: str = "") -> int:
    """An integer in [lo, hi] (or [lo, hi) with hi_open); numeric strings like '1e3' count."""
    val = v
    if isinstance(v, bool):
        raise ctx.error(path, f"expected integer, got boolean{_bool_note(ctx, path, v)}")
    if isinstance(v, str) and _NUMBER.match(v.strip()):
        try:
            val = float(v.replace("_", "")) if not v.strip().lstrip("+-").isdigit() else int(v)
        except ValueError:
            val = v
    if isinstance(val, float) and math.isfinite(val) and val.is_integer() and abs(val) <= 2**53:
        val = int(val)
    if not isinstance(val, int) or isinstance(val, bool):
        raise ctx.error(path, f"expected integer, got {_got(ctx, path, v)}")
    _range(ctx, path, val, lo, hi, False, hi_open, what)
    return val


def as_float(ctx: Ctx, path: FieldPath, v: Any, lo: float | None = None,
             hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
             what: str = "") -> float:
    """A finite number in the given range; numeric strings such as '1e-3' are numbers."""
    if isinstance(v, bool):
        raise ctx.error(path, f"expected a number, got boolean{_bool_note(ctx, path, v)}")
    val = v
    if isinstance(v, str):
        s = v.strip().replace("_", "")
        if _NUMBER.match(s):
            val = float(s)
    if not isinstance(val, (int, float)) or isinstance(val, bool):
        raise ctx.error(path, f"expected a number, got {_got(ctx, path, v)}")
    val = float(val)
    if not math.isfinite(val):
        raise ctx.error(path, f"must be a finite number{_range_text(lo, hi, lo_open, hi_open)}, "
                        f"got {val}")
    _range(ctx, path, val, lo, hi, lo_open, hi_open, what)
    return val


def _range_text(lo: Any, hi: Any, lo_open: bool, hi_open: bool) -> str:
    lo, hi = _num(lo), _num(hi)
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def _range(ctx: Ctx, path: FieldPath, val: float, lo: Any, hi: Any, lo_open: bool,
           hi_open: bool, what: str) -> None:
    bad = (lo is not None and (val < lo or (lo_open and val == lo))) or (
        hi is not None and (val > hi or (hi_open and val == hi)))
    if bad:
        kind = "an integer" if isinstance(val, int) else "a number"
        rng = _range_text(_fmt(lo), _fmt(hi), lo_open, hi_open)
        raise ctx.error(path, f"must be {kind}{rng}{what}, got {val!r}")


def _num(x: Any) -> Any:
    return f"{x:g}" if isinstance(x, float) else x


def _fmt(x: Any) -> Any:
    if isinstance(x, int) and x >= 2**20 and (x & (x - 1)) == 0:
        return f"2^{x.bit_length() - 1}"
    return x


def as_bool(ctx: Ctx, path: FieldPath, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ctx.error(path, f"expected true or false, got {_got(ctx, path, v)}")
    return v


def as_str(ctx: Ctx, path: FieldPath, v: Any) -> str:
    if isinstance(v, bool):
        raise ctx.error(path, f"expected string, got boolean{_bool_note(ctx, path, v)}")
    if not isinstance(v, str):
        raise ctx.error(path, f"expected string, got {_got(ctx, path, v)}")
    return v


def as_choice(ctx: Ctx, path: FieldPath, v: Any, choices: Sequence[str]) -> str:
    s = as_str(ctx, path, v).strip().lower().replace("-", "_")
    if s not in choices:
        near = difflib.get_close_matches(s, choices, n=1, cutoff=0.6)
        hint = f"did you mean '{near[0]}'?" if near else None
        raise ctx.error(path, f"expected one of {', '.join(choices)}, got {v!r}", hint=hint)
    return s


def as_list(ctx: Ctx, path: FieldPath, v: Any, what: str = "a list") -> list[Any]:
    if not isinstance(v, list):
        raise ctx.error(path, f"expected {what}, got {_got(ctx, path, v)}")
    return v


def as_pair(ctx: Ctx, path: FieldPath, v: Any, lo: int = 1, what: str = "") -> tuple[int, int]:
    """An int or [h, w] of ints >= lo."""
    if isinstance(v, list):
        if len(v) != 2:
            raise ctx.error(path, f"expected an integer or a pair [h, w], got a list of "
                            f"{len(v)}")
        return (as_int(ctx, path + (0,), v[0], lo=lo, what=what),
                as_int(ctx, path + (1,), v[1], lo=lo, what=what))
    n = as_int(ctx, path, v, lo=lo, what=what)
    return (n, n)
