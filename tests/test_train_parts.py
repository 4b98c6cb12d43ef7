"""The pieces of `cnncli train` that need no engine: run folders, lock, metrics, memory,
signals, curves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cnncli.errors import CnncliError, UsageError
from cnncli.spec.model import FC, Activation, Conv, NetSpec, Pool
from cnncli.train import memory, rundir
from cnncli.train.signals import stop_on_signals


def tiny_spec(batch_units: int = 3) -> NetSpec:
    conv = Conv(
        name="conv1", in_shape=(1, 8, 8), out_shape=(4, 6, 6), filters=4, size=(3, 3),
        stride=(1, 1), padding=(0, 0, 0, 0), padding_mode="valid", activation=Activation(),
        init="he",
    )
    pool = Pool(
        name="pool1", in_shape=(4, 6, 6), out_shape=(4, 3, 3), type="max", size=(2, 2),
        stride=(2, 2), activation=Activation("none"),
    )
    fc = FC(name="fc1", in_shape=(4, 3, 3), out_shape=(batch_units,), units=batch_units,
            activation=Activation("none"), init="xavier")
    return NetSpec(name="tiny", input=(1, 8, 8), layers=(conv, pool, fc))


# ---- memory -------------------------------------------------------------------------------------


def test_memory_estimate_by_hand():
    est = memory.estimate_bytes(tiny_spec(), batch_size=10, dtype="float32")
    # params: conv 4*1*3*3 + 4 = 40, fc 3*36 + 3 = 111 -> 151 x 4 copies x 4 bytes
    assert est["params"] == 151 * 4 * 4
    # per image: input 64 + conv out 144 + im2col 36*9 + pool 36 + fc 3 = 571
    assert est["activations"] == 571 * 10 * 3 * 4
    assert est["total"] == est["params"] + est["activations"]
    est64 = memory.estimate_bytes(tiny_spec(), batch_size=10, dtype="float64")
    assert est64["total"] == 2 * est["total"]


def test_memory_refuses_beyond_half_the_available_ram():
    spec = tiny_spec()
    need = memory.estimate_bytes(spec, 10, "float32")["total"]
    memory.check_fits(spec, 10, "float32", available=2 * need)  # exactly at the limit: fine
    with pytest.raises(CnncliError) as e:
        memory.check_fits(spec, 10, "float32", available=2 * need - 2)
    assert e.value.code == 2
    assert "train.batch_size" in str(e.value) and "needs about" in str(e.value)


def test_giant_batch_is_refused_instantly():
    import time

    t = time.perf_counter()
    with pytest.raises(CnncliError) as e:
        memory.check_fits(tiny_spec(), 10_000_000_000, "float32")
    assert time.perf_counter() - t < 0.5
    assert "batch_size 10000000000" in str(e.value)


def test_available_memory_parses_meminfo(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24683272 kB\nMemFree:   100 kB\nMemAvailable:   2048 kB\n")
    assert memory.available_memory(f) == 2048 * 1024
    f.write_text("MemTotal: 10 kB\nMemFree: 7 kB\n")
    assert memory.available_memory(f) == 7 * 1024
    assert memory.available_memory(tmp_path / "absent") is None
    assert memory.available_memory() > 0


# ---- run folders --------------------------------------------------------------------------------


def test_new_run_dir_numbers_increase(tmp_path):
    base = tmp_path / "runs"
    a = rundir.new_run_dir(base, "net")
    b = rundir.new_run_dir(base, "net")
    assert (a.name, b.name) == ("net-1", "net-2")
    (base / "net-7").mkdir()
    (base / "other-9").mkdir()
    assert rundir.new_run_dir(base, "net").name == "net-8"
    assert rundir.new_run_dir(base, "a b/c").name == "a-b-c-1"


def test_check_out_dir(tmp_path):
    rundir.check_out_dir(tmp_path / "new")          # absent: fine
    (tmp_path / "empty").mkdir()
    rundir.check_out_dir(tmp_path / "empty")        # empty: fine
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("1")
    with pytest.raises(UsageError, match="not empty"):
        rundir.check_out_dir(tmp_path / "full")
    (tmp_path / "file").write_text("1")
    with pytest.raises(UsageError, match="not a folder"):
        rundir.check_out_dir(tmp_path / "file")


def test_probe_reports_unwritable_folder(tmp_path, request):
    rundir.probe_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []
    request.getfixturevalue("readonly_probe")
    with pytest.raises(CnncliError) as e:
        rundir.probe_writable(tmp_path)
    assert e.value.code == 2 and "read-only" in str(e.value)


def test_lock_excludes_a_live_pid_and_takes_a_stale_one(tmp_path):
    lock = rundir.RunLock(tmp_path)
    lock.acquire()
    assert (tmp_path / "run.lock").read_text().strip() == str(os.getpid())
    with pytest.raises(UsageError, match=f"locked by pid {os.getpid()}"):
        rundir.RunLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / "run.lock").exists()

    # a lock left by a process that has exited is stale
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)
    (tmp_path / "run.lock").write_text(p.stdout)
    with rundir.RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / "run.lock").exists()


def test_metrics_round_trip(tmp_path):
    rows = [
        {"epoch": 1, "train_loss": 1.5, "train_acc": 0.5, "val_loss": 1.25, "val_acc": 0.625,
         "lr": 0.05, "seconds": 2.0, "images_per_s": 1000.0},
        {"epoch": 2, "train_loss": 0.1 + 0.2, "train_acc": 0.75, "val_loss": None,
         "val_acc": None, "lr": 0.025, "seconds": 2.5, "images_per_s": 900.5},
    ]
    path = tmp_path / "metrics.csv"
    rundir.write_metrics(path, rows)
    assert path.read_text().splitlines()[0] == ",".join(rundir.METRICS_FIELDS)
    assert rundir.read_metrics(path) == rows        # floats survive exactly
    assert rundir.read_metrics(tmp_path / "absent.csv") == []


# ---- signals ------------------------------------------------------------------------------------


def test_signal_handler_only_sets_a_flag_and_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as flag:
        assert not flag
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_second_signal_exits_at_once(tmp_path):
    code = (
        "import os, signal, time\n"
        "from cnncli.train.signals import stop_on_signals\n"
        "with stop_on_signals() as f:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert f.signum == signal.SIGINT\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "print('not reached')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert p.returncode == 130, p.stderr
    assert "not reached" not in p.stdout


# ---- curves -------------------------------------------------------------------------------------


def test_curves_png(tmp_path):
    from PIL import Image

    from cnncli.viz.curves import render_curves, save_curves

    rows = [
        {"epoch": e, "train_loss": 2 / e, "val_loss": 2.1 / e, "train_acc": 1 - 0.5 / e,
         "val_acc": 1 - 0.4 / e}
        for e in range(1, 6)
    ]
    path = tmp_path / "curves.png"
    save_curves(rows, path, title="t")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1000, 420)
        px = im.convert("RGB")
        colours = {px.getpixel((x, y)) for x in range(0, 1000, 3) for y in range(0, 420, 3)}
    # both series were drawn
    assert (31, 119, 180) in colours and (230, 120, 20) in colours
    # degenerate inputs still draw
    render_curves([])
    render_curves([{"epoch": 1, "train_loss": float("nan"), "train_acc": None}])
