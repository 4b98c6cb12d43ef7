"""`cnncli train` as a real process: signals, exact resume, the run lock, plain stderr."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train import write_tiny

from cnncli.io.checkpoint import read_checkpoint
from cnncli.train import rundir

pytestmark = pytest.mark.slow

# Identical for every leg of a comparison. The step delay (a private test hook) keeps the
# child busy for a moment after each progress line, so the signal lands where it is sent.
ENV = {
    "CNNCLI_PROGRESS": "jsonl",
    "OPENBLAS_NUM_THREADS": "1",
    "_CNNCLI_TEST_STEP_DELAY": "0.05",
}
STEP_SCHEDULE = "{type: step, step_size: 1, gamma: 0.5}"


def child_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "CI", "FORCE_COLOR")}
    env.update(ENV)
    env.update(extra or {})
    return env


def cnncli(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnncli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env or child_env())


def start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnncli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or child_env())


def wait_for_step(p: subprocess.Popen, epoch: int, step: int) -> list[str]:
    """Read the child's stderr until its progress line for (epoch, step)."""
    seen = []
    for line in p.stderr:
        seen.append(line)
        if line.startswith("{"):
            ev = json.loads(line)
            if ev["event"] == "step" and (ev["epoch"], ev["step"]) == (epoch, step):
                return seen
    p.kill()
    raise AssertionError("the child ended before the step event:\n" + "".join(seen))


def all_tensors(path: Path) -> dict:
    return read_checkpoint(path)[0]


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("last.safetensors", "best.safetensors"):
        ta, tb = all_tensors(a / name), all_tensors(b / name)
        assert sorted(ta) == sorted(tb), name
        for k in ta:
            assert np.array_equal(ta[k], tb[k]), (name, k)
    _, ma = read_checkpoint(a / "last.safetensors")
    _, mb = read_checkpoint(b / "last.safetensors")
    for key in ("epoch", "step_in_epoch", "global_step", "best_metric", "best_loss", "best_epoch",
                "metrics_rows", "rng", "normalization", "classes"):
        assert ma[key] == mb[key], key
    ra, rb = rundir.read_metrics(a / "metrics.csv"), rundir.read_metrics(b / "metrics.csv")
    cols = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    assert [[r[c] for c in cols] for r in ra] == [[r[c] for c in cols] for r in rb]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_mid_epoch_then_resume_is_bit_exact(tmp_path, sig, code):
    spec = write_tiny(tmp_path / "data", epochs=2, schedule=STEP_SCHEDULE)
    cut, ref = tmp_path / "cut", tmp_path / "ref"

    p = start("train", spec, "--out", cut, "--epochs", "1000")
    wait_for_step(p, 1, 2)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert "Traceback" not in err
    assert f"saved {cut}/last.safetensors; resume: cnncli train --resume {cut}" in err
    _, meta = read_checkpoint(cut / "last.safetensors")
    assert meta["epoch"] == 0 and 2 <= meta["step_in_epoch"] <= 4, meta["step_in_epoch"]
    assert f"interrupted at epoch 1 step {meta['step_in_epoch']}/5" in err
    assert not (cut / "run.lock").exists()
    assert not list(cut.glob(".*.partial"))

    res = cnncli("train", "--resume", cut, "--epochs", "2")
    assert res.returncode == 0, res.stderr
    res = cnncli("train", spec, "--out", ref)
    assert res.returncode == 0, res.stderr
    assert_same_run(cut, ref)
    assert len(rundir.read_metrics(cut / "metrics.csv")) == 2


def test_second_process_on_the_same_run_is_refused(tmp_path):
    spec = write_tiny(tmp_path / "data", epochs=2, schedule=STEP_SCHEDULE)
    run = tmp_path / "run"
    p = start("train", spec, "--out", run, "--epochs", "1000")
    try:
        wait_for_step(p, 1, 1)
        res = cnncli("train", "--resume", run, "--epochs", "2000")
        assert res.returncode == 2, res.stderr
        assert f"locked by pid {p.pid}" in res.stderr and "Traceback" not in res.stderr
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=60)
    assert p.returncode == 130


def test_pipe_gets_plain_lines_without_escape_codes(tmp_path):
    spec = write_tiny(tmp_path / "data", epochs=2)
    env = child_env({"CNNCLI_PROGRESS": "", "_CNNCLI_TEST_STEP_DELAY": "0", "TERM": "xterm"})
    res = cnncli("train", spec, "--out", tmp_path / "run", env=env)
    assert res.returncode == 0, res.stderr
    assert "\x1b[" not in res.stderr and "\x1b[" not in res.stdout
    epoch_lines = [x for x in res.stderr.splitlines() if x.startswith("epoch ")]
    assert [x.split()[1] for x in epoch_lines] == ["1/2", "2/2"]
    assert "test accuracy" in res.stdout


def test_json_document_on_stdout(tmp_path):
    spec = write_tiny(tmp_path / "data", epochs=1)
    res = cnncli("train", spec, "--out", tmp_path / "run", "--json",
                 env=child_env({"_CNNCLI_TEST_STEP_DELAY": "0"}))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)          # stdout holds exactly one JSON document
    assert {"run", "epochs", "best_val_acc", "final_val_acc", "test_acc", "seconds",
            "images_per_s"} <= set(doc)
