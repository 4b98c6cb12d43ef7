"""RELIABILITY.md section 3.4: runtime faults not already covered by tests/test_train*.py.

Covered here: R02 (second SIGINT during the save), R04 (SIGKILL during the save), R05 (file
size limit: EFBIG on the save), R06 (metrics.csv / curves.png cannot be written), R07 (read-only
output folder, with a real read-only bind mount), R08 (--out under a file), R09 (--out is a
finished run), R13 (MemoryError), R17 (stdout closed early), R18 (resume under another thread
count), R19 (an internal bug: exit 70 and a crash log), R20 (no escape codes or boxes in a pipe,
every command). Faults are injected by monkeypatching in-process, or in a child process by
wrapping ``os.replace`` before the CLI starts (Decision 15).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_clean_error
from test_reliability_data import good_npz, png_bytes, tiny_images, write_config

from cnncli.io.checkpoint import read_checkpoint
from cnncli.train import rundir

# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run in a scratch folder: a crash log or a runs/ folder lands there."""
    monkeypatch.chdir(tmp_path)



@pytest.fixture(scope="module")
def base(tmp_path_factory) -> SimpleNamespace:
    """A finished one-epoch run of the tiny network, test data and a picture."""
    from cnncli.spec import load_config
    from cnncli.train.loop import train

    d = tmp_path_factory.mktemp("runtime")
    spec = write_config(d, good_npz(d / "train.npz"))
    train(load_config(spec), out=d / "run")
    test = good_npz(d / "test.npz", n=12)
    pic = d / "pic.png"
    pic.write_bytes(png_bytes(tiny_images(1)[0][0]))
    return SimpleNamespace(dir=d, spec=spec, run=d / "run", test=test, pic=pic)


def copy_run(base: SimpleNamespace, dest: Path) -> Path:
    shutil.copytree(base.run, dest, symlinks=True)
    return dest


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def child_env(**extra: str) -> dict:
    """The environment of a user's shell in a pipe: no colour switches, one BLAS thread."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "CI", "FORCE_COLOR", "CNNCLI_PROGRESS", "COLUMNS")}
    env.update({"TERM": "xterm-256color", "COLORTERM": "truecolor", "OPENBLAS_NUM_THREADS": "1"})
    env.update(extra)
    return env


def cnncli(*args, env=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnncli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env=env or child_env(), **kw)


def no_traceback(res: subprocess.CompletedProcess) -> None:
    out = res.stdout + res.stderr
    assert "Traceback" not in out and "Exception ignored" not in out, out


# A child that runs the CLI with os.replace wrapped: when last.safetensors is about to be
# replaced, it signals itself as a user or the kernel would (the new file is complete in its
# temporary name, the old one still in place).
FAULT_CHILD = r"""
import os, signal, sys
real = os.replace
def replace(src, dst, *a, **k):
    if str(dst).endswith("last.safetensors"):
        how = os.environ["_CNNCLI_TEST_FAULT"]
        if how == "sigint-twice":
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        elif how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
os.replace = replace
from cnncli.cli.app import main
sys.argv[0] = "cnncli"
main()
"""


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory) -> Path:
    """The base run resumed to epoch 2 in a child process, undisturbed."""
    ref = copy_run(base, tmp_path_factory.mktemp("ref") / "run")
    res = cnncli("train", "--resume", ref, "--epochs", "2", "--quiet")
    assert res.returncode == 0, res.stderr
    return ref


def same_checkpoints(a: Path, b: Path) -> None:
    for name in ("last.safetensors", "best.safetensors"):
        ta, ma = read_checkpoint(a / name)
        tb, mb = read_checkpoint(b / name)
        assert sorted(ta) == sorted(tb), name
        for k in ta:
            assert np.array_equal(ta[k], tb[k]), (name, k)
        assert ma["epoch"] == mb["epoch"], name


@pytest.mark.slow
@pytest.mark.parametrize("fault, code", [("sigint-twice", 130), ("sigkill", -signal.SIGKILL)],
                         ids=["R02-second-sigint", "R04-sigkill"])
def test_killed_during_the_save(base, reference, tmp_path, fault, code):
    run = copy_run(base, tmp_path / "run")
    old_last = (run / "last.safetensors").read_bytes()
    res = subprocess.run(
        [sys.executable, "-c", FAULT_CHILD, "train", "--resume", str(run), "--epochs", "2"],
        capture_output=True, text=True, timeout=120,
        env=child_env(_CNNCLI_TEST_FAULT=fault),
    )
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    # the previous last.safetensors is whole and loads; the new one is an orphan temp file
    assert (run / "last.safetensors").read_bytes() == old_last
    assert read_checkpoint(run / "last.safetensors")[1]["epoch"] == 1
    orphans = partials(run)
    assert len(orphans) == 1 and orphans[0].startswith(".last.safetensors."), orphans
    # the next resume removes the orphan, takes over the dead process's lock, and ends
    # where an undisturbed run ends, bit for bit
    again = cnncli("train", "--resume", run, "--epochs", "2")
    assert again.returncode == 0, again.stderr
    no_traceback(again)
    assert "removed temporary files left by an interrupted save" in again.stderr
    assert partials(run) == [] and not (run / "run.lock").exists()
    same_checkpoints(run, reference)
    assert len(rundir.read_metrics(run / "metrics.csv")) == 2


@pytest.mark.slow
def test_r05_file_size_limit_on_save_exits_3(base, tmp_path):
    run = copy_run(base, tmp_path / "run")
    before = snapshot(run)
    # config.yaml (written at start) fits; no checkpoint does
    limit = len(before["config.yaml"]) + 256
    assert limit < len(before["best.safetensors"]) < len(before["last.safetensors"])

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    res = subprocess.run([sys.executable, "-m", "cnncli", "train", "--resume", str(run),
                          "--epochs", "2"], capture_output=True, text=True, timeout=120,
                         env=child_env(), preexec_fn=small_files)
    assert res.returncode == 3, res.stderr
    no_traceback(res)
    assert "no space left on device" in res.stderr and ".safetensors" in res.stderr
    assert "intact" in res.stderr
    after = snapshot(run)
    for name in ("last.safetensors", "best.safetensors", "metrics.csv"):
        assert after[name] == before[name], name
    assert partials(run) == [] and not (run / "run.lock").exists()
    read_checkpoint(run / "last.safetensors")


# ---- R06: side files -----------------------------------------------------------------------------


def fail_writes_to(monkeypatch, name: str, err: int = errno.ENOSPC) -> None:
    """Make the atomic writer's temporary file for ``name`` fail as a full disk would."""
    real_open = os.open

    def failing(path, *a, **k):
        if os.path.basename(os.fspath(path)).startswith(f".{name}."):
            raise OSError(err, os.strerror(err))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", failing)


