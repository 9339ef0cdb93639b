"""``kdumpkit live --out DIR [-d 31] [-l|-c|-z|-p] [-E]``: dump the running kernel without crashing it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kdumpkit.cli.progress import progress_reporter
from kdumpkit.dump.codecs import OPTION_CODECS
from kdumpkit.errors import ConfigError, UsageError

EXIT_INCOMPLETE = 3


def register(sub: Any) -> None:
    p = sub.add_parser("live", help="dump the running kernel from /proc/kcore (not a consistent snapshot)",
                       description="Write a dump of the running system's memory from /proc/kcore and "
                                   "/sys/kernel/vmcoreinfo through the same pipeline as save. The kernel keeps "
                                   "running while memory is read, so the result is NOT a consistent snapshot.")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for live-<host>-<time>/ (vmcore, manifest)")
    p.add_argument("-d", dest="dump_level", default="31", metavar="LEVEL", help="dump level(s), e.g. 31 or 11,31")
    codec = p.add_mutually_exclusive_group()
    for letter, name in OPTION_CODECS.items():
        codec.add_argument(f"-{letter}", dest="codec", action="store_const", const=name, help=f"{name} pages")
    p.add_argument("-E", dest="elf", action="store_true", help="write an ELF vmcore instead of kdump-compressed")
    p.add_argument("--kcore", default="/proc/kcore", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="JSON result")
    p.set_defaults(func=run, codec=None)


def run(args: argparse.Namespace) -> int:
    from kdumpkit.capture.live import live_dump
    from kdumpkit.setup.config import parse_dump_levels

    try:
        levels = parse_dump_levels(args.dump_level, "-d")
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if args.elf and args.codec:
        raise UsageError("-E writes uncompressed ELF: drop -c/-l/-p/-z")
    print("kdumpkit: warning: a live dump is not a consistent snapshot (memory changes while it is read)",
          file=sys.stderr)
    with progress_reporter("live", json_events=args.json) as progress:
        res = live_dump(args.out, fmt="elf" if args.elf else "kdump", codec=args.codec or "zlib",
                        dump_levels=tuple(levels), kcore=args.kcore, progress=progress,
                        log=lambda m: print(f"kdumpkit: {m}", file=sys.stderr))
    r = res.result
    summary = {"directory": res.directory, "vmcore": res.vmcore, "manifest": res.manifest, "consistent": False,
               "format": r.format, "dump_level": r.dump_level, "pages_written": r.stats.pages_written,
               "bytes_written": r.stats.bytes_written, "incomplete": r.incomplete, "warnings": res.warnings}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{res.vmcore}: live dump, {r.format} at dump level {r.dump_level}, {r.stats.pages_written} pages, "
              f"{r.stats.bytes_written} bytes (NOT a consistent snapshot)", file=sys.stderr)
    return EXIT_INCOMPLETE if r.incomplete else 0
