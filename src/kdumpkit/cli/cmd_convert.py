"""``kdumpkit convert IN OUT --format FMT [-c|-l|-p|-z]``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from kdumpkit.cli.progress import print_json, progress_reporter
from kdumpkit.dump import open_dump
from kdumpkit.dump.base import runs_count
from kdumpkit.dump.codecs import OPTION_CODECS
from kdumpkit.dump.convert import WRITE_FORMATS, convert
from kdumpkit.dump.raw import side_file_paths
from kdumpkit.errors import DumpError

EXIT_INCOMPLETE = 3


def register(sub: Any) -> None:
    p = sub.add_parser("convert", help="convert a dump into another format (elf, kdump, flat, raw, lime)")
    p.add_argument("input", nargs="+", help="input dump (several files for a --split set), then OUT")
    p.add_argument("--format", "-f", required=True, choices=WRITE_FORMATS, help="output format")
    p.add_argument("--input-format", help="force the input format")
    codec = p.add_mutually_exclusive_group()
    for letter, name in OPTION_CODECS.items():
        codec.add_argument(f"-{letter}", dest="codec", action="store_const", const=name, help=f"{name} pages (kdump/flat)")
    codec.add_argument("--no-compress", dest="codec", action="store_const", const="none", help="raw pages (kdump/flat)")
    p.add_argument("--exclude-zero", action="store_true", help="drop all-zero pages (dump level bit 1)")
    p.add_argument("--elf32", action="store_true", help="write ELF32 (memory below 4 GiB only)")
    p.add_argument("--num-threads", type=int, default=1, help="compression workers")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.add_argument("--vmcoreinfo", metavar="FILE", help="VMCOREINFO text to put in OUT (or 'scan' / 'none'); "
                   "default: the input's own, else a bounded search of its memory")
    p.add_argument("--json", action="store_true", help="JSON progress events and result")
    p.set_defaults(func=run, codec=None)


def run(args: argparse.Namespace) -> int:
    if len(args.input) < 2:
        from kdumpkit.errors import UsageError

        raise UsageError("convert needs IN and OUT")
    *inputs, out = args.input
    codec = args.codec or "zlib"
    from kdumpkit.dump.override import with_vmcoreinfo

    with with_vmcoreinfo(open_dump(inputs, format=args.input_format), args.vmcoreinfo) as src, \
            progress_reporter("convert", json_events=args.json) as progress:
        stats = convert(src, out, args.format, force=args.force, codec=None if codec == "none" else codec,
                        exclude_zero=args.exclude_zero, elf_class=32 if args.elf32 else 64, progress=progress,
                        workers=args.num_threads)
        missing = runs_count(src.missing_runs())
        incomplete = src.incomplete or missing > 0
    if out != "-":
        _check_opens(out, args.format)
    result = {"output": out, "format": stats.format, "pages_written": stats.pages_written,
              "zero_pages": stats.zero_pages, "excluded_pages": stats.excluded_pages,
              "bytes_written": stats.bytes_written, "incomplete": incomplete, "missing_pages": missing, **stats.extra}
    if args.json:
        print_json(result)
    elif out != "-":
        print(f"{out}: {stats.format}, {stats.pages_written} pages written, {stats.excluded_pages} excluded, "
              + (f"{missing} missing, " if missing else "") + f"{stats.bytes_written} bytes", file=sys.stderr)
        if stats.extra.get("crash_options"):
            print(f"kdumpkit: LKCD carries no VMCOREINFO; open it with: crash {stats.extra['crash_options']} "
                  f"VMLINUX {out}", file=sys.stderr)
    if incomplete:
        what = f"{missing} pages missing" if missing else "which pages are missing is unknown"
        print(f"kdumpkit: warning: the input is incomplete ({what}); the output is flagged incomplete and "
              f"its missing pages read as missing", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


def _check_opens(out: str, fmt: str) -> None:
    """Never leave an output kdumpkit itself cannot open: open it, remove it (and its side files) if that fails.

    Opening reads headers and indexes, not pages: little next to the writing.
    """
    from kdumpkit.errors import KdumpkitError

    expect = "kdump" if fmt == "flat" else fmt
    try:
        open_dump(out, format=expect).close()
    except KdumpkitError as e:
        sides = side_file_paths(out) if fmt == "raw" else []
        for p in (out, *sides):
            try:
                os.unlink(p)
            except OSError:
                pass
        raise DumpError(f"{out} was written but does not open as {expect} ({e}); removed") from None
