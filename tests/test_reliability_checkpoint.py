"""RELIABILITY.md section 3.3 (C01-C20): bad checkpoints given to every command that loads one.

Every bad file is made from one valid ``last.safetensors`` (tiny network, one epoch) by
rewriting its header or body, as safetensors' own test vectors do. Each goes to
`cnncli eval --model`, `cnncli infer --model` and `cnncli train --resume` (as the
``last.safetensors`` of a copied run folder). A refused file gives exit 2, a message naming
it, no traceback, and leaves the run folder exactly as it was (and nothing beside the model).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error
from safetensors.numpy import save as st_save
from test_reliability_data import good_npz, png_bytes, tiny_images, write_config

from cnncli.io.checkpoint import MAGIC_KEY, read_checkpoint

# ---- header surgery ---------------------------------------------------------------------------


def st_split(raw: bytes) -> tuple[dict, bytes]:
    """(header dict, data bytes) of a safetensors file."""
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def st_rebuild(header: dict | str | bytes, body: bytes) -> bytes:
    """A safetensors file from a header (dict, or raw JSON text for duplicate keys) and data."""
    if isinstance(header, dict):
        hb = json.dumps(header).encode()
    elif isinstance(header, str):
        hb = header.encode()
    else:
        hb = header
    hb += b" " * (-len(hb) % 8)
    return struct.pack("<Q", len(hb)) + hb + body


def reencode(raw: bytes, tensors=None, meta=None) -> bytes:
    """Decode, change tensors and/or the cnncli metadata, encode with the safetensors library."""
    header, _ = st_split(raw)
    from safetensors.numpy import load

    arrays = load(raw)
    doc = json.loads(header["__metadata__"][MAGIC_KEY])
    if tensors:
        tensors(arrays)
    if meta:
        meta(doc)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    return st_save(arrays, metadata={MAGIC_KEY: json.dumps(doc)})


def edit_header(raw: bytes, change: Callable[[dict], None]) -> bytes:
    header, body = st_split(raw)
    change(header)
    return st_rebuild(header, body)


def edit_meta_text(raw: bytes, text: object) -> bytes:
    header, body = st_split(raw)
    header["__metadata__"][MAGIC_KEY] = text
    return st_rebuild(header, body)


# ---- the corpus ---------------------------------------------------------------------------------
# name -> (raw valid bytes -> bad bytes, substrings of the message). The file is called
# last.safetensors for every command, so the message must name that.


def _c05_overlap(h: dict) -> None:
    a, b = h["conv1.weight"]["data_offsets"]
    h["conv1.weight"]["data_offsets"] = [a - 4, b - 4]


def _c06_int(h: dict) -> None:
    h["conv1.weight"]["dtype"] = "I32"


def _c07_wider(h: dict) -> None:
    h["fc1.weight"]["dtype"] = "F64"


def _c09_reshape(h: dict) -> None:
    h["conv1.weight"]["shape"] = [2, 1, 9]


def _c04_dtype(h: dict) -> None:
    h["fc1.bias"]["dtype"] = "F99"


def _c08_filters(t: dict) -> None:
    t["conv1.weight"] = np.ones((4, 1, 3, 3), np.float32)
    t["conv1.bias"] = np.zeros(4, np.float32)


def _c12_extra(t: dict) -> None:
    t["fc9.weight"] = np.ones((3, 3), np.float32)


def _c13_missing(t: dict) -> None:
    del t["fc1.bias"]


def _c14_nan(t: dict) -> None:
    t["fc1.weight"][1, 2] = np.nan


def _c14_inf(t: dict) -> None:
    t["conv1.bias"][0] = -np.inf


def _c15_newer(m: dict) -> None:
    m["format_version"] = 99


def _c16_config(m: dict) -> None:
    m["config"]["model"]["blocks"][0]["conv"][0]["filters"] = 4


def _c16_config_broken(m: dict) -> None:
    m["config"]["model"]["blocks"][0]["conv"][0]["size"] = 99


def _c16_config_huge(m: dict) -> None:
    m["config"]["model"]["blocks"][0]["conv"][0]["filters"] = 1 << 20
    m["config"]["model"]["fc"][0]["units"] = 1 << 20


def _dup_key(raw: bytes) -> bytes:
    header, body = st_split(raw)
    first = next(k for k in header if k != "__metadata__")
    text = json.dumps(header)
    dup = json.dumps({first: header[first]})[1:-1]
    return st_rebuild(text[:-1] + ", " + dup + "}", body)


def _meta_missing(raw: bytes) -> bytes:
    return edit_header(raw, lambda h: h.pop("__metadata__"))


def _other_meta_int(raw: bytes) -> bytes:
    return edit_header(raw, lambda h: h["__metadata__"].update({"note": 5}))


def _torch_zip(raw: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


CASES: dict[str, tuple[Callable[[bytes], bytes], tuple[str, ...]]] = {
    "C01-empty": (lambda r: b"", ("empty (0 bytes)",)),
    "C01-seven-bytes": (lambda r: r[:7], ("truncated",)),
    "C02-half": (lambda r: r[: len(r) // 2], ("truncated",)),
    "C02-last-byte": (lambda r: r[:-1], ("truncated or corrupt",)),
    "C03-header-2^60": (lambda r: struct.pack("<Q", 1 << 60) + r[8:],
                        ("not a safetensors file",)),
    "C03-header-2^64-1": (lambda r: struct.pack("<Q", (1 << 64) - 1) + r[8:],
                          ("not a safetensors file",)),
    "C04-not-json": (lambda r: st_rebuild(b"{not json at all", st_split(r)[1]),
                     ("corrupt safetensors header",)),
    "C04-not-utf8": (lambda r: st_rebuild(b'{"caf\xe9": 1}', st_split(r)[1]),
                     ("corrupt safetensors header",)),
    "C04-header-a-list": (lambda r: st_rebuild(b"[1, 2, 3]", st_split(r)[1]),
                          ("not an object",)),
    "C04-unknown-dtype": (lambda r: edit_header(r, _c04_dtype), ("dtype F99",)),
    "C05-overlap": (lambda r: edit_header(r, _c05_overlap), ("conv1.weight",)),
    "C05-trailing-polyglot": (lambda r: r + b"<html><script>alert(1)</script></html>",
                              ("unexpected bytes after the last tensor",)),
    "C06-i32": (lambda r: edit_header(r, _c06_int), ("conv1.weight", "dtype I32")),
    "C07-f64-label": (lambda r: edit_header(r, _c07_wider), ("fc1.weight",)),
    "C08-other-model": (lambda r: reencode(r, _c08_filters),
                        ("conv1.weight", "[4, 1, 3, 3]", "[2, 1, 3, 3]")),
    "C09-same-bytes-other-shape": (lambda r: edit_header(r, _c09_reshape),
                                   ("conv1.weight", "[2, 1, 9]")),
    "C10-no-metadata": (_meta_missing, ("no cnncli metadata",)),
    "C10-metadata-not-json": (lambda r: edit_meta_text(r, "{'format_version': 1"),
                              ("metadata 'cnncli' is not valid JSON",)),
    "C10-metadata-nan": (lambda r: edit_meta_text(r, '{"format_version": 1, "best": NaN}'),
                         ("metadata 'cnncli' is not valid JSON", "NaN")),
    "C10-metadata-not-object": (lambda r: edit_meta_text(r, "[1, 2]"),
                                ("not a JSON object",)),
    "C11-metadata-int": (lambda r: edit_meta_text(r, 5), ("metadata 'cnncli'",)),
    "C11-other-metadata-int": (_other_meta_int, ("last.safetensors",)),
    "C12-extra-tensor": (lambda r: reencode(r, _c12_extra), ("unexpected tensors", "fc9.weight")),
    "C13-missing-tensor": (lambda r: reencode(r, _c13_missing), ("lacks tensors", "fc1.bias")),
    "C14-nan": (lambda r: reencode(r, _c14_nan), ("non-finite", "fc1.weight")),
    "C14-inf": (lambda r: reencode(r, _c14_inf), ("non-finite", "conv1.bias")),
    "C15-newer-format": (lambda r: reencode(r, meta=_c15_newer),
                         ("newer cnncli", "format 99 > 1", "upgrade")),
    "C16-config-of-another-model": (lambda r: reencode(r, meta=_c16_config),
                                    ("conv1.weight", "[2, 1, 3, 3]", "[4, 1, 3, 3]")),
    "C16-config-broken": (lambda r: reencode(r, meta=_c16_config_broken),
                          ("model.blocks[0].conv[0].size",)),
    "C16-config-of-a-huge-model": (lambda r: reencode(r, meta=_c16_config_huge),
                                   ("conv1.weight", "[1048576, 1, 3, 3]")),
    "C10-classes-not-a-list": (lambda r: reencode(r, meta=lambda m: m.update(classes=5)),
                               ("classes",)),
    "C10-classes-too-few": (lambda r: reencode(r, meta=lambda m: m.update(classes=["a"])),
                            ("classes", "3 outputs")),
    "C10-normalization-bad-std": (
        lambda r: reencode(r, meta=lambda m: m["normalization"].update(std=[0.0])),
        ("normalization",)),
    "C10-normalization-text": (
        lambda r: reencode(r, meta=lambda m: m["normalization"].update(mean=["zero"])),
        ("normalization",)),
    "C10-normalization-channels": (
        lambda r: reencode(r, meta=lambda m: m["normalization"].update(mean=[0.1, 0.2, 0.3])),
        ("normalization",)),
    "C04-deeply-nested-header": (
        lambda r: st_rebuild(b"[" * 100_000 + b"]" * 100_000, st_split(r)[1]),
        ("corrupt safetensors header",)),
    "C10-deeply-nested-metadata": (
        lambda r: edit_meta_text(r, "[" * 100_000 + "]" * 100_000),
        ("metadata 'cnncli' is not valid JSON",)),
    "C17-torch-zip": (_torch_zip, ("not a safetensors file",)),
    "C20-duplicate-key": (_dup_key, ("duplicate key",)),
}


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run in a scratch folder: whatever a command writes beside itself lands there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished one-epoch run of the tiny network (best, last with optimizer state, ...)."""
    from cnncli.spec import load_config
    from cnncli.train.loop import train

    d = tmp_path_factory.mktemp("ckpt")
    spec = write_config(d, good_npz(d / "train.npz"))
    train(load_config(spec), out=d / "run")
    return d / "run"


