"""Checkpoints: one safetensors file each, never pickled, written atomically.

Layout (DESIGN.md section 5): model tensors under their network names in PyTorch
layouts (``conv1.weight`` (out, in, kh, kw), ``fc1.weight`` (out, in), ...);
optimizer state, in ``last.safetensors`` only, under names starting ``optim.``.
``__metadata__`` holds one key, ``cnncli``, a JSON document with the format version,
the resolved config, class names, input normalisation and training state.

The header is parsed and checked here before the safetensors library sees the
file: sizes, offsets, dtypes, duplicate keys, metadata. Then every tensor is checked
against the network its config describes (names, shapes, finiteness).
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any

from cnncli.errors import CheckpointError

FORMAT_VERSION = 1
MAGIC_KEY = "cnncli"
ALLOWED_DTYPES = {"F32": 4, "F64": 8}
MAX_HEADER = 100 * 1024 * 1024
OPTIM_PREFIX = "optim."


def resolve_model_path(arg: str | os.PathLike) -> Path:
    """A --model argument: a checkpoint file, or a run folder (its best checkpoint)."""
    p = Path(arg)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(
            f"run folder '{p}' holds no best.safetensors or last.safetensors",
            hint="train a model first: cnncli train",
        )
    if not p.exists() and not p.is_symlink():
        pointer = p.with_name(p.name + ".txt")
        if pointer.is_file():  # runs/latest on a filesystem without symlinks
            return resolve_model_path(p.parent / pointer.read_text().strip())
        hint = "train a model first: cnncli train" if p.name == "latest" else None
        raise CheckpointError(f"no model at '{p}'", hint=hint)
    return p


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"duplicate key '{k}' in the header")
        seen[k] = v
    return seen


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON value {name}")


def _check_header(raw: bytes, where: str) -> tuple[dict, int]:
    """Validate the safetensors header; returns (header, data offset)."""
    if len(raw) == 0:
        raise CheckpointError(f"checkpoint '{where}' is empty (0 bytes): an interrupted save?")
    if len(raw) < 8:
        raise CheckpointError(f"checkpoint '{where}' is truncated ({len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > MAX_HEADER or 8 + n > len(raw):
        raise CheckpointError(
            f"'{where}' is not a safetensors file or is truncated: header declares {n:,} bytes, "
            f"file has {len(raw):,}",
            hint="cnncli reads only safetensors checkpoints; PyTorch .pt/pickle files are refused",
        )
    try:
        text = raw[8 : 8 + n].decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_dupes, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"'{where}': corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"'{where}': corrupt safetensors header (not an object)")
    body = len(raw) - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"'{where}': tensor '{name}' has a malformed header entry")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise CheckpointError(
                f"'{where}': tensor '{name}' has dtype {dtype}, expected F32 or F64"
            )
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
        ):
            raise CheckpointError(f"'{where}': tensor '{name}' has a malformed shape or offsets")
        count = 1
        for d in shape:
            count *= d
        start, end = offs
        if not (0 <= start <= end <= body) or end - start != count * ALLOWED_DTYPES[dtype]:
            raise CheckpointError(
                f"'{where}': tensor '{name}' offsets {offs} do not match its shape {shape} "
                f"and the {body:,} data bytes: truncated or corrupt"
            )
        spans.append((start, end, name))
    spans.sort()
    pos = 0
    for start, end, name in spans:
        if start != pos:
            raise CheckpointError(
                f"'{where}': tensor '{name}' overlaps or leaves a gap in the data"
            )
        pos = end
    if pos != body:
        raise CheckpointError(f"'{where}': {body - pos:,} unexpected bytes after the last tensor")
    return header, 8 + n


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read and validate a checkpoint file: returns (tensors, cnncli metadata).

    Tensors come back as NumPy arrays; nothing in the file is ever executed.
    """
    import numpy as np

    path = Path(path)
    where = str(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint '{where}': {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"checkpoint '{where}' is not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint '{where}': {e.strerror}") from None
    header, _ = _check_header(raw, where)
    meta_raw = header.get("__metadata__")
    if not isinstance(meta_raw, dict) or MAGIC_KEY not in meta_raw:
        raise CheckpointError(
            f"'{where}' has no cnncli metadata (__metadata__.{MAGIC_KEY}): not a cnncli checkpoint"
        )
    try:
        meta = json.loads(
            meta_raw[MAGIC_KEY], object_pairs_hook=_no_dupes, parse_constant=_reject_constant
        )
    except (TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(
            f"'{where}': metadata '{MAGIC_KEY}' is not valid JSON ({e})"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{where}': metadata '{MAGIC_KEY}' is not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"'{where}': metadata has no integer format_version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"'{where}' was written by a newer cnncli (format {version} > {FORMAT_VERSION})",
            hint="upgrade cnncli",
        )
    try:
        from safetensors.numpy import load as st_load

        tensors = st_load(raw)
    except Exception as e:  # noqa: BLE001 - the library's own error types vary by version
        raise CheckpointError(f"'{where}': corrupt safetensors file ({e})") from None
    for name, arr in tensors.items():
        if not np.isfinite(arr).all():
            raise CheckpointError(f"'{where}': non-finite values in tensor '{name}'")
    return tensors, meta


def write_checkpoint(path: str | os.PathLike, tensors: dict, meta: dict) -> None:
    """Write tensors + metadata atomically (temp file, fsync, rename)."""
    import numpy as np
    from safetensors.numpy import save as st_save

    from cnncli.io.atomic import atomic_write_bytes

    doc = {"format_version": FORMAT_VERSION, **meta}
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    data = st_save(arrays, metadata={MAGIC_KEY: json.dumps(doc, allow_nan=False)})
    atomic_write_bytes(path, data)


def check_tensors(where: str, expected: dict, found: dict, *, prefix_ok: str | None = None) -> None:
    """Exact name set and shapes of model tensors against the network's parameters."""
    names = {k for k in found if not (prefix_ok and k.startswith(prefix_ok))}
    missing = [k for k in expected if k not in names]
    extra = sorted(names - set(expected))
    if missing:
        raise CheckpointError(f"'{where}' lacks tensors: {', '.join(missing)}")
    if extra:
        raise CheckpointError(f"'{where}' has unexpected tensors: {', '.join(extra)}")
    for k, ref in expected.items():
        got = tuple(found[k].shape)
        want = tuple(getattr(ref, "shape", ref))         # an array or a shape
        if got != want:
            raise CheckpointError(
                f"'{where}': tensor '{k}' has shape {list(got)} but the config needs "
                f"{list(want)}: a checkpoint from a different model?"
            )


def spec_shapes(spec) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of every parameter a network spec describes (nothing allocated)."""
    from cnncli.spec.model import param_shapes

    shapes: dict[str, tuple[int, ...]] = {}
    for layer in spec.layers:
        shapes.update({k: tuple(v) for k, v in param_shapes(layer).items()})
    return shapes


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_meta(where: str, meta: dict, spec) -> None:
    """The metadata the commands use besides the config: class names and normalisation."""
    classes = meta.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(
            isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes
        ):
            raise CheckpointError(f"'{where}': metadata 'classes' is not a list of names")
        if len(classes) != spec.outputs:
            raise CheckpointError(
                f"'{where}': metadata 'classes' names {len(classes)} classes for a network "
                f"with {spec.outputs} outputs"
            )
    norm = meta.get("normalization")
    if norm is not None:
        channels = spec.input[0]
        ok = isinstance(norm, dict)
        for key in ("mean", "std"):
            v = norm.get(key) if ok else None
            ok = ok and isinstance(v, list) and len(v) in (1, channels) and all(
                _is_number(x) for x in v
            )
        if not ok or not all(x > 0 for x in norm["std"]):
            raise CheckpointError(
                f"'{where}': metadata 'normalization' is malformed: expected mean and std "
                f"lists of {channels} finite numbers, std above 0"
            )


def load_model(path: str | os.PathLike):
    """Load a network from a checkpoint file or run folder: returns (network, metadata)."""
    from cnncli.engine.network import Network
    from cnncli.spec import load_config

    file = resolve_model_path(path)
    tensors, meta = read_checkpoint(file)
    config = meta.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"'{file}': metadata holds no config")
    try:
        cfg = load_config(config)
    except Exception as e:  # noqa: BLE001 - any config problem means a bad checkpoint
        raise CheckpointError(
            f"'{file}': the config stored in the checkpoint is invalid: {e}"
        ) from None
    # names and shapes first, from the config alone: a config that claims a huge network
    # must not allocate it before the (small) tensors show the file is inconsistent
    check_tensors(str(file), spec_shapes(cfg.model), tensors, prefix_ok=OPTIM_PREFIX)
    check_meta(str(file), meta, cfg.model)
    dtypes = {str(t.dtype) for k, t in tensors.items() if not k.startswith(OPTIM_PREFIX)}
    if len(dtypes) > 1:
        raise CheckpointError(
            f"'{file}': its model tensors mix {' and '.join(sorted(dtypes))}; a checkpoint "
            "holds float32 or float64 tensors, not both"
        )
    dtype = "float64" if dtypes == {"float64"} else "float32"
    net = Network(cfg.model, dtype=dtype, seed=0)
    check_tensors(str(file), net.params, tensors, prefix_ok=OPTIM_PREFIX)
    net.set_params({k: tensors[k] for k in net.params})
    meta = dict(meta)
    meta["file"] = str(file)
    meta["config_obj"] = cfg
    return net, meta


def save_model(net, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Save a network's parameters (no optimizer state) with metadata."""
    meta = dict(meta or {})
    meta.pop("config_obj", None)
    meta.pop("file", None)
    if "config" not in meta:
        resolved = getattr(net, "config_resolved", None)
        if resolved is None:
            raise CheckpointError(
                "cannot save: the network has no config to store (build it with cnncli.build)"
            )
        meta["config"] = resolved
    write_checkpoint(path, dict(net.params), meta)
