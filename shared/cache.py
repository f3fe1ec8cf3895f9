"""Where Stamen keeps derived files: dequantised bases, quality checks, generated sets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$STAMEN_CACHE`` (default ``~/.cache/stamen``) joined with ``parts``, created."""
    root = Path(os.environ.get("STAMEN_CACHE", Path.home() / ".cache" / "stamen"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
