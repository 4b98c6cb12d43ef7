"""Where the bundled configs and the digits sample live.

In an installed package they are ``cnncli/configs`` and ``cnncli/sample_data``
(mapped from the top-level folders at build time); in a source checkout they are
the top-level ``configs/`` and ``sample_data/`` folders themselves.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    return _PKG / name


def configs_dir() -> Path:
    return _find("configs")


def sample_dir() -> Path:
    return _find("sample_data")


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def bundled_config(name: str) -> Path | None:
    """The bundled config called ``name`` (with or without .yaml), or None."""
    stem = name[:-5] if name.endswith(".yaml") else name
    if "/" in stem or "\\" in stem or not stem:
        return None
    path = configs_dir() / f"{stem}.yaml"
    return path if path.is_file() else None


def resolve_config_path(arg: str) -> Path:
    """A config argument as the user meant it: a file where they are, else a bundled name."""
    p = Path(arg)
    if p.exists():
        return p
    bundled = bundled_config(arg)
    return bundled if bundled is not None else p
