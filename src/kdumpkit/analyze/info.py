"""What ``kdumpkit info`` shows: the dump's own description plus crash facts.

Everything here reads headers, notes and a few kernel structures; nothing
scans the whole dump, so ``info`` stays fast on any size.
"""

from __future__ import annotations

from typing import Any

from kdumpkit.dump.base import Dump, runs_count
from kdumpkit.dump.codecs import flag_name


def _notes_summary(dump: Dump) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in dump.notes():
        key = f"{n.name}/{n.type:#x}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def dump_info(dump: Dump) -> dict[str, Any]:
    """A JSON-able description of ``dump``."""
    ps = dump.page_size
    ram = dump.ram_runs()
    counts = dump.page_counts()
    details = dump.info().details
    info: dict[str, Any] = {
        "path": dump.path,
        "format": dump.format_name,
        "arch": dump.arch,
        "page_size": ps,
        "incomplete": dump.incomplete or counts["missing"] > 0,
        "ram_ranges": [{"start": hex(s * ps), "end": hex(e * ps - 1), "pages": e - s} for s, e in ram],
        "ram_bytes": runs_count(ram) * ps,
        "pages": counts,  # missing pages are counted apart: never as excluded
        "cpus": len(dump.prstatus_notes()),
        "notes": _notes_summary(dump),
        "compression": details.get("compression", "none"),
        "details": details,
    }
    if isinstance(info["compression"], int):
        info["compression"] = flag_name(info["compression"])
    vmcoreinfo = dump.vmcoreinfo_raw()
    info["vmcoreinfo"] = vmcoreinfo is not None
    try:
        from kdumpkit.kernel.facts import crash_facts
    except ImportError:
        crash_facts = None  # type: ignore[assignment,unused-ignore]
    if crash_facts is not None:
        info["crash"] = crash_facts(dump).to_json()
    elif vmcoreinfo:
        for line in vmcoreinfo.decode("ascii", "replace").splitlines():
            if line.startswith("OSRELEASE="):
                info["crash"] = {"release": line.split("=", 1)[1]}
                break
    return info