def test_r06_metrics_cannot_be_written_exits_3(cli, base, tmp_path, monkeypatch):
    run = copy_run(base, tmp_path / "run")
    before = (run / "metrics.csv").read_bytes()
    fail_writes_to(monkeypatch, "metrics.csv")
    res = cli("train", "--resume", run, "--epochs", "2", "--quiet")
    assert_clean_error(res, 3, "metrics.csv", "no space left on device")
    assert (run / "metrics.csv").read_bytes() == before          # old, never torn
    monkeypatch.undo()
    # the checkpoint holds the rows: the file is a prefix of them, and resume carries on
    _, meta = read_checkpoint(run / "last.safetensors")
    rows = rundir.read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in meta["metrics"]][: len(rows)]
    assert partials(run) == [] and not (run / "run.lock").exists()
    res = cli("train", "--resume", run, "--epochs", "3", "--quiet")
    assert res.exit_code == 0, res.output
    assert [r["epoch"] for r in rundir.read_metrics(run / "metrics.csv")] == [1, 2, 3]


def test_r06_curves_cannot_be_written_is_a_warning(cli, base, tmp_path, monkeypatch):
    run = copy_run(base, tmp_path / "run")
    before = (run / "curves.png").read_bytes()
    fail_writes_to(monkeypatch, "curves.png")
    res = cli("train", "--resume", run, "--epochs", "2")
    assert res.exit_code == 0, res.output
    assert "warning: curves.png not updated" in res.stderr
    assert (run / "curves.png").read_bytes() == before
    assert [r["epoch"] for r in rundir.read_metrics(run / "metrics.csv")] == [1, 2]


def test_eval_picture_that_cannot_be_written_is_a_warning(cli, base, tmp_path, monkeypatch):
    run = copy_run(base, tmp_path / "run")
    fail_writes_to(monkeypatch, "confusion.png", errno.EROFS)
    res = cli("eval", "--model", run, "--data", base.test, "--json")
    assert res.exit_code == 0, res.output
    assert "confusion matrix picture not written" in res.stderr
    assert "confusion_png" not in json.loads(res.stdout)


