"""Reading YAML safely, with the position of every key and value.

A spec is plain data: mappings, lists and scalars. The loader here refuses every
YAML feature a spec never needs and an attacker might use: tags (``!!python/...``),
anchors and aliases (the "billion laughs" expansion), merge keys, several
documents, and nesting deeper than any spec goes. Files are size-checked before
they are parsed and decoded as strict UTF-8.

The tree is built from the parser's events with an explicit stack (no recursion),
so libyaml's C parser and PyYAML's pure-Python parser give the same tree, the same
positions and the same messages.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml import events as ev
from yaml.nodes import ScalarNode

from cnncli.errors import SpecError

MAX_BYTES = 1 << 20
MAX_DEPTH = 64

FieldPath = tuple  # ("model", "blocks", 1, "conv", 0, "size")


@dataclass(frozen=True)
class Mark:
    """Where a value (or key) was written: 1-based line and column, the source text
    of a scalar and its YAML style (None = plain, "'" or '"' = quoted)."""

    line: int | None
    col: int | None
    raw: str | None = None
    style: str | None = None


@dataclass
class Doc:
    data: Any
    marks: dict[FieldPath, Mark]       # value positions
    keymarks: dict[FieldPath, Mark]    # key positions (for mapping entries)


# ---- the strict loaders ---------------------------------------------------------------------


class _StrictMixin:
    """Builds a plain tree from parser events; refuses what a spec never needs."""

    source_name: str | None = None

    def build_doc(self, prefix: FieldPath = ()) -> Doc:
        marks: dict[FieldPath, Mark] = {}
        keymarks: dict[FieldPath, Mark] = {}
        self.get_event()  # StreamStart
        if self.check_event(ev.StreamEndEvent):
            raise self._err(None, "spec is empty")
        self.get_event()  # DocumentStart
        root: list[Any] = []
        # frames: [container, path, pending_key, keylines]
        stack: list[list[Any]] = []

        def attach(value: Any, mark: Mark) -> FieldPath:
            if not stack:
                root.append(value)
                path = prefix
            else:
                frame = stack[-1]
                container, cpath = frame[0], frame[1]
                if isinstance(container, dict):
                    key = frame[2]
                    container[key] = value
                    frame[2] = None
                    path = cpath + (key,)
                else:
                    path = cpath + (len(container),)
                    container.append(value)
            marks[path] = mark
            return path

        while True:
            event = self.get_event()
            if isinstance(event, ev.DocumentEndEvent):
                break
            if isinstance(event, ev.AliasEvent):
                raise self._err(event.start_mark, f"anchors and aliases are not allowed "
                                f"(found *{event.anchor}); write the value out in full")
            if isinstance(event, (ev.MappingEndEvent, ev.SequenceEndEvent)):
                stack.pop()
                continue
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                raise self._err(event.start_mark, f"anchors and aliases are not allowed "
                                f"(found &{anchor}); write the value out in full")
            tag = getattr(event, "tag", None)
            if tag is not None:
                shown = tag.replace("tag:yaml.org,2002:", "!!")
                raise self._err(event.start_mark, f"YAML tags are not allowed (found {shown}); "
                                "a spec holds only plain values")
            sm = event.start_mark
            expecting_key = bool(stack) and isinstance(stack[-1][0], dict) and stack[-1][2] is None
            if expecting_key:
                frame = stack[-1]
                if not isinstance(event, ev.ScalarEvent):
                    raise self._err(sm, "mapping keys must be plain names, not lists or mappings")
                key = event.value
                if not event.style and key == "<<":
                    raise self._err(sm, "merge keys (<<) are not allowed; write the keys out")
                kpath = frame[1] + (key,)
                if key in frame[3]:
                    first = frame[3][key]
                    raise self._err(sm, f"duplicate key '{key}' (lines {first} and {sm.line + 1})")
                frame[3][key] = sm.line + 1
                frame[2] = key
                keymarks[kpath] = Mark(sm.line + 1, sm.column + 1, key, event.style or None)
                continue
            depth = len(stack) + 1
            if isinstance(event, (ev.MappingStartEvent, ev.SequenceStartEvent)):
                if depth > MAX_DEPTH:
                    raise self._err(sm, f"nested too deeply (more than {MAX_DEPTH} levels)")
                container: Any = {} if isinstance(event, ev.MappingStartEvent) else []
                path = attach(container, Mark(sm.line + 1, sm.column + 1))
                stack.append([container, path, None, {}])
                continue
            # a scalar value
            value = self._scalar(event)
            attach(value, Mark(sm.line + 1, sm.column + 1, event.value, event.style or None))
        event = self.get_event()
        if not isinstance(event, ev.StreamEndEvent):
            raise self._err(event.start_mark, "expected a single document, found another "
                            "('---' starts a new one)")
        data = root[0] if root else None
        return Doc(data, marks, keymarks)

    def _scalar(self, event: ev.ScalarEvent) -> Any:
        tag = self.resolve(ScalarNode, event.value, event.implicit)
        kind = tag.rsplit(":", 1)[-1]
        if kind in ("null", "bool", "int", "float"):
            node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
            return self.construct_object(node, deep=True)
        # str, and what a spec never needs as a type (timestamps, '=', '<<'): the text itself
        return event.value

    def _err(self, mark: Any, message: str) -> SpecError:
        if mark is None:
            return SpecError(message, path=self.source_name)
        return SpecError(message, path=self.source_name, line=mark.line + 1, col=mark.column + 1)


class StrictLoader(_StrictMixin, yaml.SafeLoader):
    """Pure-Python strict loader."""


try:
    class StrictCLoader(_StrictMixin, yaml.CSafeLoader):  # type: ignore[misc]
        """libyaml-based strict loader (same tree and messages as StrictLoader)."""

    _DEFAULT_LOADER: type = StrictCLoader
except AttributeError:  # PyYAML built without libyaml
    StrictCLoader = None  # type: ignore[assignment,misc]
    _DEFAULT_LOADER = StrictLoader


# ---- messages from the parser, made the same for both loaders ------------------------------

_PROBLEM_FIXES = (
    (re.compile(r"^did not find expected (.*)$"), r"expected \1"),
    (re.compile(r"^(expected .*?), but got .*$"), r"\1"),
    (re.compile(r"^mapping values are not allowed (here|in this context)$"),
     "mapping values are not allowed here (a ':' followed by a space inside a plain value? "
     "quote the value)"),
    (re.compile(r"^found character( '.*')? that cannot start any token$"),
     "found a character that cannot start any token"),
)


def _yaml_error(e: yaml.YAMLError, text: str, name: str | None) -> SpecError:
    if isinstance(e, yaml.reader.ReaderError):
        line, col = _line_col(text, e.position)
        char = e.character if isinstance(e.character, str) else chr(e.character or 0)
        return SpecError(f"character #x{ord(char):04x} is not allowed in YAML", path=name,
                         line=line, col=col)
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        pm = e.problem_mark
        problem = (e.problem or "invalid YAML").strip()
        for rx, repl in _PROBLEM_FIXES:
            problem = rx.sub(repl, problem)
        idx = pm.index
        if problem.startswith("found a character") and 0 <= idx < len(text):
            ch = text[idx]
            problem = f"found character {ch!r} that cannot start any token"
            if ch == "\t":
                problem += " (YAML cannot indent with tabs; use spaces)"
        msg = problem
        cm = e.context_mark
        ctx = (e.context or "").strip()
        m = re.match(r"^while (?:parsing|scanning) an? (.*)$", ctx)
        if cm is not None and m and (cm.line, cm.column) != (pm.line, pm.column):
            msg += f" ({m.group(1)} started at line {cm.line + 1}, column {cm.column + 1})"
        return SpecError(msg, path=name, line=pm.line + 1, col=pm.column + 1)
    return SpecError(f"invalid YAML: {e}", path=name)


def _line_col(text: str, index: int) -> tuple[int, int]:
    index = max(0, min(index, len(text)))
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


# ---- public helpers -------------------------------------------------------------------------


def read_spec_bytes(path: str | os.PathLike[str], limit: int = MAX_BYTES) -> bytes:
    """The bytes of a spec file, refusing directories, special files and files over ``limit``."""
    shown = str(path)
    p = Path(path)
    try:
        if p.is_dir():
            raise SpecError(f"cannot read spec '{shown}': it is a directory")
        size = p.stat().st_size if p.is_file() else None
        if size is not None and size > limit:
            raise SpecError(f"spec '{shown}' is {size} bytes; limit {limit}")
        with open(p, "rb") as fh:
            data = fh.read(limit + 1)
    except SpecError:
        raise
    except FileNotFoundError:
        raise SpecError(f"cannot read spec '{shown}': no such file") from None
    except PermissionError:
        raise SpecError(f"cannot read spec '{shown}': permission denied") from None
    except OSError as e:
        raise SpecError(f"cannot read spec '{shown}': {e.strerror or e}") from None
    if len(data) > limit:
        raise SpecError(f"spec '{shown}' is more than {limit} bytes; limit {limit}")
    return data


def decode_spec(data: bytes, name: str | None = None) -> str:
    """Strict UTF-8 (a leading BOM is dropped); the error names the byte offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SpecError(
            f"not valid UTF-8 at byte {e.start} (line {line}): {data[e.start:e.start + 1]!r}; "
            "save the file as UTF-8", path=name) from None
    return text[1:] if text.startswith("\ufeff") else text


