"""YAML spec -> validated, canonical description (``cnncli.spec.model``).

Public entry points: ``load_config`` (a file, bundled name, YAML text or dict, with
``--set`` overrides) and ``dump_yaml`` (for writing a resolved ``config.yaml``);
``parse_pattern`` for the pattern grammar alone. They load on first use, so importing
``cnncli.spec.model`` stays cheap (no YAML parser).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load_config", "dump_yaml", "parse_pattern", "Pattern", "Config", "NetSpec",
           "param_shapes"]

_WHERE = {
    "load_config": "cnncli.spec.config",
    "dump_yaml": "cnncli.spec.yamlio",
    "parse_pattern": "cnncli.spec.pattern",
    "Pattern": "cnncli.spec.pattern",
    "Config": "cnncli.spec.model",
    "NetSpec": "cnncli.spec.model",
    "param_shapes": "cnncli.spec.model",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'cnncli.spec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
