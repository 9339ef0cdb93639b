"""``kdumpkit lab``: real kernels crashing in QEMU, captured end to end.

``lab run`` does one cycle and writes its outputs; ``lab fetch`` downloads and
unpacks a Debian kernel; ``lab demo`` runs a SysRq cycle on bookworm and shows
what was captured.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from kdumpkit.lab.run import CAPTURES, SCENARIOS

    lab = sub.add_parser("lab", help="crash real kernels in QEMU and capture them (kdump end to end)")
    lsub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    lab.set_defaults(func=lambda args: (lab.print_help(), 2)[1])

    r = lsub.add_parser("run", help="boot, load the capture kernel, crash, capture, extract")
    r.add_argument("--kernel", default="bookworm", help="bullseye, bookworm, trixie, or a path to a vmlinuz")
    r.add_argument("--modules", metavar="DIR", help="modules directory for a --kernel vmlinuz path")
    r.add_argument("--mem", type=int, default=1024, metavar="MIB", help="guest memory (default 1024)")
    r.add_argument("--crashkernel", default="256M", help="crashkernel= reservation (default 256M)")
    r.add_argument("--scenario", choices=SCENARIOS, default="sysrq")
    r.add_argument("--capture", choices=CAPTURES, default="makedumpfile",
                   help="makedumpfile: also run makedumpfile -F -c -d 31 in the guest; raw: only copy /proc/vmcore")
    r.add_argument("--out", required=True, metavar="DIR", help="where vmcore, dump.flat, console.log … go")
    r.add_argument("--timeout", type=float, default=600, metavar="S", help="give up after S seconds (default 600)")
    r.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    r.add_argument("-v", "--verbose", action="store_true", help="echo the guest console")
    r.set_defaults(func=cmd_run)

    f = lsub.add_parser("fetch", help="download and unpack a Debian kernel (cached), print its paths")
    f.add_argument("kernel", help="bullseye, bookworm or trixie")
    f.add_argument("--refresh", action="store_true", help="ask the mirror for a newer version")
    f.set_defaults(func=cmd_fetch)

    d = lsub.add_parser("demo", help="crash bookworm with SysRq-c and show what was captured")
    d.add_argument("--kernel", default="bookworm")
    d.add_argument("--out", metavar="DIR", help="keep the outputs here (default: a temporary directory)")
    d.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    d.add_argument("--timeout", type=float, default=600, metavar="S")
    d.set_defaults(func=cmd_demo)


def _kernel(args: argparse.Namespace) -> Any:
    from kdumpkit.lab import kernels

    if args.modules or "/" in args.kernel:
        return kernels.custom(args.kernel, args.modules)
    return kernels.get(args.kernel)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return str(n)


def _print_result(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"{result.kernel} {result.release} — {result.scenario}, {result.mem_mb} MiB, "
                    f"crashkernel={result.crashkernel}, {result.accel}")
    t.add_column("output", overflow="fold")
    t.add_column("size", justify="right")
    for name in ("vmcore", "dump.flat", "console.log", "dmesg.txt", "meminfo.txt", "run.json"):
        p = result.out / name
        if p.is_file():
            t.add_row(str(p), _human(p.stat().st_size))
    con.print(t)
    pt = Table(title="phases (host wall time)")
    pt.add_column("phase")
    pt.add_column("seconds", justify="right")
    for k, v in result.timings.items():
        pt.add_row(k, f"{v:.2f}")
    con.print(pt)


def _live(line: Any) -> None:
    from kdumpkit.lab.console import marker

    m = marker(line.text)
    if m and "phase" in m:
        print(f"  [{line.t:6.1f}s] {m['phase']}", flush=True)


def _echo(line: Any) -> None:
    print(f"[{line.t:7.2f}] {line.text}", flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from kdumpkit.lab.run import run

    result = run(_kernel(args), out=args.out, mem_mb=args.mem, crashkernel=args.crashkernel,
                 scenario=args.scenario, capture=args.capture, timeout=args.timeout, accel=args.accel,
                 on_line=_echo if args.verbose else _live)
    _print_result(result)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from kdumpkit.lab import kernels

    k = kernels.fetch(args.kernel, refresh=args.refresh)
    # Plain lines: the paths are meant to be copied, a table would wrap them.
    for key, val in (("kernel", k.name), ("package version", k.package_version), ("release", k.release),
                     ("vmlinuz", k.vmlinuz), ("config", k.config or "-"), ("modules", k.modules_dir),
                     ("root", k.root)):
        print(f"{key + ':':17}{val}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kdumpkit.lab.run import run

    args.modules = None
    with tempfile.TemporaryDirectory(prefix="kdumpkit-demo-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        print(f"kdumpkit lab demo: {args.kernel}, SysRq-c crash, 1024 MiB guest, crashkernel=256M (about a minute "
              "with TCG)", flush=True)
        result = run(_kernel(args), out=out, mem_mb=1024, crashkernel="256M", scenario="sysrq",
                     capture="makedumpfile", timeout=args.timeout, accel=args.accel, on_line=_live)
        _print_result(result)
        _print_kernel_log(result.vmcore, result.dmesg)
        _print_info(result.vmcore)
        if not args.out:
            print("(outputs removed; pass --out DIR to keep them)")
    return 0


def _print_kernel_log(vmcore: Path, ground_truth: Path, lines: int = 12) -> None:
    """The last lines of the crashed kernel's log, as makedumpfile reads it from the dump."""
    with tempfile.TemporaryDirectory() as tmp:
        txt = Path(tmp) / "dmesg.txt"
        try:
            p = subprocess.run(["makedumpfile", "--dump-dmesg", str(vmcore), str(txt)], capture_output=True,
                               timeout=300)
            ok = p.returncode == 0 and txt.is_file()
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        src, text = ("makedumpfile --dump-dmesg of the vmcore", txt.read_text(errors="replace")) if ok else \
            ("ground truth printed before the crash", ground_truth.read_text(errors="replace"))
    log = text.rstrip().splitlines()
    # Start at the crash itself when it can be found: the tail is a register dump.
    starts = [i for i, ln in enumerate(log) if any(k in ln for k in ("sysrq: Trigger", "Kernel panic", "Oops:"))]
    first = starts[0] if starts else max(len(log) - lines, 0)
    print(f"\nthe crash in the kernel log ({src}):")
    for line in log[first:first + lines]:
        print("  " + line)


def _print_info(vmcore: Path) -> None:
    """``kdumpkit info`` of the captured dump (when the dump readers are installed)."""
    try:
        from kdumpkit.cli.main import main
        from kdumpkit.dump import open_dump  # noqa: F401
    except ImportError:
        return
    print(f"\nkdumpkit info {vmcore}:")
    main(["info", str(vmcore)])
