"""``kdumpkit config import|check``: translate kdump.conf / kdump-tools, validate a kdumpkit TOML file."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from kdumpkit.cli.progress import print_json


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="import kdump.conf or /etc/default/kdump-tools; check a config")
    csub = p.add_subparsers(dest="config_command", metavar="CONFIG_COMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    i = csub.add_parser("import", help="translate an existing kdump configuration to kdumpkit's TOML")
    i.add_argument("--from", dest="source", metavar="FILE",
                   help="kdump.conf or kdump-tools file (default: /etc/kdump.conf, then /etc/default/kdump-tools)")
    i.add_argument("-o", "--output", metavar="FILE", help="write the TOML here (default: stdout)")
    i.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    i.add_argument("--root", default="/", help=argparse.SUPPRESS)
    i.add_argument("--json", action="store_true", help="print the translation and warnings as JSON")
    i.set_defaults(func=cmd_import)

    c = csub.add_parser("check", help="validate a kdumpkit TOML config as the capture kernel will read it")
    c.add_argument("file")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)


def cmd_import(args: argparse.Namespace) -> int:
    from kdumpkit.errors import OutputError
    from kdumpkit.setup.importer import import_file

    imported = import_file(args.source, root=args.root)
    text = imported.to_toml()
    if args.output:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
        try:
            fd = os.open(args.output, flags, 0o600)
        except FileExistsError:
            raise OutputError(f"{args.output} exists (use --force to overwrite)") from None
        except OSError as e:
            raise OutputError(f"cannot write {args.output}: {e.strerror}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    if args.json:
        print_json({"source": imported.source, "kind": imported.kind, "config": imported.data,
                    "warnings": imported.warnings, "output": args.output})
        return 0
    for w in imported.warnings:
        print(f"kdumpkit: warning: {w}", file=sys.stderr)
    if args.output:
        print(f"{args.output}: imported from {imported.source} ({len(imported.warnings)} warning(s))")
    else:
        sys.stdout.write(text)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from kdumpkit.setup import sysctl
    from kdumpkit.setup.config import load_config

    cfg = load_config(args.file)
    sysctl.settings(cfg.extra)
    targets = [t.describe() for t in cfg.targets]
    if args.json:
        print_json({"ok": True, "targets": targets, "dump_levels": list(cfg.dump_levels), "codec": cfg.codec,
                    "format": cfg.format})
    else:
        print(f"{args.file}: ok; targets {' -> '.join(targets)}; dump level "
              f"{','.join(map(str, cfg.dump_levels))}, {cfg.codec}, {cfg.format}")
    return 0
