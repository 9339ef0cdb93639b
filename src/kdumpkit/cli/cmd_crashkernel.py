"""``kdumpkit crashkernel parse|format|plan``: what a ``crashkernel=`` value reserves, and what to choose."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kdumpkit.cli.progress import print_json
from kdumpkit.errors import KdumpkitError, UsageError
from kdumpkit.kexec import crashkernel as ck
from kdumpkit.kexec.bzimage import read_bzimage
from kdumpkit.kexec.iomem import parse_iomem, read_iomem
from kdumpkit.kexec.status import human, meminfo


def register(sub: Any) -> None:
    p = sub.add_parser("crashkernel", help="parse, normalise and plan crashkernel= reservations")
    csub = p.add_subparsers(dest="ck_command", metavar="CK_COMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    a = csub.add_parser("parse", help="show what a crashkernel= value reserves")
    a.add_argument("value", help="e.g. 256M, 512M-2G:64M,2G-:128M@16M, 1G,high")
    a.add_argument("--ram", help="system RAM size to evaluate ranges for (e.g. 16G); default: this machine")
    a.add_argument("--no-round", action="store_true", help="compare the exact RAM size (kernels before 4.19)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_parse)

    f = csub.add_parser("format", help="print a crashkernel= value in canonical kernel syntax")
    f.add_argument("value")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_format)

    n = csub.add_parser("plan", help="kdumpctl's default table value and the estimate formula side by side")
    n.add_argument("--ram", help="system RAM size (default: this machine's, from /proc/iomem or /proc/meminfo)")
    n.add_argument("--arch", default="x86_64", choices=sorted(ck.DEFAULT_TABLES))
    n.add_argument("--sme-sev", action="store_true", help="memory encryption active (+64M, x86_64/s390x)")
    n.add_argument("--kernel-size", help="capture kernel size in memory (default: this kernel's, from /proc/iomem)")
    n.add_argument("--kernel-image", metavar="PATH", help="capture bzImage: its init_size is the kernel size")
    n.add_argument("--modules-size", help="modules the capture initramfs loads (default: all of /proc/modules)")
    n.add_argument("--initramfs-size", default="0", help="capture initramfs file size (e.g. 32M)")
    n.add_argument("--luks", default="0", help="LUKS2 keyslot memory (Argon2 cost) to open the dump target")
    n.add_argument("--root", default="/", help=argparse.SUPPRESS)
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=cmd_plan)


def _system_ram(root: str) -> int:
    try:
        return parse_iomem(read_iomem(root)).system_ram_size()
    except KdumpkitError:
        pass
    total = meminfo(Path(root)).get("MemTotal")
    if not total:
        raise UsageError("cannot tell this machine's RAM size: give --ram")
    return total


def _ram(args: argparse.Namespace) -> int:
    return ck.parse_size(args.ram) if args.ram else _system_ram(getattr(args, "root", "/"))


def cmd_parse(args: argparse.Namespace) -> int:
    value = ck.parse(args.value)
    ram = _ram(args) if value.is_range_form or args.ram else None
    out: dict[str, Any] = {"value": value.format(), "form": "ranges" if value.is_range_form else "simple",
                           "suffix": value.suffix, "offset": value.offset}
    if value.is_range_form:
        out["ranges"] = [{"start": r.start, "end": r.end, "size": r.size} for r in value.ranges]
    if ram is not None:
        size = value.size_for(ram, round_128m=not args.no_round)
        out.update(ram=ram, reserved=size)
    else:
        out["reserved"] = value.size
    if args.json:
        print_json(out)
        return 0
    print(f"crashkernel={out['value']}")
    for r in value.ranges:
        end = ck.format_size(r.end) if r.end is not None else "∞"
        print(f"  RAM [{ck.format_size(r.start)}, {end}) -> {ck.format_size(r.size)}")
    if value.offset is not None:
        print(f"  at physical {value.offset:#x}")
    if value.suffix:
        print(f"  {value.suffix} memory")
    if ram is not None:
        rounded = "" if args.no_round else f" (compared as {ck.format_size(-(-ram // ck.SZ_128M) * ck.SZ_128M)})"
        print(f"with {human(ram)} RAM{rounded}: reserves {ck.format_size(out['reserved']) if out['reserved'] else 'nothing'}")
    return 0


def cmd_format(args: argparse.Namespace) -> int:
    value = ck.parse(args.value).format()
    if args.json:
        print_json({"value": value})
    else:
        print(value)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    ram = _ram(args)
    table = ck.default_crashkernel(args.arch, sme_sev=args.sme_sev)
    if args.kernel_size:
        ksize = ck.parse_size(args.kernel_size)
    elif args.kernel_image:
        ksize = read_bzimage(args.kernel_image).init_size
    else:
        try:
            ksize = parse_iomem(read_iomem(args.root)).kernel_image_size()
        except KdumpkitError:
            ksize = 0
    mods = ck.parse_size(args.modules_size) if args.modules_size else ck.loaded_modules_size(args.root)
    est = ck.estimate(kernel_size=ksize, modules_size=mods, initramfs_size=ck.parse_size(args.initramfs_size),
                      system_ram=ram, luks_memory=ck.parse_size(args.luks), arch=args.arch)
    table_size = table.size_for(ram)
    out = {"ram": ram, "arch": args.arch, "table": table.format(), "table_size": table_size,
           "estimate": {"kernel": est.kernel, "modules": est.modules, "initramfs": est.initramfs,
                        "initramfs_factor": est.initramfs_factor, "runtime": est.runtime, "luks": est.luks,
                        "total": est.estimated},
           "recommended": est.recommended}
    if args.json:
        print_json(out)
        return 0
    print(f"RAM: {human(ram)} ({args.arch})")
    print(f"kdumpctl default table: crashkernel={table.format()}  -> {ck.format_size(table_size) if table_size else 'nothing'}")
    print(f"estimate: kernel {human(est.kernel)} + modules {human(est.modules)} + {est.initramfs_factor} x initramfs "
          f"{human(est.initramfs)} + runtime {human(est.runtime)} + LUKS {human(est.luks)} = {human(est.estimated)}")
    print(f"recommended: crashkernel={ck.format_size(est.recommended)} (the larger of the two)")
    if not args.initramfs_size or ck.parse_size(args.initramfs_size) == 0:
        print("note: give --initramfs-size (the capture initramfs) for a meaningful estimate")
    return 0
