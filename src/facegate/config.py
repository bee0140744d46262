"""Where facegate keeps its data, and the organisation a local (CLI, Python) caller acts for."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = "facegate-data"
# Local callers (CLI, Python API) act for this organisation until keys and organisations exist.
DEFAULT_OWNER = "default"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data directory: ``explicit`` if given, else $FACEGATE_HOME, else ./facegate-data."""
    return Path(explicit or os.environ.get("FACEGATE_HOME") or DEFAULT_HOME)
