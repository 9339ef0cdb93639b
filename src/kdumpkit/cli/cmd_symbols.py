"""``kdumpkit symbols DUMP [NAME|ADDR]``: the crashed kernel's symbols without debuginfo.

A name prints its address; an address (``0x…``) prints ``function+0xoff/0xsize``;
nothing prints the whole table in ``/proc/kallsyms`` form.  The table is the
dump's own kallsyms unless ``--system-map`` or ``--kallsyms`` names a file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kdumpkit.cli.dumpargs import add_vmcoreinfo_arg
from kdumpkit.errors import UsageError


def register(sub: Any) -> None:
    p = sub.add_parser("symbols", help="look up kernel symbols (kallsyms from the dump, System.map, /proc/kallsyms)")
    p.add_argument("dump", nargs="+", help="dump file (several for a --split set), then optionally NAME or ADDR")
    p.add_argument("--system-map", metavar="FILE", help="use this System.map (relocated by KERNELOFFSET)")
    p.add_argument("--kallsyms", metavar="FILE", help="use this /proc/kallsyms snapshot")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_vmcoreinfo_arg(p)
    p.set_defaults(func=run)


def _split_query(items: list[str]) -> tuple[list[str], str | None]:
    """The last positional is a query when it is not an existing file."""
    import os

    if len(items) > 1 and not os.path.exists(items[-1]):
        return items[:-1], items[-1]
    return items, None


def run(args: argparse.Namespace) -> int:
    from kdumpkit.cli.dumpargs import open_for_analysis
    from kdumpkit.cli.progress import print_json
    from kdumpkit.kernel.memory import kernel_memory
    from kdumpkit.kernel.symbols import Symbol, load_symbol_table
    from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

    paths, query = _split_query(list(args.dump))
    with open_for_analysis(paths, args) as dump:
        info = VmcoreInfo.from_dump(dump)
        table = load_symbol_table(kernel_memory(dump, info), info, system_map=args.system_map,
                                  kallsyms=args.kallsyms)
    if query is None:
        if args.json:
            print_json({"source": table.source, "symbols": [_sym_json(s) for s in table]})
        else:
            out = sys.stdout
            for s in table:
                out.write(f"{s.address:016x} {s.type} {s.name}{' [' + s.module + ']' if s.module else ''}\n")
        return 0
    sym: Symbol | None
    if query.lower().startswith("0x"):
        try:
            addr = int(query, 16)
        except ValueError:
            raise UsageError(f"{query!r} is not a hex address") from None
        sym = table.symbolize(addr)
        if sym is None:
            raise UsageError(f"{addr:#x} is not inside any symbol of {table.source}")
        text = sym.format()
    else:
        sym = table.lookup(query)
        if sym is None:
            raise UsageError(f"no symbol {query!r} in {table.source}")
        text = f"{sym.address:#018x} {sym.type} {sym.name} size {sym.size:#x}"
    if args.json:
        print_json({"source": table.source, "query": query, **_sym_json(sym), "text": text})
    else:
        print(text)
    return 0


def _sym_json(s: Any) -> dict[str, Any]:
    return {"name": s.name, "address": f"{s.address:#x}", "size": s.size, "type": s.type,
            "module": s.module, "offset": s.offset}