# ---- R07: read-only output folder ----------------------------------------------------------------


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                                "d=$(mktemp -d) && mount --bind $d $d && "
                                "mount -o remount,bind,ro $d && ! touch $d/x 2>/dev/null; "
                                "r=$?; rmdir $d 2>/dev/null; exit $r"],
                               capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_works(), reason="no user namespaces with bind mounts here")
def test_r07_read_only_folder(base, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    copy_run(base, ro / "model")
    (ro / "empty").mkdir()
    log = tmp_path / "log"
    log.mkdir()
    script = (
        'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 99\n'
        'cd "$1"\n'
        '"$2" -m cnncli train "$3" --quiet >"$4/train.out" 2>"$4/train.err"; echo $? >"$4/t"\n'
        '"$2" -m cnncli train "$3" --out empty >"$4/out.out" 2>"$4/out.err"; echo $? >"$4/o"\n'
        '"$2" -m cnncli eval --model model --data "$5" >"$4/eval.out" 2>"$4/eval.err"; '
        'echo $? >"$4/e"\n'
    )
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(ro), sys.executable,
                          str(base.spec), str(log), str(base.test)],
                         capture_output=True, text=True, timeout=120, env=child_env())
    assert res.returncode == 0, res.stderr
    text = {p.name: p.read_text() for p in log.iterdir()}
    # train into runs/ under a read-only folder: exit 2 before any data is read
    assert text["t"].strip() == "2", text["train.err"]
    assert "read-only file system" in text["train.err"] and "runs" in text["train.err"]
    assert "Traceback" not in text["train.err"]
    # train --out a read-only (empty) folder: the write probe refuses it
    assert text["o"].strip() == "2", text["out.err"]
    assert "cannot write to" in text["out.err"] and "read-only file system" in text["out.err"]
    assert "training on" not in text["out.err"]
    # eval beside a read-only model: the scores, and a warning for the picture
    assert text["e"].strip() == "0", text["eval.err"]
    assert "confusion matrix picture not written" in text["eval.err"]
    assert "accuracy" in text["eval.out"]
    assert sorted(p.name for p in ro.iterdir()) == ["empty", "model"]
    assert list((ro / "empty").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 555")
def test_r07_unwritable_folder_without_root(cli, base, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        res = cli("train", base.spec, "--out", out)
        assert_clean_error(res, 2, "cannot write to", "permission denied")
    finally:
        out.chmod(0o755)


# ---- R08, R09: where the run goes ----------------------------------------------------------------


def test_r08_out_under_a_file(cli, base, tmp_path):
    f = tmp_path / "afile"
    f.write_text("mine")
    res = cli("train", base.spec, "--out", f / "run")
    assert_clean_error(res, 2, "afile", "not a folder")
    assert f.read_text() == "mine"


def test_r09_out_is_a_finished_run(cli, base, tmp_path):
    run = copy_run(base, tmp_path / "run")
    before = snapshot(run)
    res = cli("train", base.spec, "--out", run)
    assert_clean_error(res, 2, "not empty", f"--resume {run}")
    assert snapshot(run) == before


# ---- R13: out of memory at run time --------------------------------------------------------------


def _no_memory(*a, **k):
    raise MemoryError("Unable to allocate 7.63 GiB for an array with shape (1024, 2000000)")


def test_r13_memory_error_while_training_exits_3(cli, base, tmp_path, monkeypatch):
    from cnncli.engine.network import Network

    run = copy_run(base, tmp_path / "run")
    before = snapshot(run)
    monkeypatch.setattr(Network, "forward", _no_memory)
    res = cli("train", "--resume", run, "--epochs", "2")
    assert_clean_error(res, 3, "out of memory", "7.63 GiB")
    after = snapshot(run)
    for name in ("last.safetensors", "best.safetensors", "metrics.csv"):
        assert after[name] == before[name], name
    assert partials(run) == [] and not (run / "run.lock").exists()


@pytest.mark.parametrize("command", ["eval", "infer", "inspect"])
def test_r13_memory_error_in_other_commands_exits_3(cli, base, tmp_path, monkeypatch, command):
    from cnncli.engine.network import Network

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Network, "forward", _no_memory)
    args = {"eval": ("eval", "--model", base.run, "--data", base.test),
            "infer": ("infer", base.pic, "--model", base.run),
            "inspect": ("inspect", "--model", base.run, "--data", base.test)}[command]
    assert_clean_error(cli(*args), 3, "out of memory")
    assert list(tmp_path.glob("cnncli-crash-*.log")) == []


# ---- R19: an internal bug ------------------------------------------------------------------------

_BUG = "injected fault: 1/0 in a helper"


def _bug(*a, **k):
    return 1 / 0


def _commands(base: SimpleNamespace, out: Path) -> dict[str, tuple]:
    return {
        "summary": ("summary", base.spec),
        "train": ("train", base.spec, "--out", out / "run"),
        "gradcheck": ("gradcheck", base.spec),
        "eval": ("eval", "--model", base.run, "--data", base.test),
        "infer": ("infer", base.pic, "--model", base.run),
        "visualize-filters": ("visualize-filters", "--model", base.run, "-o", out / "f.png"),
        "inspect": ("inspect", "--model", base.run, "--data", base.test),
        "export": ("export", "--model", base.run, "-o", out / "m.onnx"),
    }


@pytest.mark.parametrize("command", ["summary", "train", "gradcheck", "eval", "infer",
                                     "visualize-filters", "inspect", "export"])
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_r19_internal_error_exits_70_with_a_crash_log(cli, base, tmp_path, monkeypatch,
                                                      command, debug):
    import cnncli.io.checkpoint
    import cnncli.spec

    monkeypatch.chdir(tmp_path)
    if command in ("summary", "train", "gradcheck"):
        monkeypatch.setattr(cnncli.spec, "load_config", _bug)
    else:
        monkeypatch.setattr(cnncli.io.checkpoint, "load_model", _bug)
    args = _commands(base, tmp_path)[command] + (("--debug",) if debug else ())
    res = cli(*args)
    assert res.exit_code == 70, res.output
    logs = list(tmp_path.glob("cnncli-crash-*.log"))
    assert len(logs) == 1
    log_text = logs[0].read_text()
    assert "Traceback" in log_text and "ZeroDivisionError" in log_text and "_bug" in log_text
    lines = res.stderr.splitlines()
    error_lines = [x for x in lines if x.startswith("error:")]
    assert len(error_lines) == 1, res.stderr
    assert "internal error (ZeroDivisionError: division by zero)" in error_lines[0]
    assert str(logs[0]) in error_lines[0]
    assert any(x.startswith("hint:") and "--debug" in x for x in lines)
    assert ("Traceback" in res.stderr) is debug
    assert res.stdout == ""
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_r19_exit_status_70_reaches_the_shell(base, tmp_path):
    code = ("import sys, cnncli.spec\n"
            "cnncli.spec.load_config = lambda *a, **k: 1 / 0\n"
            "from cnncli.cli.app import main\n"
            "sys.argv[0] = 'cnncli'\n"
            "main()\n")
    res = subprocess.run([sys.executable, "-c", code, "summary", str(base.spec)],
                         capture_output=True, text=True, timeout=60, env=child_env(),
                         cwd=tmp_path)
    assert res.returncode == 70, res.stderr
    assert "Traceback" not in res.stderr and "internal error" in res.stderr
    assert len(list(tmp_path.glob("cnncli-crash-*.log"))) == 1


def test_r19_crash_log_falls_back_to_the_temp_folder(cli, base, tmp_path, monkeypatch):
    import tempfile

    import cnncli.spec

    ro = tmp_path / "cwd"
    ro.mkdir()
    monkeypatch.chdir(ro)
    spare = tmp_path / "tmp"
    spare.mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(spare))
    real_write = Path.write_text

    def cwd_unwritable(self, *a, **k):
        if self.parent == ro:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_write(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", cwd_unwritable)
    monkeypatch.setattr(cnncli.spec, "load_config", _bug)
    res = cli("summary", base.spec)
    assert res.exit_code == 70
    logs = list(spare.glob("cnncli-crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in res.stderr


# ---- R17: stdout closed early --------------------------------------------------------------------


@pytest.mark.slow
def test_r17_stdout_closed_early(base, tmp_path):
    """`cnncli ... | head -1` where head has gone: no traceback, exit 0, the work done."""
    jobs = {
        "summary": ("summary", "alexnet"),                               # a table
        "eval": ("eval", "--model", base.run, "--data", base.test),      # tables
        "train": ("train", base.spec, "--out", tmp_path / "run", "--json"),  # one document
    }
    procs = {}
    for name, args in jobs.items():
        p = subprocess.Popen([sys.executable, "-m", "cnncli", *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=child_env(), cwd=tmp_path)
        p.stdout.close()                  # the reader is gone before anything is written
        procs[name] = p
    for name, p in procs.items():
        err = p.stderr.read()
        p.wait(timeout=120)
        assert p.returncode == 0, (name, err)
        assert "Traceback" not in err and "Exception ignored" not in err, (name, err)
        assert "error" not in err.lower(), (name, err)
    _, meta = read_checkpoint(tmp_path / "run" / "last.safetensors")
    assert meta["finished"] is True
    assert list(tmp_path.glob("cnncli-crash-*.log")) == []


# ---- R18: resume under another thread count ------------------------------------------------------


@pytest.mark.slow
def test_r18_resume_with_another_thread_count(base, reference, tmp_path):
    run = copy_run(base, tmp_path / "run")
    res = cnncli("train", "--resume", run, "--epochs", "2", "--quiet",
                 env=child_env(OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2"))
    assert res.returncode == 0, res.stderr
    a = rundir.read_metrics(run / "metrics.csv")
    b = rundir.read_metrics(reference / "metrics.csv")
    assert [r["epoch"] for r in a] == [1, 2]
    for key in ("train_loss", "val_loss"):
        assert a[-1][key] == pytest.approx(b[-1][key], rel=0.02), key
    ta, _ = read_checkpoint(run / "last.safetensors")
    tb, _ = read_checkpoint(reference / "last.safetensors")
    for k in ta:
        np.testing.assert_allclose(ta[k], tb[k], rtol=1e-3, atol=1e-4, err_msg=k)


# ---- R20: a pipe gets plain text, every command --------------------------------------------------


# One child runs every command in turn through the real entry point (its stdout and stderr
# are pipes), marking where each begins, so the interpreter starts once, not fifteen times.
PIPE_DRIVER = r"""
import json, sys
from cnncli.cli.app import main
for name, args in json.loads(sys.argv[1]):
    for stream in (sys.stdout, sys.stderr):
        stream.write(f"\n@@@ {name} @@@\n")
        stream.flush()
    sys.argv = ["cnncli", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.write(f"\n@@@ exit {code} @@@\n")
    sys.stderr.flush()
"""


def _sections(text: str) -> dict[str, str]:
    parts = text.split("\n@@@ ")
    out: dict[str, str] = {}
    last = ""
    for part in parts[1:]:
        head, _, body = part.partition(" @@@\n")
        if head.startswith("exit "):
            out[last] += f"@@@ {head} @@@"
            continue
        last = head
        out[head] = body
    return out


@pytest.mark.slow
def test_r20_no_escape_codes_or_boxes_in_a_pipe(base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cmds = {name: [str(a) for a in args] for name, args in _commands(base, out).items()}
    cmds.update({
        "summary-json": ["summary", str(base.spec), "--json"],
        "eval-json": ["eval", "--model", str(base.run), "--data", str(base.test), "--json"],
        "help": ["train", "--help"],
        "usage-error": ["summary", "--no-such-option"],
        "bad-input": ["eval", "--model", str(tmp_path / "nothing")],
        "bad-picture": ["infer", str(base.spec), "--model", str(base.run)],
        "check-failed": ["eval", "--model", str(base.run), "--data", str(base.test),
                         "--min-accuracy", "0.999"],
    })
    codes = {"usage-error": 2, "bad-input": 2, "bad-picture": 2, "check-failed": 1}
    res = subprocess.run([sys.executable, "-c", PIPE_DRIVER, json.dumps(list(cmds.items()))],
                         capture_output=True, text=True, timeout=180, env=child_env(),
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    outs, errs = _sections(res.stdout), _sections(res.stderr)
    assert sorted(errs) == sorted(cmds), res.stderr
    for name in cmds:
        stdout, stderr = outs[name], errs[name]
        assert stderr.endswith(f"@@@ exit {codes.get(name, 0)} @@@"), (name, stderr)
        for stream in (stdout, stderr):
            assert "\x1b" not in stream, (name, stream)
        # progress, warnings and errors are plain lines (result tables on stdout may be drawn)
        assert not any(ch in stderr for ch in "╭╮╰╯│─━┃┏┓"), (name, stderr)
        assert "Traceback" not in stdout + stderr, name
        if codes.get(name):
            assert any(x.startswith(("error:", "Error:")) for x in stderr.splitlines()), stderr
        if name.endswith("-json"):
            json.loads(stdout)
