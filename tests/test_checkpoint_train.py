"""Checkpoints as training writes and resumes them: bad or odd files in a run folder."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from conftest import assert_clean_error
from safetensors.numpy import save as st_save
from test_train import write_tiny

from cnncli.io.checkpoint import MAGIC_KEY, read_checkpoint


@pytest.fixture
def run(cli, tmp_path):
    spec = write_tiny(tmp_path / "data", epochs=1)
    out = tmp_path / "run"
    res = cli("train", spec, "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    return out


def rewrite(path, change_tensors=None, change_meta=None):
    tensors, meta = read_checkpoint(path)
    meta.pop("file", None)
    if change_tensors:
        change_tensors(tensors)
    if change_meta:
        change_meta(meta)
    data = st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                   metadata={MAGIC_KEY: json.dumps(meta)})
    path.write_bytes(data)


def test_checkpoints_get_the_usual_file_mode(run):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("best.safetensors", "last.safetensors", "metrics.csv", "config.yaml"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_orphan_temp_file_is_removed_on_resume(cli, run):
    orphan = run / ".last.safetensors.4242.partial"
    orphan.write_bytes(b"half a checkpoint")
    res = cli("train", "--resume", run, "--epochs", "2")
    assert res.exit_code == 0, res.output
    assert not orphan.exists()
    assert "removed temporary files left by an interrupted save" in res.stderr


def test_non_finite_weights_refuse_resume(cli, run):
    def poison(t):
        t["conv1.weight"][0, 0, 0, 0] = np.nan

    rewrite(run / "last.safetensors", poison)
    assert_clean_error(cli("train", "--resume", run, "--epochs", "2"), 2, "non-finite",
                       "conv1.weight")


def test_truncated_last_refuses_resume(cli, run):
    data = (run / "last.safetensors").read_bytes()
    (run / "last.safetensors").write_bytes(data[: len(data) // 2])
    assert_clean_error(cli("train", "--resume", run, "--epochs", "2"), 2, "last.safetensors")


def test_empty_last_refuses_resume(cli, run):
    (run / "last.safetensors").write_bytes(b"")
    assert_clean_error(cli("train", "--resume", run, "--epochs", "2"), 2, "empty")


def test_wrong_shape_refuses_resume(cli, run):
    def widen(t):
        t["fc1.bias"] = np.zeros(9, np.float32)

    rewrite(run / "last.safetensors", widen)
    assert_clean_error(cli("train", "--resume", run, "--epochs", "2"), 2, "fc1.bias",
                       "shape")


@pytest.mark.parametrize("key", ["optim.fc1.bias.momentum", "optim.step"])
def test_missing_optimizer_state_refuses_resume(cli, run, key):
    rewrite(run / "last.safetensors", lambda t: t.pop(key))
    assert_clean_error(cli("train", "--resume", run, "--epochs", "2"), 2, key)


def test_bad_training_state_refuses_resume(cli, run):
    def bad(meta):
        meta["step_in_epoch"] = -3

    rewrite(run / "last.safetensors", change_meta=bad)
    assert_clean_error(cli("train", "--resume", run, "--epochs", "2"), 2, "step_in_epoch")


def test_not_a_safetensors_file(cli, tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)          # what a pickle starts with
    assert_clean_error(cli("train", "--resume", f), 2, "model.pt")
    header = json.dumps({"__metadata__": {MAGIC_KEY: "{}"}}).encode()
    f.write_bytes(struct.pack("<Q", len(header)) + header)
    assert_clean_error(cli("train", "--resume", f), 2, "format_version")
