"""Where the lab keeps what it downloads and builds.

Kernels, images and vmcores are large and slow to make, so they live in one
cache directory outside the repository (``$KDUMPKIT_CACHE`` or
``~/.cache/kdumpkit``), under ``lab/``; nothing there is ever committed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
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


#: How many failed runs ``lab/failed`` keeps (the oldest go first).
FAILED_KEEP = 20


def failed_dir(what: str) -> Path:
    """A new directory ``<cache>/lab/failed/<UTC time>-<what>-<unique>`` for a failed run's evidence.

    Runs work in temporary directories that are gone by the time their error
    is read; what the error names is copied here instead.  Older entries
    beyond :data:`FAILED_KEEP` are removed.
    """
    base = lab_dir("failed")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    d = Path(tempfile.mkdtemp(prefix=f"{stamp}-{what}-", dir=base))
    older = sorted((p for p in base.iterdir() if p != d), key=lambda p: (_mtime_ns(p), p.name))
    for old in older[:max(0, len(older) - (FAILED_KEEP - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return d


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:  # removed meanwhile by another process pruning
        return 0
