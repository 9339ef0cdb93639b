"""``kdumpkit load`` and ``kdumpkit unload``: the capture kernel, loaded by kdumpkit's own syscalls."""

from __future__ import annotations

import argparse
from typing import Any

from kdumpkit.cli.progress import print_json
from kdumpkit.kexec import loader


def register(sub: Any) -> None:
    p = sub.add_parser("load", help="load the capture kernel (kexec_file_load, or kexec_load with --mode classic)")
    p.add_argument("--kernel", metavar="PATH", help="capture kernel (default /boot/vmlinuz-$(uname -r))")
    p.add_argument("--initrd", metavar="PATH", help="capture initramfs (default: the first kdump initramfs found)")
    p.add_argument("--no-initrd", action="store_true", help="load without an initramfs")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cmdline", metavar="STR", help="the whole capture command line (nothing derived)")
    g.add_argument("--default-append", metavar="STR", default=loader.DEFAULT_APPEND,
                   help="defaults appended to the derived command line (kdumpctl's x86_64 set)")
    p.add_argument("--append", metavar="STR", default="", help="more options for the capture command line")
    p.add_argument("--remove", metavar="KEY", action="append",
                   help="also drop this option from /proc/cmdline (repeatable)")
    p.add_argument("--mode", choices=("file", "classic"), default="file",
                   help="file: kexec_file_load (default, works under lockdown); classic: kexec_load with segments "
                        "kdumpkit builds (kernel, boot_params, initrd, elfcorehdr, purgatory)")
    p.add_argument("--dry-run", action="store_true", help="show what would be loaded, load nothing")
    p.add_argument("--no-kallsyms", action="store_true",
                   help="do not pack a /proc/kallsyms snapshot into the initramfs (it goes next to the dump)")
    p.add_argument("--no-image-check", action="store_true", help="do not check the kernel's bzImage header first")
    p.add_argument("--json", action="store_true")
    p.add_argument("--root", default="/", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_load)

    u = sub.add_parser("unload", help="unload the capture kernel")
    u.add_argument("--mode", choices=("file", "classic"), default="file")
    u.set_defaults(func=cmd_unload)


def cmd_load(args: argparse.Namespace) -> int:
    plan = loader.plan_load(root=args.root, kernel=args.kernel, initrd=args.initrd, cmdline=args.cmdline,
                            append=args.append, mode=args.mode,
                            remove=(*loader.DEFAULT_REMOVE, *(args.remove or ())),
                            default_append=args.default_append, no_initrd=args.no_initrd,
                            check_image=not args.no_image_check, kallsyms=not args.no_kallsyms)
    info: dict[str, Any] = {
        "mode": plan.mode, "kernel": str(plan.kernel), "initrd": str(plan.initrd) if plan.initrd else None,
        "cmdline": plan.cmdline, "flags": plan.flags, "loaded": False,
        "kallsyms_snapshot": ({"symbols": plan.kallsyms.symbols, "module_symbols": plan.kallsyms.module_symbols,
                               "gzip_bytes": len(plan.kallsyms.data)} if plan.kallsyms else None)}
    if plan.classic is not None:
        img = plan.classic
        info["entry"] = img.entry
        info["segments"] = [{"name": s.name, "mem": s.mem, "memsz": s.memsz, "bufsz": s.size} for s in img.segments]
        info["e820"] = [{"addr": a, "size": n, "type": t} for a, n, t in img.e820]
    if not args.dry_run:
        loader.load(plan)
        info["loaded"] = True
    if args.json:
        print_json(info)
    else:
        for n in plan.notes:
            print(n)
        print(f"{'would load' if args.dry_run else 'loaded'} ({plan.mode}): {plan.kernel}"
              f"{' + ' + str(plan.initrd) if plan.initrd else ''}")
        print(f"command line: {plan.cmdline}")
        if plan.classic is not None:
            print(f"kexec_load segments (entry {plan.classic.entry:#x}: purgatory -> kernel "
                  f"{plan.classic.kernel_entry:#x}, boot_params {plan.classic.boot_params_addr:#x}):")
            for row in plan.classic.table():
                print(f"  {row}")
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    loader.unload(mode=args.mode)
    print("capture kernel unloaded")
    return 0
