"""`cnncli train` end to end on a tiny dataset (8x8 images, 3 classes, < 1 s a run)."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_clean_error

from cnncli.errors import CheckFailed, Interrupted
from cnncli.io.checkpoint import OPTIM_PREFIX, read_checkpoint
from cnncli.spec import load_config
from cnncli.train import rundir
from cnncli.train.loop import Callbacks, prepare_resume, train
from cnncli.train.schedules import lr_at
from cnncli.train.signals import StopFlag

SPEC = """\
model:
  name: tiny
  input: [1, 8, 8]
  pattern: "INPUT -> [[CONV]*1 -> POOL]*1 -> [FC]*2"
  conv: {{filters: 4, size: 3}}
  pool: {{type: max, size: 2}}
  fc: {{units: [8, 3], dropout: [0.25, 0.0]}}
data:
  train: train.npz
  test: test.npz
  val_split: 0.25
  normalize: standardize
  augment: {{shift: 1, noise: 0.02}}
train:
  epochs: {epochs}
  batch_size: 8
  loss: cross_entropy
  optimizer: {{type: sgd, lr: 0.05, momentum: 0.9}}
  schedule: {schedule}
  weight_decay: 1.0e-4
  seed: 0
"""


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three easy classes: a bright top half, a bright left half, a bright diagonal."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 60, size=(n, 1, 8, 8))
    x[y == 0, :, :4, :] += 150
    x[y == 1, :, :, :4] += 150
    eye = np.eye(8, dtype=bool) | np.eye(8, k=1, dtype=bool)
    x[np.ix_(y == 2, [0])][..., eye] += 150
    d = x[y == 2]
    d[:, 0][:, eye] += 150
    x[y == 2] = d
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def write_tiny(folder: Path, epochs: int = 2, schedule: str = "{type: cosine}") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train.npz", 48, 1), ("test.npz", 24, 2)):
        if not (folder / name).exists():
            x, y = make_images(n, seed)
            np.savez(folder / name, x=x, y=y)
    spec = folder / "spec.yaml"
    spec.write_text(SPEC.format(epochs=epochs, schedule=schedule))
    return spec


@pytest.fixture
def tiny(tmp_path):
    spec = write_tiny(tmp_path / "data")
    return SimpleNamespace(spec=spec, folder=tmp_path / "data", tmp=tmp_path)


def tensors_of(path: Path) -> dict:
    return read_checkpoint(path)[0]


def same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors_of(a), tensors_of(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype, k
        assert np.array_equal(ta[k], tb[k]), k


def metric_cols(rows: list[dict]) -> list[tuple]:
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    return [tuple(r[k] for k in keys) for r in rows]


# ---- the run folder ---------------------------------------------------------------------------


def test_run_folder_contents(cli, tiny):
    out = tiny.tmp / "run"
    res = cli("train", tiny.spec, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["best.safetensors", "last.safetensors", "config.yaml", "metrics.csv", "curves.png"]
    )

    doc = json.loads(res.stdout)
    for key in ("run", "epochs", "best_val_acc", "final_val_acc", "test_acc", "seconds",
                "images_per_s"):
        assert key in doc, key
    assert doc["run"] == str(out) and doc["epochs"] == 2
    assert 0.0 <= doc["test_acc"] <= 1.0 and doc["images_per_s"] > 0

    best, bmeta = read_checkpoint(out / "best.safetensors")
    last, lmeta = read_checkpoint(out / "last.safetensors")
    assert not any(k.startswith(OPTIM_PREFIX) for k in best)
    assert any(k.startswith(OPTIM_PREFIX) for k in last)
    assert sorted(k for k in last if not k.startswith(OPTIM_PREFIX)) == sorted(best)
    for meta in (bmeta, lmeta):
        assert meta["format_version"] >= 1
        assert meta["classes"] == ["0", "1", "2"]
        assert meta["dtype"] == "float32"
        norm = meta["normalization"]
        assert norm["mode"] == "standardize" and len(norm["mean"]) == 1 and norm["std"][0] > 0
        assert meta["config"]["train"]["epochs"] == 2
        assert meta["config"]["data"]["framing"] in ("digit", "resize")
    assert lmeta["epoch"] == 2 and lmeta["step_in_epoch"] == 0
    assert lmeta["global_step"] == 2 * 5          # 36 training images / batch 8 = 5 steps
    assert lmeta["metrics_rows"] == 2 and lmeta["finished"] is True
    assert lmeta["best_metric"] == doc["best_val_acc"]
    assert lmeta["rng"]["seed"] == 0

    # config.yaml is the resolved config and loads again to the same network
    again = load_config(out / "config.yaml")
    assert again.resolved == lmeta["config"]
    assert again.model == load_config(tiny.spec).model

    rows = rundir.read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (out / "metrics.csv").read_text().splitlines()[0] == (
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,images_per_s"
    )
    sched = load_config(tiny.spec).train.schedule
    assert [r["lr"] for r in rows] == [lr_at(sched, 0.05, e, 0, 5, 2) for e in range(2)]
    for r in rows:
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1
        assert r["train_loss"] > 0 and r["val_loss"] > 0 and r["seconds"] > 0
    assert doc["final_val_acc"] == rows[-1]["val_acc"]

    from PIL import Image

    with Image.open(out / "curves.png") as im:
        assert im.format == "PNG"
        assert 400 <= im.width <= 3000 and 200 <= im.height <= 2000


def test_default_folders_count_up_and_latest_follows(cli, tiny, monkeypatch):
    monkeypatch.chdir(tiny.tmp)
    for _ in range(2):
        res = cli("train", tiny.spec, "--epochs", "1", "--quiet")
        assert res.exit_code == 0, res.output
    runs = tiny.tmp / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["latest", "tiny-1", "tiny-2"]
    assert (runs / "latest").is_symlink() and os.readlink(runs / "latest") == "tiny-2"
    assert "runs/tiny-2" in res.stdout


def test_non_empty_out_is_refused_and_left_alone(cli, tiny):
    out = tiny.tmp / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = cli("train", tiny.spec, "--out", out)
    assert_clean_error(res, 2, "not empty", "--resume")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_out_that_is_a_file_is_refused(cli, tiny):
    f = tiny.tmp / "afile"
    f.write_text("x")
    assert_clean_error(cli("train", tiny.spec, "--out", f), 2, "not a folder")


def test_unwritable_out_is_refused_before_data_is_read(cli, tiny, monkeypatch, readonly_probe):
    import cnncli.io.datasets as datasets

    def no_read(*a, **k):
        raise AssertionError("data read before the write probe")

    monkeypatch.setattr(datasets, "load_dataset", no_read)
    res = cli("train", tiny.spec, "--out", tiny.tmp / "ro")
    assert_clean_error(res, 2, "cannot write to", "read-only")


def test_bad_data_leaves_no_empty_run_folder(cli, tiny, monkeypatch):
    monkeypatch.chdir(tiny.tmp)
    res = cli("train", tiny.spec, "--set", "data.train=missing.npz")
    assert_clean_error(res, 2, "missing.npz")
    assert not (tiny.tmp / "runs").exists()         # made for the run, removed with it
    # a runs/ folder that was there before stays, with nothing new in it
    (tiny.tmp / "runs").mkdir()
    (tiny.tmp / "runs" / "old-1").mkdir()
    res = cli("train", tiny.spec, "--set", "data.train=missing.npz")
    assert_clean_error(res, 2, "missing.npz")
    assert [p.name for p in (tiny.tmp / "runs").iterdir()] == ["old-1"]


def test_memory_preflight_refuses_before_anything_is_created(cli, tiny):
    out = tiny.tmp / "big"
    res = cli("train", tiny.spec, "--out", out, "--set", "model.input=[1,1000,1000]",
              "--set", "train.batch_size=1000")
    assert_clean_error(res, 2, "train.batch_size", "needs about", "GiB")
    assert not out.exists()


def test_schedule_rates_reach_the_metrics(cli, tiny):
    spec = write_tiny(tiny.folder, epochs=3, schedule="{type: step, step_size: 1, gamma: 0.5}")
    out = tiny.tmp / "run"
    assert cli("train", spec, "--out", out, "--quiet").exit_code == 0
    rows = rundir.read_metrics(out / "metrics.csv")
    assert [r["lr"] for r in rows] == [0.05, 0.025, 0.0125]


def test_early_stopping(cli, tiny):
    # a learning rate this small cannot improve validation accuracy after epoch 1
    out = tiny.tmp / "run"
    res = cli("train", tiny.spec, "--out", out, "--json", "--epochs", "6",
              "--set", "train.optimizer.lr=1e-12", "--set", "train.early_stopping=2")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["stopped_early"] is True and doc["epochs"] == 3
    _, meta = read_checkpoint(out / "last.safetensors")
    assert meta["early_stopping_counter"] == 2 and meta["finished"] is True
    # resuming an early-stopped run has nothing to do
    res = cli("train", "--resume", out)
    assert res.exit_code == 0, res.output
    assert "already complete" in res.stderr


def test_jsonl_progress(cli, tiny):
    res = cli("train", tiny.spec, "--out", tiny.tmp / "run", env={"CNNCLI_PROGRESS": "jsonl"})
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 10 and steps[0]["epoch"] == 1 and steps[0]["step"] == 1
    assert {"loss", "acc", "lr", "images_per_s", "steps"} <= set(steps[0])
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    assert all(line.startswith("{") for line in res.stderr.splitlines()), res.stderr


def test_plain_progress_is_one_line_per_epoch(cli, tiny):
    res = cli("train", tiny.spec, "--out", tiny.tmp / "run", env={"CNNCLI_PROGRESS": ""})
    assert res.exit_code == 0, res.output
    assert "\x1b[" not in res.output
    lines = [x for x in res.stderr.splitlines() if x.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and "val loss" in lines[0]
    assert "conv1" in res.stderr and "fc2" in res.stderr         # the layer table
    assert "test accuracy" in res.stdout and "run:" in res.stdout


# ---- resume -----------------------------------------------------------------------------------


class StopAfter(Callbacks):
    """Raise the stop flag after step ``step`` of epoch ``epoch`` (as a signal would)."""

    def __init__(self, flag: StopFlag, epoch: int, step: int, signum=signal.SIGINT) -> None:
        self.flag, self.at, self.signum = flag, (epoch, step), signum

    def on_step(self, info: dict) -> None:
        if (info["epoch"], info["step"]) == self.at:
            self.flag.request(self.signum)


@pytest.mark.parametrize("where", [(1, 2), (2, 4), (1, 5)], ids=["mid-1", "mid-2", "boundary"])
def test_resume_in_process_is_bit_exact(tiny, where):
    cfg = load_config(tiny.spec)
    ref = tiny.tmp / "ref"
    train(cfg, out=ref)
    run = tiny.tmp / "cut"
    flag = StopFlag()
    with pytest.raises(Interrupted) as e:
        train(cfg, out=run, callbacks=StopAfter(flag, *where), stop=flag)
    assert e.value.code == 130
    epoch, step = where
    shown = f"epoch {epoch} step {step}/5"
    assert f"interrupted at {shown}" in e.value.message
    assert f"resume: cnncli train --resume {run}" in e.value.message
    _, meta = read_checkpoint(run / "last.safetensors")
    assert (meta["epoch"], meta["step_in_epoch"]) == ((epoch - 1, step) if step < 5 else (1, 0))
    assert meta["metrics_rows"] == len(rundir.read_metrics(run / "metrics.csv"))

    state = prepare_resume(run)
    result = train(state.config, resume=state)
    assert result.resumed and result.epochs == 2
    same_tensors(ref / "last.safetensors", run / "last.safetensors")
    same_tensors(ref / "best.safetensors", run / "best.safetensors")
    a, b = rundir.read_metrics(ref / "metrics.csv"), rundir.read_metrics(run / "metrics.csv")
    assert metric_cols(a) == metric_cols(b)
    _, ma = read_checkpoint(ref / "last.safetensors")
    _, mb = read_checkpoint(run / "last.safetensors")
    for key in ("epoch", "step_in_epoch", "global_step", "best_metric", "best_loss", "best_epoch",
                "early_stopping_counter", "metrics_rows", "rng", "normalization", "config"):
        assert ma[key] == mb[key], key


def test_resume_extends_the_run(cli, tiny):
    spec = write_tiny(tiny.folder, epochs=3, schedule="{type: step, step_size: 2, gamma: 0.5}")
    ref, run = tiny.tmp / "ref", tiny.tmp / "run"
    assert cli("train", spec, "--out", ref, "--quiet").exit_code == 0
    assert cli("train", spec, "--out", run, "--epochs", "2", "--quiet").exit_code == 0
    res = cli("train", "--resume", run, "--set", "train.epochs=3")
    assert res.exit_code == 0, res.output
    assert "changed: train.epochs" in res.stderr
    same_tensors(ref / "last.safetensors", run / "last.safetensors")
    assert len(rundir.read_metrics(run / "metrics.csv")) == 3
    assert load_config(run / "config.yaml").train.epochs == 3


def test_resume_of_a_finished_run_is_a_no_op(cli, tiny):
    out = tiny.tmp / "run"
    assert cli("train", tiny.spec, "--out", out, "--quiet").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = cli("train", "--resume", out / "last.safetensors", "--json")
    assert res.exit_code == 0, res.output
    assert "run already complete (epoch 2/2)" in res.stderr
    doc = json.loads(res.stdout)
    assert doc["status"] == "already_complete" and doc["epochs"] == 2
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "config.yaml"}
    assert after == {k: v for k, v in before.items() if k != "config.yaml"}


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.input=[1,9,9]", "model.input"),
        ("data.val_split=0.5", "data.val_split"),
        ("train.seed=3", "train.seed"),
        ("train.optimizer.type=adam", "train.optimizer.type"),
    ],
)
def test_resume_refuses_changes_outside_train(cli, tiny, override, key):
    out = tiny.tmp / "run"
    assert cli("train", tiny.spec, "--out", out, "--epochs", "1", "--quiet").exit_code == 0
    before = (out / "last.safetensors").read_bytes()
    res = cli("train", "--resume", out, "--set", override, "--epochs", "2")
    assert_clean_error(res, 2, key, "cannot change when resuming")
    assert (out / "last.safetensors").read_bytes() == before


def test_resume_from_best_is_refused(cli, tiny):
    out = tiny.tmp / "run"
    assert cli("train", tiny.spec, "--out", out, "--epochs", "1", "--quiet").exit_code == 0
    res = cli("train", "--resume", out / "best.safetensors", "--epochs", "2")
    assert_clean_error(res, 2, "no optimizer state")


def test_resume_with_a_config_is_refused(cli, tiny):
    res = cli("train", tiny.spec, "--resume", tiny.tmp / "whatever")
    assert_clean_error(res, 2, "either CONFIG or --resume")


def test_resume_of_a_folder_without_last(cli, tiny):
    (tiny.tmp / "empty").mkdir()
    assert_clean_error(cli("train", "--resume", tiny.tmp / "empty"), 2, "no last.safetensors")


def test_locked_run_folder_is_refused(cli, tiny):
    out = tiny.tmp / "run"
    assert cli("train", tiny.spec, "--out", out, "--epochs", "1", "--quiet").exit_code == 0
    before = (out / "last.safetensors").read_bytes()
    (out / "run.lock").write_text(f"{os.getppid()}\n")       # a live process
    res = cli("train", "--resume", out, "--epochs", "2")
    assert_clean_error(res, 2, f"locked by pid {os.getppid()}")
    assert (out / "last.safetensors").read_bytes() == before
    # a stale lock (dead pid) is taken over
    (out / "run.lock").write_text("999999999\n")
    res = cli("train", "--resume", out, "--epochs", "2", "--quiet")
    assert res.exit_code == 0, res.output
    assert not (out / "run.lock").exists()


# ---- failures ---------------------------------------------------------------------------------


def test_non_finite_loss_stops_and_keeps_last(cli, tiny):
    out = tiny.tmp / "run"
    assert cli("train", tiny.spec, "--out", out, "--epochs", "1", "--quiet").exit_code == 0
    before = (out / "last.safetensors").read_bytes()
    res = cli("train", "--resume", out, "--epochs", "2", "--set", "train.optimizer.lr=1e30")
    assert_clean_error(res, 1, "loss became NaN", "last good checkpoint kept",
                       "lower train.optimizer.lr (currently 1e30)")
    # the cosine schedule has lowered the rate a little by then
    assert re.search(r"at epoch 2 step \d \(lr=[0-9.]+e29\)", res.stderr), res.stderr
    assert (out / "last.safetensors").read_bytes() == before
    doc = json.loads((out / "diverged.json").read_text())
    assert doc["epoch"] == 2 and 1e29 < doc["lr"] <= 1e30 and doc["step"] >= 1
    assert not list(out.glob(".*.partial"))


def test_non_finite_loss_on_a_new_run(tiny):
    cfg = load_config(tiny.spec, ["train.optimizer.lr=1e30"])
    out = tiny.tmp / "run"
    with pytest.raises(CheckFailed) as e:
        train(cfg, out=out)
    assert e.value.code == 1 and "no checkpoint was saved" in e.value.message
    assert not (out / "last.safetensors").exists()
    assert (out / "diverged.json").exists()


def test_non_finite_gradients_stop(tiny, monkeypatch):
    from cnncli.engine.network import Network

    real = Network.backward

    def poisoned(self, dlogits, input_grad=True):
        out = real(self, dlogits, input_grad=input_grad)
        next(iter(self.grads.values()))[...] = np.nan
        return out

    monkeypatch.setattr(Network, "backward", poisoned)
    with pytest.raises(CheckFailed, match="gradients became non-finite at epoch 1 step 1"):
        train(load_config(tiny.spec), out=tiny.tmp / "run")


def test_failed_rename_keeps_the_previous_last(cli, tiny, monkeypatch):
    out = tiny.tmp / "run"
    assert cli("train", tiny.spec, "--out", out, "--epochs", "1", "--quiet").exit_code == 0
    before = (out / "last.safetensors").read_bytes()
    real_replace = os.replace

    def failing(src, dst, *a, **k):
        if str(dst).endswith("last.safetensors"):
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing)
    res = cli("train", "--resume", out, "--epochs", "2")
    assert_clean_error(res, 3, "last.safetensors", "intact")
    assert (out / "last.safetensors").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial")]
    assert not (out / "run.lock").exists()
    tensors_of(out / "last.safetensors")                       # still loads


def test_disk_full_during_save_exits_3(cli, tiny, monkeypatch):
    out = tiny.tmp / "run"
    assert cli("train", tiny.spec, "--out", out, "--epochs", "1", "--quiet").exit_code == 0
    before = (out / "last.safetensors").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    res = cli("train", "--resume", out, "--epochs", "2")
    assert_clean_error(res, 3, "no space left on device")
    assert (out / "last.safetensors").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial")]
