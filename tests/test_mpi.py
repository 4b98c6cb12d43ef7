"""Data-parallel training: real `mpiexec -n K cnncli train` runs against one process.

A tiny float64 run (12x12 images, 45 training images, batch 10: shards of 5/5 and 3/3/4,
a last batch of 5 split 2/3 and 1/2/2) with augmentation and dropout on, so the test also
proves that random draws are per sample and do not depend on K.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnncli.io.checkpoint import read_checkpoint
from cnncli.train.distributed import (
    Dist,
    ShardRng,
    agreed_signal,
    find_mpiexec,
    signal_slots,
    world_from_env,
)

SPEC = """\
model:
  name: par
  input: [1, 12, 12]
  pattern: "INPUT -> [[CONV]*1 -> POOL]*1 -> [FC]*2"
  conv: {filters: 4, size: 3}
  pool: {type: max, size: 2}
  fc: {units: [8, 3], dropout: [0.25, 0.0]}
data:
  train: train.npz
  test: test.npz
  val_split: 0.2
  normalize: standardize
  augment: {rotate: 10, shift: 1, scale: 0.1, noise: 0.02}
train:
  epochs: 2
  batch_size: 10
  dtype: float64
  loss: cross_entropy
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
  schedule: {type: none}
  weight_decay: 1.0e-4
  seed: 0