@pytest.fixture(scope="module")
def valid(run_dir) -> bytes:
    return (run_dir / "last.safetensors").read_bytes()


@pytest.fixture
def picture(tmp_path) -> Path:
    p = tmp_path / "pic.png"
    p.write_bytes(png_bytes(tiny_images(1)[0][0]))
    return p


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, symlinks=True)
    return dest


def bad_model(tmp_path: Path, data: bytes) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    p = folder / "last.safetensors"
    p.write_bytes(data)
    return p


# ---- the three commands on every bad file -------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_eval_refuses(cli, valid, tmp_path, case):
    build, needles = CASES[case]
    model = bad_model(tmp_path, build(valid))
    res = cli("eval", "--model", model, "--data", tmp_path / "unused.npz")
    assert_clean_error(res, 2, "last.safetensors", *needles)
    assert [p.name for p in model.parent.iterdir()] == ["last.safetensors"]


@pytest.mark.parametrize("case", list(CASES))
def test_infer_refuses(cli, valid, tmp_path, picture, case):
    build, needles = CASES[case]
    model = bad_model(tmp_path, build(valid))
    res = cli("infer", picture, "--model", model, "--json")
    assert_clean_error(res, 2, "last.safetensors", *needles)
    assert res.stdout == ""


# Known gaps in `train --resume` (cnncli/train/loop.py, prepare_resume): the stored config is
# used before the tensors are checked against it, and its errors do not name the checkpoint.


