"""``kdumpkit verify DUMP``: headers, page sets, every page readable."""

from __future__ import annotations

import argparse
from typing import Any

from kdumpkit.cli.progress import print_json, progress_reporter
from kdumpkit.dump import open_dump
from kdumpkit.dump.verify import verify_dump


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="check a dump's structure and that every page reads back")
    p.add_argument("dump", nargs="+", help="dump file (several for a --split set)")
    p.add_argument("--format", dest="input_format", help="force the input format")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_dump(args.dump, format=args.input_format) as dump, \
            progress_reporter("verify", json_events=args.json) as progress:
        rep = verify_dump(dump, progress)
    if args.json:
        print_json(rep.to_json())
    else:
        for w in rep.warnings:
            print(f"warning: {w}")
        for p in rep.problems:
            print(f"problem: {p}")
        if rep.problem_count > len(rep.problems):
            print(f"... and {rep.problem_count - len(rep.problems)} more problems")
        missing = f", {rep.missing_pages} pages MISSING" if rep.missing_pages else ""
        print(f"{rep.path}: {rep.format}, {rep.pages_checked} pages checked{missing}, "
              + ("OK" if rep.ok else f"{rep.problem_count} problems"))
    return 0 if rep.ok else 1