def parse_yaml(text: str, name: str | None = None, *, pure: bool = False,
               limit: int = MAX_BYTES, prefix: FieldPath = ()) -> Doc:
    """Parse one YAML document strictly into a ``Doc`` (any top-level type).

    ``pure`` forces PyYAML's pure-Python parser (the default is libyaml when present).
    """
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise SpecError(f"not valid Unicode at character {e.start} (a lone surrogate)",
                        path=name) from None
    if size > limit:
        raise SpecError(f"spec is {size} bytes; limit {limit}", path=name)
    if text.startswith("\ufeff"):
        text = text[1:]
    loader_cls = StrictLoader if pure or StrictCLoader is None else _DEFAULT_LOADER
    loader = None
    try:
        loader = loader_cls(text)
        loader.source_name = name
        return loader.build_doc(prefix)
    except SpecError:
        raise
    except yaml.YAMLError as e:
        if "maximum nesting depth" in str(getattr(e, "problem", "") or e):
            raise _too_deep(text, name) from None
        raise _yaml_error(e, text, name) from None
    except RecursionError:
        raise _too_deep(text, name) from None
    finally:
        if loader is not None:
            try:
                loader.dispose()
            except Exception:  # noqa: BLE001 - clean-up only
                pass


def _too_deep(text: str, name: str | None) -> SpecError:
    """The nesting error, placed where the flow nesting first passes MAX_DEPTH (libyaml stops
    at its own, larger limit while scanning ahead; this keeps both loaders' messages equal)."""
    depth, quote, comment = 0, "", False
    line, col = None, None
    for i, ch in enumerate(text):
        if comment:
            comment = ch != "\n"
        elif quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line, col = _line_col(text, i)
                break
        elif ch in "]}":
            depth -= 1
    return SpecError(f"nested too deeply (more than {MAX_DEPTH} levels)", path=name,
                     line=line, col=col)


