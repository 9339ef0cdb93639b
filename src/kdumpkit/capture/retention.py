"""Retention: how many old crash folders a target keeps (count, age, size).

Only kdump-tools has retention, by count, locally.  Here every target
directory gets the same policy, applied right after a capture succeeded —
and the folder just written is never a candidate, whatever the limits say:
freeing space must never cost the dump that motivated it.  Only folders that
look like ours (a dated name, or a ``manifest.json`` inside) are touched.

On an ssh dump server the policy is the server's (``kdumpkit receive DIR
--keep-count N``), never a client's, and a client's upload only ever prunes
folders of the host its crash id names, created by the receiver's own user
(``host``, ``owner``): one machine must not be able to empty another's.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

from kdumpkit.capture.naming import STAMP, host_folder
from kdumpkit.setup.config import Keep

DATED = re.compile(rf".*{STAMP}\Z")
OUR_FILES = ("manifest.json", "vmcore", "vmcore.flat", "dmesg.txt", "kallsyms.gz")


@dataclass(frozen=True)
class CrashDir:
    path: str
    mtime: float
    size: int


def _tree_size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def crash_dirs(base: str, *, host: str | None = None, owner: int | None = None) -> list[CrashDir]:
    """Our crash folders under ``base``, newest first; only ``host``'s, only ``owner``'s when given."""
    mine = host_folder(host) if host is not None else None
    out = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return []
    for e in entries:
        if not e.is_dir(follow_symlinks=False):
            continue
        if mine is not None and not mine.match(e.name):
            continue
        st = e.stat(follow_symlinks=False)
        if owner is not None and st.st_uid != owner:
            continue
        if not DATED.match(e.name) and not os.path.exists(os.path.join(e.path, "manifest.json")):
            continue
        if not any(os.path.exists(os.path.join(e.path, f)) for f in OUR_FILES):
            continue
        out.append(CrashDir(e.path, st.st_mtime, _tree_size(e.path)))
    out.sort(key=lambda d: (d.mtime, d.path), reverse=True)
    return out


def plan_retention(dirs: list[CrashDir], keep: Keep, current: str, now: float | None = None) -> list[CrashDir]:
    """Which folders to delete (never ``current``): over count, older than age, beyond size."""
    now = time.time() if now is None else now
    cur = os.path.realpath(current)
    doomed: list[CrashDir] = []
    kept: list[CrashDir] = []
    for d in dirs:  # newest first
        is_current = os.path.realpath(d.path) == cur
        too_many = keep.count > 0 and len(kept) >= keep.count
        too_old = keep.age_days > 0 and now - d.mtime > keep.age_days * 86400
        if not is_current and (too_many or too_old):
            doomed.append(d)
        else:
            kept.append(d)
    if keep.size > 0:
        total = sum(d.size for d in kept)
        for d in reversed(list(kept)):  # oldest first
            if total <= keep.size:
                break
            if os.path.realpath(d.path) == cur:
                continue
            kept.remove(d)
            doomed.append(d)
            total -= d.size
    return doomed


def apply_retention(base: str, keep: Keep, current: str, *, now: float | None = None,
                    log: Callable[[str], None] | None = None, host: str | None = None,
                    owner: int | None = None) -> list[str]:
    """Delete what :func:`plan_retention` says; returns the removed paths."""
    if not keep.active:
        return []
    removed = []
    for d in plan_retention(crash_dirs(base, host=host, owner=owner), keep, current, now):
        try:
            shutil.rmtree(d.path)
        except OSError as e:
            if log:
                log(f"retention: cannot remove {d.path}: {e.strerror}")
            continue
        removed.append(d.path)
        if log:
            log(f"retention: removed {d.path}")
    return removed
