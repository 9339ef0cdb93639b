"""``kdumpkit vtop DUMP ADDR``: translate a kernel virtual address, level by level.

Prints each page-table entry visited, like crash's ``vtop``.  ADDR is hex
(``0x`` optional) or the name of a ``SYMBOL()`` in VMCOREINFO.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kdumpkit.cli.dumpargs import add_vmcoreinfo_arg
from kdumpkit.errors import UsageError


def register(sub: Any) -> None:
    p = sub.add_parser("vtop", help="translate a kernel virtual address through the page tables")
    p.add_argument("dump", help="dump file")
    p.add_argument("addr", help="virtual address (hex) or VMCOREINFO symbol name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_vmcoreinfo_arg(p)
    p.set_defaults(func=run)


def _size(n: int) -> str:
    return f"{n >> 30}GB" if n >= 1 << 30 else f"{n >> 20}MB" if n >= 1 << 20 else f"{n >> 10}KB"


def run(args: argparse.Namespace) -> int:
    from kdumpkit.cli.dumpargs import open_for_analysis
    from kdumpkit.kernel.memory import kernel_memory
    from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

    with open_for_analysis(args.dump, args) as dump:
        info = VmcoreInfo.from_dump(dump)
        try:
            va = int(args.addr, 16)
        except ValueError:
            sym = info.symbol(args.addr)
            if sym is None:
                raise UsageError(f"{args.addr!r} is neither a hex address nor a SYMBOL() in VMCOREINFO") from None
            va = sym
        mem = kernel_memory(dump, info)
        t = mem.vtop(va)
        region = getattr(mem, "region", lambda _va: "page tables")(va)
        root_va = getattr(mem, "root_va", None)
    if args.json:
        d = t.to_dict()
        d["region"] = region
        print(json.dumps(d, indent=1))
        return 0
    print(f"{'VIRTUAL':<17} {'PHYSICAL':<16}")
    print(f"{t.va:<17x} {t.pa:<16x}")
    print()
    root = f"{root_va:x}" if root_va is not None else f"{t.root:x}"
    print(f"{t.steps[0].level} DIRECTORY: {root}  (physical {t.root:x}, {t.mode})")
    for s in t.steps:
        print(f"{s.level:>6}: {s.entry_addr:x} => {s.entry:x}")
    print(f"  PAGE: {t.pa & ~(t.page_size - 1):x}  ({_size(t.page_size)})")
    print(f"REGION: {region}")
    return 0
