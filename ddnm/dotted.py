"""``"package.module:name"`` paths: how a job names a user's own operator class or solver."""

from __future__ import annotations

import importlib
from typing import Any


def is_dotted(name: str) -> bool:
    """Whether ``name`` is a ``"package.module:name"`` path rather than a registered name."""
    return isinstance(name, str) and ":" in name


def load_dotted(path: str, *, what: str) -> Any:
    """``"package.module:name"`` -> the object; ValueError naming ``what`` and the path otherwise.

    The module must be importable where the object is used (on every Ray worker, for a job).
    """
    mod_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"{what} {path!r}: cannot import {attr!r} from module {mod_name!r} ({e})") from e
