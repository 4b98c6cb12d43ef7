"""Shared test helpers: run the CLI in-process, write small files, check clean failures."""

from __future__ import annotations

from pathlib import Path

import pytest


class CliResult:
    def __init__(self, result) -> None:
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli():
    """cli("summary", "lenet5", ...) -> result with exit_code, stdout, stderr (in-process)."""
    from typer.testing import CliRunner

    from cnncli.cli.app import app

    runner = CliRunner()

    def run(*args: str, env: dict | None = None) -> CliResult:
        return CliResult(runner.invoke(app, [str(a) for a in args], env=env))

    return run


@pytest.fixture
def write(tmp_path: Path):
    """write("text", name="spec.yaml") -> the path of a new file under tmp_path."""

    def _write(content: str | bytes, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


def assert_clean_error(res: CliResult, code: int, *needles: str) -> None:
    """The command failed with ``code``, without a traceback, and said each of ``needles``."""
    out = res.output
    assert res.exit_code == code, out
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle in out, (needle, out)


@pytest.fixture
def readonly_probe(monkeypatch):
    """Make the run folder's write probe fail as on a read-only file system."""
    import errno
    import os

    real_open = os.open

    def ro(path, *a, **k):
        if ".write-probe" in str(path):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", ro)
