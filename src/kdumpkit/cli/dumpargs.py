"""What every analysis command takes to open a dump: the files and ``--vmcoreinfo``.

A dump from outside the guest (QEMU without ``-device vmcoreinfo``, VMware,
LiME, AVML, LKCD) carries no VMCOREINFO; the analysis commands then search
the dump's memory for the kernel's own note, or take the text from a file
(``/sys/kernel/vmcoreinfo``'s note saved on the same boot, or another dump).
"""

from __future__ import annotations

import argparse
from typing import Any

from kdumpkit.dump.base import Dump

VMCOREINFO_HELP = ("VMCOREINFO text to use (a file, 'scan' to search all memory, 'none'); default: the dump's own, "
                   "else a bounded search of its memory")


def add_vmcoreinfo_arg(p: Any) -> None:
    p.add_argument("--vmcoreinfo", metavar="FILE", help=VMCOREINFO_HELP)


def open_for_analysis(paths: str | list[str], args: argparse.Namespace, *, input_format: str | None = None) -> Dump:
    """``paths`` opened (several = a --split set) as analysis sees it (:func:`with_vmcoreinfo`)."""
    from kdumpkit.dump import open_dump
    from kdumpkit.dump.override import with_vmcoreinfo

    if isinstance(paths, list) and len(paths) == 1:
        paths = paths[0]
    return with_vmcoreinfo(open_dump(paths, format=input_format), getattr(args, "vmcoreinfo", None))