"""
TIMEOUT = 60


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes: a bright top half, a bright left half, noise alone."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 80, size=(n, 1, 12, 12))
    x[y == 0, :, :6, :] += 150
    x[y == 1, :, :, :6] += 150
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mpi-data")
    for name, n, s in (("train.npz", 56, 1), ("test.npz", 21, 2)):
        x, y = make_images(n, s)
        np.savez(folder / name, x=x, y=y)
    (folder / "spec.yaml").write_text(SPEC)
    return folder


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory) -> dict:
    """last.safetensors of the same run in one process, after 2 epochs."""
    from cnncli.spec import load_config
    from cnncli.train.loop import train

    out = tmp_path_factory.mktemp("mpi-base") / "run"
    res = train(load_config(str(data / "spec.yaml")), out=out)
    assert res.epochs == 2
    return read_checkpoint(out / "last.safetensors")[0]


@pytest.fixture(scope="module")
def mpiexec() -> str:
    pytest.importorskip("mpi4py")
    path = find_mpiexec()
    if path is None:
        pytest.skip("no mpiexec")
    return path


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "OMPI_", "PMIX_", "_CNNCLI_", "CNNCLI_PROGRESS"))}
    env.update(extra)
    return env


def mpi_train(mpiexec: str, k: int, *args, cwd: Path, env: dict | None = None,
              ) -> subprocess.CompletedProcess:
    cmd = [mpiexec, "-n", str(k), sys.executable, "-m", "cnncli", "train", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False, stdin=subprocess.DEVNULL)


def assert_same_weights(run: Path, ref: dict) -> None:
    got = read_checkpoint(run / "last.safetensors")[0]
    assert sorted(got) == sorted(ref)
    for name, a in ref.items():
        assert got[name].dtype == a.dtype == np.float64 or name == "optim.step", name
        assert np.allclose(got[name], a, rtol=1e-10, atol=1e-13), (
            name, float(np.max(np.abs(got[name] - a))))


def epoch_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("epoch ")]


# ---- pieces that need no MPI ------------------------------------------------------------------


def test_world_from_env_reads_launcher_variables():
    assert world_from_env({}) is None
    assert world_from_env({"PMI_RANK": "0", "PMI_SIZE": "1"}) is None  # one process: plain
    assert world_from_env({"PMI_RANK": "2", "PMI_SIZE": "3"}) == (2, 3)
    assert world_from_env({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4"}) == (1, 4)
    assert world_from_env({"PMI_SIZE": "x"}) is None


def test_shards_are_contiguous_and_cover_the_batch():
    class Fake:
        def Get_rank(self):
            return 0

        def Get_size(self):
            return 3

    d = Dist(Fake(), None)
    for n in (1, 2, 5, 10, 128):
        bounds = [d.shard(n, r) for r in range(3)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(bounds[i][1] == bounds[i + 1][0] for i in range(2))
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) - min(sizes) <= 1


def test_shard_rng_gives_each_rank_its_rows_of_the_global_draw():
    full = np.random.default_rng([3, 1, 4])
    u = full.random((10, 4))
    z = full.standard_normal((10, 1, 3, 3), dtype=np.float32)
    d = full.random((10, 8), dtype=np.float32)
    for lo, hi in ((0, 3), (3, 6), (6, 10), (9, 10)):
        r = ShardRng(np.random.default_rng([3, 1, 4]), 10, lo, hi)
        assert np.array_equal(r.random((hi - lo, 4)), u[lo:hi])
        assert np.array_equal(r.standard_normal((hi - lo, 1, 3, 3), dtype=np.float32),
                              z[lo:hi])
        assert np.array_equal(r.random((hi - lo, 8), dtype=np.float32), d[lo:hi])
    with pytest.raises(ValueError):
        ShardRng(np.random.default_rng(0), 10, 0, 3).random((4, 2))


def test_stop_signals_combine_over_ranks():
    assert agreed_signal(*signal_slots(None)) is None
    assert agreed_signal(*signal_slots(signal.SIGINT)) == signal.SIGINT
    a, b = (x + y for x, y in zip(signal_slots(signal.SIGINT), signal_slots(signal.SIGTERM),
                                  strict=True))
    assert agreed_signal(a, b) == signal.SIGTERM


def test_workers_without_mpi_says_how_to_install(cli, data, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mpi4py" else real(name, *a))
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    res = cli("train", data / "spec.yaml", "--workers", "2", "--out", tmp_path / "run")
    assert res.exit_code == 2, res.output
    assert "pip install 'cnncli[mpi]'" in res.output and "mpi4py" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


# ---- real mpiexec runs ------------------------------------------------------------------------


@pytest.mark.slow
def test_two_ranks_train_the_model_one_process_trains(mpiexec, data, baseline, tmp_path):
    res = mpi_train(mpiexec, 2, data / "spec.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["latest", "par-1"]
    assert_same_weights(runs / "par-1", baseline)
    # one voice: rank 0 alone prints progress and the result
    assert len(epoch_lines(res.stderr)) == 2, res.stderr
    assert res.stderr.count("run folder:") == 1
    assert res.stderr.count("network par") == 1
    assert res.stdout.count("run: ") == 1
    assert "data parallel: 2 processes" in res.stderr
    names = sorted(p.name for p in (runs / "par-1").iterdir())
    assert names == ["best.safetensors", "config.yaml", "curves.png", "last.safetensors",
                     "metrics.csv"]


@pytest.mark.slow
def test_three_ranks_uneven_shards_json(mpiexec, data, baseline, tmp_path):
    out = tmp_path / "run"
    res = mpi_train(mpiexec, 3, data / "spec.yaml", "--out", out, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert_same_weights(out, baseline)
    doc = json.loads(res.stdout)  # one document: rank 0 alone wrote stdout
    assert doc["workers"] == 3 and doc["epochs"] == 2 and doc["allreduce_seconds"] > 0
    assert 0.0 <= doc["test_acc"] <= 1.0 and doc["test_samples"] == 21
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3


@pytest.mark.slow
def test_float32_differs_by_rounding_only(mpiexec, data, tmp_path):
    from cnncli.spec import load_config
    from cnncli.train.loop import train

    f32 = ("train.dtype=float32",)
    train(load_config(str(data / "spec.yaml"), f32), out=tmp_path / "one")
    res = mpi_train(mpiexec, 2, data / "spec.yaml", "--out", tmp_path / "two", "--set", f32[0],
                    "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    a = read_checkpoint(tmp_path / "one" / "last.safetensors")[0]
    b = read_checkpoint(tmp_path / "two" / "last.safetensors")[0]
    for name in a:
        if name.startswith("optim.step"):
            continue
        assert b[name].dtype == np.float32, name
        assert np.allclose(b[name], a[name], rtol=1e-4, atol=1e-5), name


@pytest.mark.slow
@pytest.mark.parametrize("where", ["step", "setup"])
def test_a_failing_rank_stops_every_rank(mpiexec, data, tmp_path, where):
    out = tmp_path / "run"
    spec = "1" if where == "step" else "1:setup"
    t = time.perf_counter()
    res = mpi_train(mpiexec, 3, data / "spec.yaml", "--out", out, cwd=tmp_path,
                    env=clean_env(_CNNCLI_TEST_FAIL_RANK=spec))
    assert time.perf_counter() - t < TIMEOUT
    assert res.returncode == 2, res.stderr
    err = res.stderr
    assert err.count(f"error: rank 1 of 3: injected failure on rank 1 ({where})") == 1, err
    assert err.count("error:") == 1, err
    assert "Traceback" not in err and "Abort" not in err
    assert not epoch_lines(err)
    if where == "setup":  # a folder that never got past set-up is removed
        assert not out.exists()
    else:
        assert not (out / "last.safetensors").exists()


@pytest.mark.slow
def test_resume_with_another_number_of_ranks(mpiexec, data, baseline, tmp_path):
    out = tmp_path / "run"
    res = mpi_train(mpiexec, 2, data / "spec.yaml", "--out", out, "--epochs", "1",
                    cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = mpi_train(mpiexec, 3, "--resume", out, "--epochs", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stderr and len(epoch_lines(res.stderr)) == 1
    assert_same_weights(out, baseline)


@pytest.mark.slow
def test_workers_option_starts_mpiexec(mpiexec, data, baseline, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cnncli", "train", str(data / "spec.yaml"), "--workers", "2",
           "--out", str(out), "--json", "--quiet"]
    res = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                         timeout=TIMEOUT, check=False)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["workers"] == 2
    assert_same_weights(out, baseline)


@pytest.mark.slow
def test_ctrl_c_saves_once_and_resumes_in_one_process(mpiexec, data, baseline, tmp_path):
    out = tmp_path / "run"
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "cnncli", "train",
           str(data / "spec.yaml"), "--out", str(out)]
    env = clean_env(_CNNCLI_TEST_STEP_DELAY="0.15")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        lines = []
        for line in proc.stderr:  # wait for epoch 1, then interrupt epoch 2
            lines.append(line)
            if line.startswith("epoch 1/2"):
                break
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert err.count("interrupted at epoch 2 step") == 1, err
    meta = read_checkpoint(out / "last.safetensors")[1]
    assert meta["epoch"] == 1 and 0 < meta["step_in_epoch"] < 5
    # the checkpoint holds no rank state: one process finishes the run
    from cnncli.train.loop import prepare_resume, train

    train(prepare_resume(out).config, resume=prepare_resume(out))
    assert_same_weights(out, baseline)