def load_mapping(text: str, name: str | None = None, *, pure: bool = False) -> Doc:
    """Parse a whole spec: one non-empty document whose top level is a mapping."""
    doc = parse_yaml(text, name, pure=pure)
    if doc.data is None:
        raise SpecError("spec is empty (no keys; it needs at least 'model')", path=name)
    if not isinstance(doc.data, dict):
        m = doc.marks.get(())
        raise SpecError(f"top level must be a mapping (model:, data:, train:), found a "
                        f"{type_name(doc.data)}", path=name, line=m.line if m else None,
                        col=m.col if m else None)
    return doc


def type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, dict):
        return "mapping"
    return type(v).__name__


# ---- writing ----------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for short lists of scalars ([1, 28, 28])."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> Any:
    flat = all(not isinstance(x, (list, tuple, dict)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


def _represent_float(dumper: yaml.SafeDumper, data: float) -> Any:
    if math.isfinite(data):
        text = repr(float(data))
        if "e" in text and "." not in text.split("e")[0]:
            m, e = text.split("e")
            text = f"{m}.0e{e}"           # 1e-05 -> 1.0e-05: YAML 1.1 reads it as a float
        return dumper.represent_scalar("tag:yaml.org,2002:float", text)
    return dumper.represent_float(data)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)
_Dumper.add_representer(float, _represent_float)


def dump_yaml(d: Any) -> str:
    """A plain tree (dicts, lists, scalars) as readable YAML that ``load_config`` reads back."""
    return yaml.dump(d, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=100)
