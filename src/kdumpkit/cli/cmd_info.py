"""``kdumpkit info DUMP``: format, kernel, memory, pages, CPUs, crash facts."""

from __future__ import annotations

import argparse
from typing import Any

from kdumpkit.analyze.info import dump_info
from kdumpkit.cli.dumpargs import add_vmcoreinfo_arg
from kdumpkit.cli.progress import print_json
from kdumpkit.dump import open_dump


def register(sub: Any) -> None:
    p = sub.add_parser("info", help="describe a dump (format, kernel, RAM, pages, CPUs, crash facts)")
    p.add_argument("dump", nargs="+", help="dump file (several for a --split set)")
    p.add_argument("--format", dest="input_format", help="force the input format")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_vmcoreinfo_arg(p)
    p.set_defaults(func=run)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def run(args: argparse.Namespace) -> int:
    from kdumpkit.dump.override import with_vmcoreinfo

    with with_vmcoreinfo(open_dump(args.dump, format=args.input_format), args.vmcoreinfo) as dump:
        info = dump_info(dump)
    if args.json:
        print_json(info)
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    crash = info.get("crash") or {}
    rows: list[tuple[str, Any]] = [
        ("file", info["path"]),
        ("format", info["format"] + (" (INCOMPLETE)" if info["incomplete"] else "")),
        ("compression", info["compression"]),
        ("arch", info["arch"]),
        ("page size", info["page_size"]),
        ("kernel release", crash.get("release") or "unknown (no VMCOREINFO)"),
    ]
    for key in ("build_id", "crash_time", "panic_message", "crashing_cpu"):
        if crash.get(key) not in (None, ""):
            rows.append((key.replace("_", " "), crash[key]))
    pages = info["pages"]
    rows += [
        ("RAM", f"{_human(info['ram_bytes'])} in {len(info['ram_ranges'])} ranges"),
        ("pages", f"{pages['ram']} RAM, {pages['dumped']} dumped, {pages['excluded']} excluded"
                  + (f", {pages['missing']} MISSING" if pages["missing"] else "")),
        ("CPUs (NT_PRSTATUS)", info["cpus"]),
        ("notes", ", ".join(f"{k}×{v}" for k, v in info["notes"].items()) or "none"),
    ]
    for k, v in info["details"].items():
        if k not in ("compression",) and v not in (None, "", {}):
            rows.append((k, v))
    for k, v in rows:
        t.add_row(k, str(v))
    Console().print(t)
    return 0
