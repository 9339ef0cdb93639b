"""``kdumpkit report DUMP``: the triage report (kernel, crash, backtrace, log, signature).

Every section degrades to "unavailable: <reason>" on damaged dumps, so the
command succeeds on anything ``open_dump`` accepts.
"""

from __future__ import annotations

import argparse
from typing import Any

from kdumpkit.cli.dumpargs import add_vmcoreinfo_arg


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="crash triage report: panic, backtrace, log, modules, signature")
    p.add_argument("dump", nargs="+", help="dump file (several for a --split set)")
    p.add_argument("--format", dest="report_format", choices=("text", "markdown", "json"), default="text")
    p.add_argument("--system-map", metavar="FILE", help="symbols from this System.map (relocated by KERNELOFFSET)")
    p.add_argument("--kallsyms", metavar="FILE", help="symbols from this /proc/kallsyms snapshot")
    add_vmcoreinfo_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdumpkit.analyze.report import build_report, render
    from kdumpkit.cli.dumpargs import open_for_analysis
    from kdumpkit.cli.progress import print_json

    with open_for_analysis(args.dump, args) as dump:
        report = build_report(dump, system_map=args.system_map, kallsyms=args.kallsyms)
    if args.report_format == "json":
        print_json(report.to_json())
    else:
        print(render(report, args.report_format))
    return 0
