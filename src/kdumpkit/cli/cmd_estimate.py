"""``kdumpkit estimate DUMP``: pages per class and the dump size each level would give.

Like ``makedumpfile --mem-usage``: one classification pass at level 31
gives the pages of every class (the classes are disjoint, so a level's
size is "dumped pages minus the classes it excludes"); ``--zero`` also
reads every remaining page to count the zero pages level bit 1 drops
(slow: it reads the whole dump).  Sizes are uncompressed page bytes.

``/proc/kcore`` (root) estimates the running system, like
``makedumpfile --mem-usage /proc/kcore``: its direct-map segments are read
as physical memory (:func:`kdumpkit.capture.live.open_live`, the source of
``kdumpkit live``) with ``/sys/kernel/vmcoreinfo``.  The kernel keeps
running meanwhile, so the counts are a moment's approximation.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from kdumpkit.capture.filter import COUNT_KEYS, filtered
from kdumpkit.cli.progress import print_json
from kdumpkit.dump import open_dump
from kdumpkit.dump.base import Dump
from kdumpkit.errors import UsageError
from kdumpkit.kernel.pageflags import level_classes

LEVELS = (0, 1, 2, 4, 8, 16, 17, 31)


def register(sub: Any) -> None:
    p = sub.add_parser("estimate", help="pages per class and expected dump size per dump level")
    p.add_argument("dump", nargs="+", help="dump file (several for a --split set)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--zero", action="store_true", help="also count zero pages (reads every kept page)")
    p.add_argument("--no-selfcheck", action="store_true", help="skip the NR_FREE_PAGES comparison")
    p.set_defaults(func=run)


def estimate(dump_paths: list[str], *, zero: bool = False, selfcheck: bool = True) -> dict[str, Any]:
    """The estimate as a plain dict (what ``--json`` prints)."""
    live = [p for p in dump_paths if os.path.basename(os.path.realpath(p)) == "kcore"]
    if live and len(dump_paths) > 1:
        raise UsageError("/proc/kcore is estimated on its own, not as part of a split set")
    if live:
        from kdumpkit.capture.live import open_live

        source: Dump = open_live(live[0])
    else:
        source = open_dump(dump_paths if len(dump_paths) > 1 else dump_paths[0])
    with source as dump:
        f = filtered(dump, 31, selfcheck=selfcheck)
        counts = dict(f.counts)
        zero_pages = f.count_zero_pages() if zero else None
        ps = dump.page_size
        dumped = counts["kept"] + counts["excluded"]
        levels: dict[str, Any] = {}
        for lvl in LEVELS:
            classes = level_classes(lvl)
            pages = dumped - sum(counts[c] for c in COUNT_KEYS if c in classes)
            if lvl & 1:
                if zero_pages is None:
                    levels[str(lvl)] = {"pages": None, "bytes": None, "note": "zero pages not counted (--zero)"}
                    continue
                # zero pages counted among the pages level 31 keeps; at lower levels more pages are kept,
                # some of them zero too, so this is an upper bound
                pages -= zero_pages
            levels[str(lvl)] = {"pages": pages, "bytes": pages * ps}
        sc = f.selfcheck_result
        return {
            "path": dump.path,
            "page_size": ps,
            "ram_pages": sum(e - s for s, e in dump.ram_runs()),
            "dumped_pages": dumped,
            "classes": {**{k: counts[k] for k in COUNT_KEYS}, "zero": zero_pages, "unreadable": counts["unreadable"]},
            "class_bytes": {k: counts[k] * ps for k in COUNT_KEYS},
            "levels": levels,
            "selfcheck": sc.to_dict() if sc else None,
            "memory_model": f.stats.get("model"),
        }


def run(args: argparse.Namespace) -> int:
    est = estimate(args.dump, zero=args.zero, selfcheck=not args.no_selfcheck)
    if args.json:
        print_json(est)
        return 0
    ps = est["page_size"]
    print(f"{est['path']}: {est['dumped_pages']} pages in the dump ({est['dumped_pages'] * ps / 2**20:.1f} MiB), "
          f"memory model {est['memory_model']}")
    print(f"{'class':<16}{'pages':>12}{'MiB':>12}")
    for k, v in est["classes"].items():
        if v is None:
            continue
        print(f"{k:<16}{v:>12}{v * ps / 2**20:>12.1f}")
    print(f"\n{'level':<8}{'pages':>12}{'MiB':>12}")
    for lvl, row in est["levels"].items():
        if row["pages"] is None:
            print(f"{lvl:<8}{'?':>12}{'?':>12}  ({row['note']})")
        else:
            print(f"{lvl:<8}{row['pages']:>12}{row['bytes'] / 2**20:>12.1f}")
    sc = est["selfcheck"]
    if sc:
        print(f"\nself-check: {'ok' if sc['ok'] else 'FAILED'}: {sc['message']}")
    return 0