@pytest.mark.parametrize("case", list(CASES))
def test_resume_refuses(cli, run_dir, valid, tmp_path, case):
    build, needles = CASES[case]
    run = copy_run(run_dir, tmp_path / "run")
    (run / "last.safetensors").write_bytes(build(valid))
    before = snapshot(run)
    res = cli("train", "--resume", run, "--epochs", "2", "--quiet")
    assert_clean_error(res, 2, "last.safetensors", *needles)
    assert snapshot(run) == before, "a refused resume changed the run folder"


def test_the_valid_checkpoint_works_everywhere(cli, run_dir, valid, tmp_path, picture):
    """The control: the file every case above is made from is accepted by all three."""
    model = bad_model(tmp_path, valid)
    data = good_npz(tmp_path / "test.npz")
    assert cli("eval", "--model", model, "--data", data).exit_code == 0
    assert cli("infer", picture, "--model", model).exit_code == 0
    run = copy_run(run_dir, tmp_path / "run")
    res = cli("train", "--resume", run, "--epochs", "2", "--quiet")
    assert res.exit_code == 0, res.output
    assert read_checkpoint(run / "last.safetensors")[1]["epoch"] == 2


def test_c03_huge_header_length_is_refused_at_once(cli, valid, tmp_path):
    model = bad_model(tmp_path, struct.pack("<Q", (1 << 64) - 1) + valid[8:])
    t = time.perf_counter()
    res = cli("eval", "--model", model, "--data", tmp_path / "x.npz")
    assert time.perf_counter() - t < 1.0
    assert_clean_error(res, 2, "18,446,744,073,709,551,615")


