"""``kdumpkit save [makedumpfile options] VMCORE DUMPFILE`` — a drop-in core_collector.

Accepts the makedumpfile options kdump.conf ``core_collector`` lines use
(``-l --message-level 7 -d 31``, ``-F``, ``-E``, ``--split``, ``-d 11,31``),
so an existing configuration can switch by changing the program name.
Exit codes: 0 written, 1 failed, 3 written but incomplete (pages missing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from kdumpkit.cli.progress import progress_reporter
from kdumpkit.dump.codecs import OPTION_CODECS
from kdumpkit.errors import OutputError, UsageError

EXIT_INCOMPLETE = 3
ML_PROGRESS, ML_COMMON, ML_ERROR, ML_DEBUG, ML_REPORT = 1, 2, 4, 8, 16


def register(sub: Any) -> None:
    p = sub.add_parser("save", help="write a dump like makedumpfile (drop-in for core_collector lines)",
                       description="makedumpfile-compatible: save VMCORE (e.g. /proc/vmcore) to DUMPFILE")
    p.add_argument("files", nargs="+", metavar="VMCORE [DUMPFILE ...]")
    p.add_argument("-d", dest="dump_level", default="0", metavar="LEVEL",
                   help="dump level 0-31, or a fallback list such as 11,31 (next level on ENOSPC)")
    codec = p.add_mutually_exclusive_group()
    for letter, name in OPTION_CODECS.items():
        codec.add_argument(f"-{letter}", dest="codec", action="store_const", const=name, help=f"{name} pages")
    p.add_argument("-E", dest="elf", action="store_true", help="write an ELF vmcore")
    p.add_argument("-F", dest="flat", action="store_true", help="flattened stream to standard output")
    p.add_argument("--split", action="store_true", help="split into DUMPFILE1 DUMPFILE2 … (kdump-compressed)")
    p.add_argument("--num-threads", type=int, default=1, metavar="N", help="compression workers")
    p.add_argument("--message-level", type=int, default=7, metavar="N",
                   help="bitmask: 1 progress, 2 common, 4 error, 8 debug, 16 report (default 7)")
    p.add_argument("--dump-dmesg", action="store_true", help="write the kernel log of VMCORE to LOGFILE")
    p.add_argument("--json", action="store_true", help="JSON progress events and a JSON result")
    p.add_argument("-f", "--force", action="store_true", help="overwrite DUMPFILE")
    p.add_argument("--no-selfcheck", action="store_true", help="skip the filter's sanity check")
    for ignored in ("--cyclic-buffer", "--work-dir", "--splitblock-size"):
        p.add_argument(ignored, help=argparse.SUPPRESS)  # makedumpfile tuning: memory use is bounded anyway
    p.add_argument("--non-cyclic", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run, codec=None)


def run(args: argparse.Namespace) -> int:
    from kdumpkit.errors import ConfigError
    from kdumpkit.setup.config import parse_dump_levels

    try:
        levels = parse_dump_levels(args.dump_level, "-d")
    except ConfigError as e:
        raise UsageError(str(e)) from None
    ml = args.message_level
    if args.dump_dmesg:
        return _dump_dmesg(args, ml)
    vmcore, outs = args.files[0], args.files[1:]
    if args.flat:
        if outs:
            raise UsageError("-F writes to standard output: give VMCORE only")
        if args.elf or args.split:
            raise UsageError("-F does not combine with -E or --split")
    elif args.split:
        if len(outs) < 2:
            raise UsageError("--split needs two or more DUMPFILEs")
    elif len(outs) != 1:
        raise UsageError("usage: kdumpkit save [options] VMCORE DUMPFILE")
    if args.elf and args.codec:
        raise UsageError("-E writes uncompressed ELF: drop -c/-l/-p/-z")
    from kdumpkit.capture.engine import SaveOptions, StreamOutput, save_dump, save_split, save_to_file
    from kdumpkit.dump import open_dump

    fmt = "flat" if args.flat else "elf" if args.elf else "kdump"
    opts = SaveOptions(fmt=fmt, codec=args.codec, dump_levels=levels if not args.flat else levels[:1],
                       workers=max(1, args.num_threads), selfcheck=not args.no_selfcheck)

    def log(msg: str) -> None:
        if ml & ML_COMMON:
            print(f"kdumpkit: {msg}", file=sys.stderr, flush=True)

    quiet = not (ml & ML_PROGRESS)
    with open_dump(vmcore) as src, progress_reporter("save", json_events=args.json, quiet=quiet) as progress:
        if args.flat:
            result = save_dump(src, lambda: StreamOutput(sys.stdout.buffer), opts, progress=progress, log=log)
        elif args.split:
            result = save_split(src, outs, opts, force=args.force, progress=progress, log=log)
        else:
            result = save_to_file(src, outs[0], opts, force=args.force, progress=progress, log=log)
    summary = {
        "output": "-" if args.flat else outs if args.split else outs[0],
        "format": result.format, "dump_level": result.dump_level, "levels_tried": result.levels_tried,
        "codec": result.codec, "pages_written": result.stats.pages_written, "zero_pages": result.stats.zero_pages,
        "excluded_pages": result.stats.excluded_pages, "bytes_written": result.stats.bytes_written,
        "incomplete": result.incomplete, "missing_pages": len(result.missing_pfns),
        "page_counts": result.page_counts, "seconds": round(result.seconds, 3),
    }
    if args.json:
        print(json.dumps(summary), file=sys.stderr if args.flat else sys.stdout, flush=True)
    elif ml & ML_COMMON:
        where = "standard output" if args.flat else ", ".join(outs)
        print(f"The dumpfile is saved to {where} (dump level {result.dump_level}, {result.stats.pages_written} "
              f"pages, {result.stats.bytes_written} bytes).", file=sys.stderr)
    if ml & ML_REPORT and not args.json:
        for k, v in summary.items():
            print(f"  {k:16} {v}", file=sys.stderr)
    if result.incomplete:
        if ml & ML_ERROR:
            print(f"kdumpkit: warning: the dump is incomplete ({len(result.missing_pfns)} unreadable page(s) "
                  f"marked missing)", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


def _dump_dmesg(args: argparse.Namespace, ml: int) -> int:
    if len(args.files) != 2:
        raise UsageError("usage: kdumpkit save --dump-dmesg VMCORE LOGFILE")
    from kdumpkit.capture.dmesg import dmesg_bytes, write_synced
    from kdumpkit.dump import open_dump

    vmcore, logfile = args.files
    if os.path.lexists(logfile) and not args.force:
        raise OutputError(f"{logfile} exists (will not overwrite; use --force)")
    with open_dump(vmcore) as src:
        data = dmesg_bytes(src)
    write_synced(logfile, data, overwrite=args.force)
    if ml & ML_COMMON and not args.json:
        print(f"The dmesg log is saved to {logfile}.", file=sys.stderr)
    elif args.json:
        print(json.dumps({"output": logfile, "bytes": len(data)}))
    return 0
