"""``kdumpkit setup``: crashkernel=, sysctls and boot units; ``--undo``; the hidden ``setup post-boot``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kdumpkit.cli.progress import print_json


def register(sub: Any) -> None:
    p = sub.add_parser("setup", help="arm kdump: crashkernel= in the boot loader, sysctls, systemd units",
                       description="Write crashkernel= to the boot loader (grubby or a GRUB drop-in), the crash "
                                   "sysctls, and the kdumpkit-load/-report units plus a kernel postinst hook. "
                                   "Idempotent; --undo removes it all.")
    p.add_argument("--crashkernel", metavar="SPEC",
                   help="crashkernel= value (default, or 'auto-plan': kdumpctl's table for the architecture)")
    p.add_argument("--config", metavar="FILE", help="kdumpkit TOML config (default /etc/kdumpkit/kdumpkit.toml)")
    p.add_argument("--root", default="/", help="install into this tree (commands are not run unless it is /)")
    p.add_argument("--only", metavar="STEP", action="append", choices=("bootloader", "sysctl", "units"),
                   help="only this step (repeatable): bootloader, sysctl, units")
    p.add_argument("--exe", metavar="PATH", help="kdumpkit program the units run (default: this one)")
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    p.add_argument("--undo", action="store_true", help="remove what setup installed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
    ssub = p.add_subparsers(dest="setup_command", metavar="", help=argparse.SUPPRESS)
    pb = ssub.add_parser("post-boot", description="run by kdumpkit-report.service: restore raw-device dumps and "
                                                  "write report.txt/report.json next to each new dump")
    pb.add_argument("--config", metavar="FILE", default=None)
    pb.add_argument("--root", default="/", help=argparse.SUPPRESS)
    pb.add_argument("--json", action="store_true")
    pb.set_defaults(func=run_post_boot)


def run(args: argparse.Namespace) -> int:
    from kdumpkit.setup.installer import setup, undo

    if args.undo:
        result = undo(root=args.root, dry_run=args.dry_run)
    else:
        result = setup(root=args.root, config=args.config, crashkernel=args.crashkernel, dry_run=args.dry_run,
                       exe=args.exe, steps=tuple(args.only) if args.only else ("bootloader", "sysctl", "units"))
    if args.json:
        print_json({**result.as_dict(), "dry_run": args.dry_run, "undo": args.undo})
        return 0
    for c in result.changes:
        print(c.line())
    verb = "would change" if args.dry_run else "changed"
    print(f"{'undo' if args.undo else 'setup'}: {verb + ' something' if result.changed else 'nothing to change'}"
          + ("; reboot needed" if result.reboot_needed else ""))
    return 1 if any(c.action == "failed" for c in result.changes) else 0


def run_post_boot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kdumpkit.setup.installer import read_config
    from kdumpkit.setup.postboot import post_boot

    cfg, _ = read_config(Path(args.root), args.config)
    res = post_boot(cfg, root=args.root, log=lambda m: print(f"kdumpkit: {m}", file=sys.stderr))
    if args.json:
        print_json(res.as_dict())
    return 1 if res.failed else 0
