"""Random bytes and mutations of a valid checkpoint give only CnncliError (RELIABILITY.md 3.5).

``read_checkpoint`` and ``load_model`` either return something that passes validation or
raise a ``CnncliError`` naming the file; any other exception (a KeyError, a MemoryError from a
header or config that claims a huge tensor, a RecursionError from deeply nested JSON) fails.
Besides blind byte mutations, the header's JSON and the stored config are edited field by field,
so the checks behind the JSON parser are reached too.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cnncli.errors import CnncliError
from cnncli.io.checkpoint import MAGIC_KEY, load_model, read_checkpoint, write_checkpoint

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

CONFIG = {
    "model": {
        "name": "fuzz",
        "input": [1, 6, 6],
        "pattern": "INPUT -> [[CONV]*1 -> POOL]*1 -> [FC]*2",
        "conv": {"filters": 2, "size": 3, "activation": "prelu"},
        "pool": {"type": "subsample", "size": 2},
        "fc": {"units": [4, 3]},
    },
}


def valid_checkpoint(path) -> bytes:
    """A checkpoint as training writes it: weights, optimizer state, metadata."""
    from cnncli.engine.network import Network
    from cnncli.spec import load_config

    cfg = load_config(CONFIG)
    net = Network(cfg.model, seed=0)
    tensors = dict(net.params)
    tensors.update({f"optim.{k}.momentum": np.zeros_like(v) for k, v in net.params.items()})
    tensors["optim.step"] = np.array([3.0])
    meta = {"config": cfg.resolved, "classes": ["a", "b", "c"],
            "normalization": {"mode": "standardize", "mean": [0.5], "std": [0.25]},
            "epoch": 1, "step_in_epoch": 0, "global_step": 3}
    write_checkpoint(path, tensors, meta)
    return path.read_bytes()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    return d, valid_checkpoint(d / "valid.safetensors")


def split(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def rebuild(header: dict, body: bytes) -> bytes:
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    return struct.pack("<Q", len(hb)) + hb + body


def only_cnncli_errors(folder, data: bytes, *, model: bool) -> None:
    """Load ``data`` as a checkpoint: a valid result, or a CnncliError naming the file."""
    path = folder / "case.safetensors"
    path.write_bytes(data)
    try:
        if model:
            net, meta = load_model(path)
        else:
            tensors, meta = read_checkpoint(path)
    except CnncliError as e:
        assert e.code == 2, e
        assert "case.safetensors" in str(e), e
        return
    if model:
        for k, v in net.params.items():
            assert v.dtype in (np.float32, np.float64) and np.isfinite(v).all(), k
        assert meta["file"] == str(path)
    else:
        for k, v in tensors.items():
            assert np.isfinite(v).all(), k
        assert isinstance(meta, dict) and isinstance(meta.get("format_version"), int)


@st.composite
def mutated(draw, base: bytes):
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "cut", "insert", "set", "truncate"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "set":
            data[i] = draw(st.integers(0, 255))
        else:
            del data[i:]
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=3),
    max_leaves=8,
)


def _paths(doc, prefix=()):
    """Every path to a value inside nested dicts and lists."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value):
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()


@st.composite
def header_edits(draw, raw: bytes):
    """The header with one field (of a tensor entry) replaced, deleted or added."""
    header, body = split(raw)
    names = [k for k in header if k != "__metadata__"]
    paths = [p for name in names for p in _paths(header[name], (name,))]
    path = draw(st.sampled_from(paths))
    value = draw(st.one_of(JSON_VALUES, st.just(_DELETE),
                           st.integers(0, 2**64), st.lists(st.integers(-2, 2**40), max_size=5),
                           st.sampled_from(["F32", "F64", "F16", "BF16", "I32", "U8", "BOOL"])))
    if len(path) == 1 and value is _DELETE:
        del header[path[0]]
    else:
        _set(header, path, value)
    if draw(st.booleans()):
        header[draw(st.text(min_size=1, max_size=8))] = draw(JSON_VALUES)
    return rebuild(header, body)


@st.composite
def config_edits(draw, raw: bytes):
    """The stored metadata with one value (config, classes, normalisation, ...) replaced."""
    header, body = split(raw)
    doc = json.loads(header["__metadata__"][MAGIC_KEY])
    path = draw(st.sampled_from([p for p in _paths(doc) if p]))
    value = draw(st.one_of(JSON_VALUES, st.just(_DELETE), st.integers(0, 2**21),
                           st.sampled_from(["same", "full", "valid", "maxout", "learned", ""])))
    _set(doc, path, value)
    header["__metadata__"][MAGIC_KEY] = json.dumps(doc)
    return rebuild(header, body)


def test_the_valid_checkpoint_loads(base):
    folder, raw = base
    only_cnncli_errors(folder, raw, model=True)
    net, meta = load_model(folder / "case.safetensors")
    assert meta["classes"] == ["a", "b", "c"] and "pool1.beta" in net.params


@FUZZ
@given(data=st.binary(max_size=4096))
@example(data=b"")
@example(data=struct.pack("<Q", 2**64 - 1))
@example(data=struct.pack("<Q", 2) + b"{}")
@example(data=struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000)
def test_random_bytes(base, data):
    folder, _ = base
    only_cnncli_errors(folder, data, model=False)


@FUZZ
@given(data=st.data())
def test_byte_mutations_of_a_valid_checkpoint(base, data):
    folder, raw = base
    only_cnncli_errors(folder, data.draw(mutated(raw)), model=True)


@FUZZ
@given(data=st.data())
def test_header_field_edits(base, data):
    folder, raw = base
    only_cnncli_errors(folder, data.draw(header_edits(raw)), model=True)


@FUZZ
@given(data=st.data())
def test_metadata_and_config_edits(base, data):
    folder, raw = base
    only_cnncli_errors(folder, data.draw(config_edits(raw)), model=True)


def test_a_config_claiming_a_huge_network_allocates_nothing(base):
    """The tensors are checked against the stored config before a network is built."""
    import tracemalloc

    folder, raw = base
    header, body = split(raw)
    doc = json.loads(header["__metadata__"][MAGIC_KEY])
    doc["config"]["model"]["fc"][0]["units"] = 2**20
    doc["config"]["model"]["blocks"][0]["conv"][0]["filters"] = 2**20
    header["__metadata__"][MAGIC_KEY] = json.dumps(doc)
    (folder / "huge.safetensors").write_bytes(rebuild(header, body))
    tracemalloc.start()
    try:
        with pytest.raises(CnncliError, match="a checkpoint from a different model"):
            load_model(folder / "huge.safetensors")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024**2, f"{peak / 2**20:.0f} MiB allocated"
    assert math.isfinite(peak)
