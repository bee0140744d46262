"""Where facegate keeps its data, and the organisation a local (CLI, Python) caller acts for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_HOME = "facegate-data"
# Local callers (CLI, Python API) act for this organisation until keys and organisations exist.
DEFAULT_OWNER = "default"
# The int8 MMOD CNN: it finds the turned, backlit and darker faces HOG misses, at HOG's speed (bench/detect.py).
DEFAULT_DETECTOR = "cnn"


def data_dir(explicit: str | os.PathLike | None = None, context: Any = None) -> Path:
    """The data directory: ``explicit`` if given, else the one the `facegate --data DIR` in front of a sub-command
    named (``context``: that command's click context), else $FACEGATE_HOME, else ./facegate-data."""
    inherited = None
    if context is not None:
        inherited = (context.find_root().obj or {}).get("data")
    return Path(explicit or inherited or os.environ.get("FACEGATE_HOME") or DEFAULT_HOME)
