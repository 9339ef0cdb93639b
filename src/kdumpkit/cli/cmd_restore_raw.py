"""``kdumpkit restore-raw DEV DIR`` — turn a dump left on a raw device into a crash folder."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("restore-raw", help="restore a dump the capture kernel wrote to a raw device")
    p.add_argument("device", help="the raw target (block device or file)")
    p.add_argument("directory", help="where to create the dated crash folder")
    p.add_argument("--keep-device", action="store_true", help="do not wipe the device header afterwards")
    p.add_argument("--if-present", action="store_true", help="exit 0 quietly when the device holds no dump (boot hook)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdumpkit.capture.rawrestore import restore_raw
    from kdumpkit.errors import NotADumpError

    try:
        r = restore_raw(args.device, args.directory, wipe=not args.keep_device,
                        log=lambda m: print(f"kdumpkit: {m}", file=sys.stderr))
    except NotADumpError:
        if args.if_present:
            return 0
        raise
    print(f"{r.folder}: vmcore {r.vmcore_size} bytes{'' if r.complete else ' (incomplete)'}")
    return 0 if r.complete else 3
