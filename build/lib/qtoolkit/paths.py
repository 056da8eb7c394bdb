"""Where qtoolkit keeps things it can rebuild (trained baselines)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$QTK_CACHE``, else ``~/.cache/qtoolkit``."""
    return Path(os.environ.get("QTK_CACHE", Path.home() / ".cache" / "qtoolkit"))
