"""``kdumpkit test``: crash your kernel with your configuration in the lab (QEMU), never the host.

Exit 0 when the dump was captured, verified and matches the configuration;
1 when the test failed; 2 for bad input (no kernel image, unreadable
configuration).  A pass is recorded for ``kdumpkit status``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from kdumpkit.lab.run import SCENARIOS
    from kdumpkit.lab.selftest import DEFAULT_CONFIG, DEFAULT_STATE_DIR

    p = sub.add_parser("test", help="crash your kernel with your kdumpkit configuration in QEMU, capture, report")
    p.add_argument("--kernel", metavar="K",
                   help="bullseye, bookworm, trixie, or a path to a vmlinuz (default: the running kernel's "
                        "/boot/vmlinuz-$(uname -r))")
    p.add_argument("--modules", metavar="DIR", help="modules directory (default: /lib/modules/$(uname -r))")
    p.add_argument("--config", metavar="FILE", help=f"kdumpkit configuration (default: {DEFAULT_CONFIG} if it "
                                                    "exists, else the built-in defaults)")
    p.add_argument("--mem", type=int, default=1024, metavar="MIB", help="guest memory (default 1024)")
    p.add_argument("--scenario", choices=SCENARIOS, default="sysrq")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    p.add_argument("--timeout", type=float, default=900, metavar="S", help="give up after S seconds (default 900)")
    p.add_argument("--out", metavar="DIR", help="keep the outputs here (default: a temporary directory, kept "
                                                "only when the test fails)")
    p.add_argument("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR,
                   help=f"where the success record goes (default {DEFAULT_STATE_DIR}, read by kdumpkit status)")
    p.add_argument("--json", action="store_true", help="print the result record as JSON (progress on stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdumpkit.cli.progress import print_json
    from kdumpkit.lab.console import marker
    from kdumpkit.lab.selftest import run_selftest

    stream = sys.stderr if args.json else sys.stdout

    def say(msg: str) -> None:
        print(msg, file=stream, flush=True)

    def live(line: Any) -> None:
        m = marker(line.text)
        if m and "phase" in m:
            say(f"  [{line.t:6.1f}s] {m['phase']}")

    tmp = None if args.out else tempfile.mkdtemp(prefix="kdumpkit-test-")
    out = Path(args.out) if args.out else Path(str(tmp))
    try:
        res = run_selftest(args.kernel, args.modules, args.config, out, accel=args.accel, timeout=args.timeout,
                           scenario=args.scenario, mem_mb=args.mem, state_dir=args.state_dir,
                           on_line=live, on_phase=say)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    rec = res.record
    if args.json:
        print_json(rec)
    else:
        say("")
        if res.report_text:
            say(res.report_text.rstrip())
            say("")
        say("not exercised by the lab:")
        for item in rec.get("not_exercised", []):
            say(f"  - {item}")
    for w in res.warnings:
        say(f"warning: {w}")
    kernel = rec["kernel"]
    if res.ok:
        v = rec.get("verify", {})
        say(f"PASS: {kernel['name']} {kernel['release']}: dump level {rec.get('dump_level')}, "
            f"{rec.get('dump_codec')}, crashkernel={rec['crashkernel']}, {rec.get('dump_size', 0) / (1 << 20):.1f} MiB, "
            f"verify ok ({v.get('pages_checked', 0)} pages) in {rec['duration_s']:.0f} s"
            + (f"; recorded in {res.record_path}" if res.record_path else ""))
    else:
        say(f"FAIL: {kernel['name']} {kernel['release']}: {res.reason}")
        if tmp is not None:
            say(f"outputs kept for diagnosis in {out} (console.log, test.json)")
    if tmp is not None and res.ok:
        shutil.rmtree(tmp, ignore_errors=True)
    elif args.out:
        say(f"outputs in {out}")
    return 0 if res.ok else 1
