"""``kdumpkit dmesg DUMP``: the kernel log of a crashed kernel.

``--format makedumpfile`` (default) is byte-identical to ``makedumpfile
--dump-dmesg``; ``plain`` is dmesg-like decoded text; ``json`` carries every
record field and whether the log is complete.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kdumpkit.cli.dumpargs import add_vmcoreinfo_arg, open_for_analysis
from kdumpkit.errors import OutputError


def register(sub: Any) -> None:
    p = sub.add_parser("dmesg", help="extract the kernel log (dmesg) from a dump")
    p.add_argument("dump", nargs="+", help="dump file (several for a --split set)")
    p.add_argument("--format", dest="log_format", choices=("makedumpfile", "plain", "json"), default="makedumpfile",
                   help="output format (default: makedumpfile --dump-dmesg compatible)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    add_vmcoreinfo_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdumpkit.kernel.memory import kernel_memory
    from kdumpkit.kernel.printk import format_json, format_makedumpfile, format_plain, get_printk_log

    with open_for_analysis(args.dump, args) as dump:
        log = get_printk_log(kernel_memory(dump))
        if args.log_format == "makedumpfile":
            data = format_makedumpfile(log, dump.arch)
        elif args.log_format == "plain":
            data = format_plain(log).encode("utf-8")
        else:
            data = (json.dumps(format_json(log), indent=1) + "\n").encode("utf-8")
    if args.output:
        try:
            with open(args.output, "wb") as f:
                f.write(data)
        except OSError as e:
            raise OutputError(f"cannot write {args.output}: {e.strerror}") from None
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    if log.partial:
        print(f"kdumpkit: warning: kernel log is incomplete: {'; '.join(log.problems)}", file=sys.stderr)
    return 0
