"""``kdumpkit status``: is this machine ready to dump?  Non-zero exit when not."""

from __future__ import annotations

import argparse
from typing import Any

from kdumpkit.cli.progress import print_json
from kdumpkit.kexec.status import status


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="readiness report: reservation, capture kernel, sysctls, target space")
    p.add_argument("--target", metavar="PATH", help="dump directory to check for free space")
    p.add_argument("--root", default="/", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    st = status(args.root, args.target)
    if args.json:
        print_json(st.as_dict())
    else:
        for c in st.checks:
            print(f"{c.status:<4}  {c.name}: {c.detail}")
        print("ready" if st.ready else "NOT READY")
    return 0 if st.ready else 1
