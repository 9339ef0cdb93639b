"""Where the lab keeps what it downloads and builds.

Kernels, images and vmcores are large and slow to make, so they live in one
cache directory outside the repository (``$KDUMPKIT_CACHE`` or
``~/.cache/kdumpkit``), under ``lab/``; nothing there is ever committed.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Bump when the guest image, the /init script or the layout of a run's
#: outputs changes: cached reference runs made by an older lab are rebuilt.
LAB_FORMAT_VERSION = 1


def cache_root() -> Path:
    """The kdumpkit cache directory (created on demand by users)."""
    env = os.environ.get("KDUMPKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdumpkit"


def lab_dir(*parts: str) -> Path:
    """A directory under ``<cache>/lab``, created if missing."""
    path = cache_root().joinpath("lab", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
