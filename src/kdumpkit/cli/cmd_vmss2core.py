"""``kdumpkit vmss2core FILE.vmss|FILE.vmsn [-o OUT]``: a VMware checkpoint as an ELF vmcore.

The familiar name for ``kdumpkit convert FILE.vmss OUT --format elf``: memory
regions become PT_LOADs and the vCPU registers NT_PRSTATUS notes, so crash,
drgn and kdumpkit open the result like a kdump ELF.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from kdumpkit.cli.progress import progress_reporter


def register(sub: Any) -> None:
    p = sub.add_parser("vmss2core", help="convert a VMware .vmss/.vmsn (+ .vmem) checkpoint into an ELF vmcore")
    p.add_argument("checkpoint", help="FILE.vmss or FILE.vmsn (FILE.vmem beside it is used when memory is there)")
    p.add_argument("-o", "--output", help="output ELF (default: vmss.core in the current directory)")
    p.add_argument("--vmem", help="the memory file, when it is not FILE.vmem")
    p.add_argument("--vmcoreinfo", metavar="FILE", help="add this VMCOREINFO text (saved from the guest)")
    p.add_argument("--force", action="store_true", help="overwrite the output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdumpkit.dump.convert import convert
    from kdumpkit.dump.detect import open_source
    from kdumpkit.dump.override import with_vmcoreinfo
    from kdumpkit.dump.vmware import VmssDump

    out = args.output or "vmss.core"
    src = open_source(args.checkpoint)
    try:
        dump = VmssDump(src, vmem=args.vmem)
    except BaseException:
        src.close()
        raise
    with with_vmcoreinfo(dump, args.vmcoreinfo or "none") as d, progress_reporter("vmss2core") as progress:
        stats = convert(d, out, "elf", force=args.force, progress=progress)
        vcpus = len(dump.vcpus)
    print(f"{os.path.abspath(out)}: ELF core, {stats.pages_written} pages, {vcpus} vCPU register set(s)",
          file=sys.stderr)
    return 0