def test_c07_float64_checkpoint_is_valid(cli, valid, tmp_path, picture):
    """Decision 10: a float64 checkpoint (every model tensor F64) is accepted."""
    def widen(t):
        for k in list(t):
            t[k] = t[k].astype(np.float64)

    model = bad_model(tmp_path, reencode(valid, widen))
    res = cli("infer", picture, "--model", model, "--json")
    assert res.exit_code == 0, res.output
    data = good_npz(tmp_path / "test.npz")
    assert cli("eval", "--model", model, "--data", data).exit_code == 0


def test_c07_mixed_float_widths_are_refused(cli, valid, tmp_path, picture):
    """One model tensor re-encoded as F64 among F32 ones is not a file cnncli writes."""
    def one_wide(t):
        t["fc1.weight"] = t["fc1.weight"].astype(np.float64)

    model = bad_model(tmp_path, reencode(valid, one_wide))
    assert_clean_error(cli("infer", picture, "--model", model), 2, "last.safetensors",
                       "float32", "float64")


def test_c13_missing_optimizer_state_refuses_resume(cli, run_dir, valid, tmp_path):
    def drop(t):
        del t["optim.conv1.weight.momentum"]

    run = copy_run(run_dir, tmp_path / "run")
    (run / "last.safetensors").write_bytes(reencode(valid, drop))
    before = snapshot(run)
    res = cli("train", "--resume", run, "--epochs", "2")
    assert_clean_error(res, 2, "optim.conv1.weight.momentum")
    assert snapshot(run) == before


def test_c12_extra_optimizer_state_refuses_resume(cli, run_dir, valid, tmp_path):
    def extra(t):
        t["optim.fc9.weight.momentum"] = np.zeros((3, 3), np.float32)

    run = copy_run(run_dir, tmp_path / "run")
    (run / "last.safetensors").write_bytes(reencode(valid, extra))
    before = snapshot(run)
    res = cli("train", "--resume", run, "--epochs", "2")
    assert_clean_error(res, 2, "optim.fc9.weight.momentum")
    assert snapshot(run) == before


