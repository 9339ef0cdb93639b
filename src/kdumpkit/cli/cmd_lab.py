"""``kdumpkit lab``: real kernels crashing in QEMU, captured end to end.

``lab run`` does one cycle and writes its outputs; ``lab fetch`` downloads and
unpacks a Debian kernel; ``lab demo`` runs a SysRq cycle on bookworm and shows
what was captured.
"""

from __future__ import annotations

import argparse
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
                   help="makedumpfile: also run makedumpfile -F -c -d 31 in the guest; raw: only copy /proc/vmcore; "
                        "kdumpkit: kdumpkit load + capture; kdumpkit-save: kdumpkit save -F -l -d 31 in the capture kernel")
    r.add_argument("--live", action="store_true",
                   help="first take a `kdumpkit live` dump of the running guest (needs --capture kdumpkit): "
                        "live.vmcore + the guest's dmesg before/after")
    r.add_argument("--load-mode", choices=("file", "classic"), default="file",
                   help="--capture kdumpkit: kdumpkit load --mode in the guest (file: kexec_file_load, "
                        "classic: kexec_load with kdumpkit's own segments and purgatory)")
    r.add_argument("--out", required=True, metavar="DIR", help="where vmcore, dump.flat, console.log … go")
    r.add_argument("--timeout", type=float, default=600, metavar="S", help="give up after S seconds (default 600)")
    r.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    r.add_argument("-v", "--verbose", action="store_true", help="echo the guest console")
    r.set_defaults(func=cmd_run)

    f = lsub.add_parser("fetch", help="download and unpack a Debian kernel (cached), print its paths")
    f.add_argument("kernel", help="bullseye, bookworm or trixie")
    f.add_argument("--refresh", action="store_true", help="ask the mirror for a newer version")
    f.set_defaults(func=cmd_fetch)

    d = lsub.add_parser("demo", help="kdumpkit load, SysRq-c, kdumpkit capture in the capture kernel, report")
    d.add_argument("--kernel", default="bookworm")
    d.add_argument("--out", metavar="DIR", help="keep the outputs here (default: a temporary directory)")
    d.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    d.add_argument("--timeout", type=float, default=600, metavar="S")
    d.set_defaults(func=cmd_demo)

    s = lsub.add_parser("system", help="a real Debian installation in QEMU, used the way an administrator uses it: "
                                       "install, setup, reboot, crash, dump in /var/crash, report")
    s.add_argument("--suite", default="bookworm", help="Debian suite of the installed system (bookworm)")
    s.add_argument("--variant", default="default", help="storage/network layout (default: root on ext4 on virtio)")
    s.add_argument("--tool", default="kdumpkit", help="the kdump tool under test (kdumpkit)")
    s.add_argument("--out", required=True, metavar="DIR",
                   help="journey.json, console.log, var-crash/, report.txt, guest/ go here")
    s.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    s.add_argument("--json", action="store_true", help="print journey.json instead of the table")
    s.set_defaults(func=cmd_system)

    e = lsub.add_parser("estimate-crashkernel", help="bisect the smallest crashkernel= that captures (minutes)")
    add_estimate_args(e)


def add_estimate_args(e: Any) -> None:
    """Shared with ``kdumpkit estimate-crashkernel``."""
    e.add_argument("--kernel", default="bookworm")
    e.add_argument("--capture", choices=("kdumpkit", "makedumpfile"), default="kdumpkit")
    e.add_argument("--mem", type=int, default=1024, metavar="MIB")
    e.add_argument("--sizes", metavar="LIST", help="MiB values to bisect, e.g. 512,256,128,96,64")
    e.add_argument("--timeout", type=float, default=300, metavar="S", help="per trial (default 300)")
    e.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_estimate_crashkernel, modules=None)


def cmd_estimate_crashkernel(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from kdumpkit.lab.estimate import SIZES_MB, estimate_crashkernel

    sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else SIZES_MB

    def show(t: Any) -> None:
        if not args.json:
            print(f"  crashkernel={t.mb}M: {'ok' if t.ok else 'FAILED'} ({t.detail})", flush=True)

    est = estimate_crashkernel(_kernel(args), capture=args.capture, mem_mb=args.mem, sizes=sizes,
                               timeout=args.timeout, accel=args.accel, on_trial=show)
    if args.json:
        print(json.dumps({**asdict(est), "recommended_mb": est.recommended_mb}, indent=2))
        return 0 if est.smallest_mb else 1
    if est.smallest_mb is None:
        print(f"no size in {sizes} captured ({args.capture}, {args.mem} MiB guest)")
        return 1
    print(f"{args.capture} capture, {args.mem} MiB guest: smallest working crashkernel={est.smallest_mb}M"
          + (f" (first failure: {est.first_failed_mb}M)" if est.first_failed_mb else ""))
    print(f"recommended: {est.recommended_mb}M (+{est.margin_mb}M margin)")
    print(f"kdumpctl table: {est.table_mb}M; formula (kernel + modules + 3 x initramfs + 16M): {est.formula_mb}M")
    return 0


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
                 on_line=_echo if args.verbose else _live, load_mode=args.load_mode, live=args.live)
    _print_result(result)
    return 0


def cmd_system(args: argparse.Namespace) -> int:
    import sys

    from kdumpkit.cli.progress import print_json
    from kdumpkit.lab.journey import failure_line, run_journey

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    j = run_journey(suite=args.suite, variant=args.variant, tool=args.tool, out=Path(args.out), accel=args.accel,
                    log=log)
    if args.json:
        print_json(j.to_json())
    else:
        print(f"journey {j.suite}/{j.variant} with {j.tool} ({j.release}, {j.accel}, {j.mem_mb} MiB, "
              f"crashkernel={j.crashkernel or '?'}): {j.result.upper()}")
        for row in j.phases:
            print(f"  {row['name']:<24} {row['seconds']:>7.1f} s")
        for d in j.crash_dirs:
            print(f"  /var/crash/{d}: {', '.join(f.split('/', 1)[1] for f in j.files if f.startswith(d + '/'))}")
        print(f"  {j.out / 'journey.json'}")
    if j.result != "pass":
        print(f"kdumpkit: {failure_line(j)}", file=sys.stderr)
        return 1
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
    from kdumpkit.lab.demo import CRASHKERNEL, MEM_MB, run_demo

    args.modules = None
    with tempfile.TemporaryDirectory(prefix="kdumpkit-demo-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        print(f"kdumpkit lab demo: {args.kernel}, {MEM_MB} MiB guest, crashkernel={CRASHKERNEL}: kdumpkit load "
              "(kexec_file_load), SysRq-c, kdumpkit capture in the capture kernel (a few minutes with TCG; the "
              "first run also builds the capture initramfs)", flush=True)
        demo = run_demo(_kernel(args), out, accel=args.accel, timeout=args.timeout, on_line=_live)
        result = demo.result
        _print_result(result)
        sizes = result.initramfs or {}
        if sizes:
            print(f"capture initramfs: {_human(sizes['capture_compressed'])} gzip, "
                  f"{_human(sizes['capture_unpacked'])} unpacked")
        print(f"\ncaptured by kdumpkit, restored with kdumpkit restore-raw: {demo.crash_dir}")
        for p in sorted(demo.crash_dir.iterdir()):
            print(f"  {p.name:16} {_human(p.stat().st_size):>10}")
        print(f"kdumpkit verify: {'OK' if demo.verify_ok else 'PROBLEMS'}")
        print("\nkdumpkit report:\n")
        print(demo.report_text)
        if not args.out:
            print("(outputs removed; pass --out DIR to keep them)")
    return 0 if demo.verify_ok else 1
