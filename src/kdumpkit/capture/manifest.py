"""``manifest.json``: what was captured, how, and how long each phase took.

Written last, after the vmcore is complete, so a folder with a manifest is a
folder whose dump finished (or whose manifest says why not: dmesg-only).  It
never holds secrets: targets are described by kind, host and path only,
never keys, passwords or the key's file name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

from kdumpkit import __version__
from kdumpkit.capture.engine import SaveResult
from kdumpkit.dump.base import Dump
from kdumpkit.errors import KdumpkitError

MANIFEST_NAME = "manifest.json"
MAX_LISTED_MISSING = 256


def sha256_file(path: str, chunk: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def kernel_facts(dump: Dump) -> dict[str, Any]:
    """Release, build id and crash time from VMCOREINFO (absent keys when unknown)."""
    out: dict[str, Any] = {"arch": dump.arch, "page_size": dump.page_size}
    try:
        from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

        info = VmcoreInfo.from_dump(dump)
        out.update(release=info.osrelease, build_id=info.build_id, crashtime=info.crashtime)
    except KdumpkitError:
        pass
    return out


def jsonable(obj: Any) -> Any:
    """Make filter self-check results and friends JSON-safe."""
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [jsonable(v) for v in obj]
    to_dict = getattr(obj, "as_dict", None) or getattr(obj, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    return str(obj)


def build_manifest(*, crash_id: str, hostname: str, dump: Dump, target: str, status: str,
                   result: SaveResult | None, files: dict[str, dict[str, Any]], timings: dict[str, float],
                   problems: list[str]) -> dict[str, Any]:
    m: dict[str, Any] = {
        "kdumpkit": __version__,
        "crash_id": crash_id,
        "hostname": hostname,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": status,  # complete | incomplete | dmesg-only | failed
        "target": target,
        "kernel": kernel_facts(dump),
        "source": {"path": dump.path, "format": dump.format_name, "incomplete": dump.incomplete},
        "files": files,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "problems": problems,
    }
    if result is not None:
        st = result.stats
        m["dump"] = {
            "format": result.format, "codec": result.codec, "dump_level": result.dump_level,
            "levels_tried": result.levels_tried, "incomplete": result.incomplete,
            "pages_written": st.pages_written, "zero_pages": st.zero_pages, "excluded_pages": st.excluded_pages,
            "bytes_written": st.bytes_written, "page_counts": jsonable(result.page_counts),
            "missing_pages": len(result.missing_pfns),
            "missing_pfns": [hex(p) for p in result.missing_pfns[:MAX_LISTED_MISSING]],
            "read_errors": result.read_errors, "selfcheck": jsonable(result.selfcheck),
        }
    return m


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n").encode()


def file_entry(path: str, *, sha256: str | None = None) -> dict[str, Any]:
    """Size and SHA-256 of a written file (hashing it now if no digest was streamed)."""
    return {"size": os.path.getsize(path), "sha256": sha256 or sha256_file(path)}