def test_c17_pickle_payload_never_runs(cli, run_dir, tmp_path, picture):
    """A pickle whose loading would create a marker file: refused, marker absent."""
    import pickle  # noqa: S403 - building the hostile file only

    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = pickle.dumps(Payload(), protocol=2)
    model = bad_model(tmp_path, data)
    model_pt = model.with_name("model.pt")
    model_pt.write_bytes(data)
    for target in (model, model_pt):
        assert_clean_error(cli("eval", "--model", target, "--data", tmp_path / "x.npz"), 2,
                           target.name, "not a safetensors file")
        assert_clean_error(cli("infer", picture, "--model", target), 2, target.name)
        assert_clean_error(cli("train", "--resume", target), 2, target.name)
    run = copy_run(run_dir, tmp_path / "run")
    (run / "last.safetensors").write_bytes(data)
    assert_clean_error(cli("train", "--resume", run), 2, "last.safetensors")
    assert not marker.exists()


@pytest.mark.timeout(30)
def test_c18_special_files(cli, run_dir, tmp_path, picture):
    # a folder named like a checkpoint, with nothing in it
    folder = tmp_path / "model.safetensors"
    folder.mkdir()
    assert_clean_error(cli("eval", "--model", folder, "--data", tmp_path / "x.npz"), 2,
                       "model.safetensors", "holds no best.safetensors or last.safetensors")
    assert_clean_error(cli("infer", picture, "--model", folder), 2, "model.safetensors")
    # a FIFO: never opened for reading (that would block)
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    for args in (("eval", "--model", fifo, "--data", tmp_path / "x.npz"),
                 ("infer", picture, "--model", fifo), ("train", "--resume", fifo)):
        assert_clean_error(cli(*args), 2, "pipe.safetensors", "not a regular file")
    # the run folder's last checkpoint is a FIFO
    run = copy_run(run_dir, tmp_path / "run")
    (run / "last.safetensors").unlink()
    os.mkfifo(run / "last.safetensors")
    assert_clean_error(cli("train", "--resume", run), 2, "last.safetensors",
                       "not a regular file")
    if os.path.exists("/dev/zero"):
        for args in (("eval", "--model", "/dev/zero", "--data", tmp_path / "x.npz"),
                     ("infer", picture, "--model", "/dev/zero")):
            assert_clean_error(cli(*args), 2, "/dev/zero", "not a regular file")
    # a missing file
    assert_clean_error(cli("infer", picture, "--model", tmp_path / "gone.safetensors"), 2,
                       "gone.safetensors")


def test_c19_orphan_partial_beside_a_good_checkpoint(cli, run_dir, tmp_path, picture):
    """eval and infer on a run folder ignore a temporary file left by a killed save."""
    run = copy_run(run_dir, tmp_path / "run")
    (run / ".last.safetensors.4242.partial").write_bytes(b"half a checkpoint")
    res = cli("infer", picture, "--model", run, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"].endswith("best.safetensors")
    data = good_npz(tmp_path / "test.npz")
    assert cli("eval", "--model", run, "--data", data).exit_code == 0


def test_python_api_build_save_load_round_trip(tmp_path):
    import cnncli

    spec = write_config(tmp_path, tmp_path / "train.npz")
    net = cnncli.build(str(spec), seed=0)
    cnncli.save(net, tmp_path / "model.safetensors", {"classes": ["0", "1", "2"]})
    again, meta = cnncli.load(tmp_path / "model.safetensors")
    assert meta["classes"] == ["0", "1", "2"]
    for k, v in net.params.items():
        assert np.array_equal(again.params[k], v), k


def test_python_api_load_save_load_round_trip(run_dir, tmp_path):
    """What cnncli.load returns, cnncli.save writes back whole (a copy that loads again)."""
    import cnncli

    net, meta = cnncli.load(run_dir)
    cnncli.save(net, tmp_path / "copy.safetensors", meta)
    again, meta2 = cnncli.load(tmp_path / "copy.safetensors")
    assert meta2["config"] == meta["config"] and meta2["classes"] == meta["classes"]
    for k, v in net.params.items():
        assert np.array_equal(again.params[k], v), k
