"""``kdumpkit initramfs build``: the capture initramfs that runs ``kdumpkit capture``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("initramfs", help="build the capture initramfs (busybox, modules, Python runtime, config)")
    isub = p.add_subparsers(dest="initramfs_command", metavar="INITRAMFS_COMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    b = isub.add_parser("build", help="build it (default /var/lib/kdumpkit/initrd.img-<release>)")
    b.add_argument("--out", metavar="FILE", help="where to write it")
    b.add_argument("--config", metavar="FILE", help="kdumpkit TOML configuration to embed (validated first)")
    b.add_argument("--modules", nargs="*", default=[], metavar="NAME", help="more kernel modules (deps follow)")
    b.add_argument("--kernel-release", metavar="R", help="take modules from /lib/modules/R (default: uname -r)")
    b.add_argument("--modules-dir", metavar="DIR", help="take modules from this directory instead")
    b.add_argument("--no-modules", action="store_true", help="no kernel modules (drivers built in)")
    b.add_argument("--mount", action="append", default=[], metavar="DEV:DIR[:FSTYPE]",
                   help="mount this before the capture instead of the detected filesystems (repeatable; DEV may "
                        "be UUID=… or LABEL=…)")
    b.add_argument("--no-detect-mounts", action="store_true",
                   help="do not look up the local targets' filesystems on this system (for images built for "
                        "another machine: give --mount)")
    b.add_argument("--compress", choices=("gzip", "xz", "none"), default="gzip")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    from kdumpkit.cli.progress import print_json
    from kdumpkit.setup.config import loads_config
    from kdumpkit.setup.initramfs import (
        DEFAULT_CONFIG_TEXT,
        build,
        default_output,
        host_modules_dir,
        local_target_mounts,
        parse_mount,
    )

    text = Path(args.config).read_text() if args.config else DEFAULT_CONFIG_TEXT
    cfg = loads_config(text, args.config or "the default configuration")
    if args.mount:
        mounts = [parse_mount(m) for m in args.mount]
    else:
        mounts = [] if args.no_detect_mounts else local_target_mounts(cfg)
    mods: Path | None = None
    if not args.no_modules:
        mods = Path(args.modules_dir) if args.modules_dir else host_modules_dir(args.kernel_release)
    out = Path(args.out) if args.out else default_output(args.kernel_release)
    _blob, r = build(out, config=args.config, modules_dir=mods, modules=args.modules, mounts=mounts,
                     compression=args.compress)
    info = {"path": str(out), "compression": r.compression, "compressed": r.compressed, "unpacked": r.unpacked,
            "files": r.files, "modules": r.modules, "runtime_unpacked": r.runtime.unpacked,
            "python": r.runtime.python, "notes": r.notes,
            "mounts": [{"target": m.path, "spec": m.spec, "fstype": m.fstype, "subdir": m.subdir, "device": m.device}
                       for m in mounts]}
    if args.json:
        print_json(info)
    else:
        mib = 1 << 20
        print(f"{out}: {r.compressed / mib:.1f} MiB {r.compression}, {r.unpacked / mib:.1f} MiB unpacked, "
              f"{r.files} files")
        print(f"python runtime: {r.runtime.unpacked / mib:.1f} MiB ({len(r.runtime.modules)} modules) from "
              f"{r.runtime.python}")
        print(f"modules: {' '.join(r.modules) or '(none)'}")
        for m in mounts:
            print(f"local target {m.path}: {m.spec} ({m.device}, {m.fstype}) directory /{m.subdir}")
        for note in r.notes:
            print(f"note: {note}")
    return 0
