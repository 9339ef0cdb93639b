#!/usr/bin/env python3
"""The kdump writer's page loop alone: native core vs its pure-Python twin, in CPU seconds.

Every dumped page of an ELF vmcore (default: the lab's bookworm reference dump)
is encoded in 256-page windows by ``kdump.encode_window`` — zero check,
compression, descriptors — once through the C core and once through the
Python path, per codec.  The input is read into memory first, so neither
page faults nor start-up are in the figures.  CPU time (``process_time``) is
what a machine shared with QEMU runs disturbs least; wall time with 2 threads
shows whether the GIL is really released.  Timings only report, never fail.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from kdumpkit.dump import kdump  # noqa: E402
from kdumpkit.dump.detect import open_dump  # noqa: E402
from kdumpkit.dump.kdump import BATCH_PAGES, _encode_window_py, _native_for  # noqa: E402


def windows(vmcore: str, limit_pages: int) -> list[bytes]:
    out: list[bytes] = []
    with open_dump(vmcore) as d:
        for s, e in d.dumped_runs():
            for pfn in range(s, e, BATCH_PAGES):
                out.append(bytes(d._read_dumped(pfn, min(BATCH_PAGES, e - pfn))))
                if sum(map(len, out)) >= limit_pages * d.page_size:
                    return out
    return out


def run(fn: Callable[..., kdump.Window], wins: list[bytes], codec: str, ps: int, threads: int) -> tuple[float, float, int]:
    """(wall s, CPU s, output bytes) of encoding every window, in ``threads`` threads."""
    c0, w0 = time.process_time(), time.perf_counter()
    args = [(codec, ps, w, True, 0, -1, "<") for w in wins]
    if threads == 1:
        outs = [fn(*a) for a in args]
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            outs = list(pool.map(lambda a: fn(*a), args))
    return time.perf_counter() - w0, time.process_time() - c0, sum(len(o[0]) for o in outs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vmcore", help="ELF vmcore (default: the lab's bookworm reference dump)")
    ap.add_argument("--pages", type=int, default=1 << 30, help="at most this many pages")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    vmcore = args.vmcore
    if vmcore is None:
        from kdumpkit.lab.reference import reference_set

        vmcore = str(reference_set("bookworm").vmcore)
    wins = windows(vmcore, args.pages)
    ps = 4096
    n = sum(map(len, wins)) // ps
    print(f"{n} pages from {vmcore}, {os.cpu_count()} CPUs, best of {args.repeat}; native core: "
          f"{'built' if kdump.native_core() else 'NOT built'}")
    print("| codec | path | threads | CPU s | µs/page (CPU) | wall s | output MB |")
    print("|---|---|---|---|---|---|---|")
    for codec in ("lzo", "zlib", "zstd"):
        paths: list[tuple[str, Callable[..., kdump.Window], int]] = [("python", _encode_window_py, 1)]
        if _native_for(codec) is not None:
            paths += [("native", kdump.encode_window, 1), ("native", kdump.encode_window, 2)]
        for label, fn, threads in paths:
            # one thread: the least CPU; more: the shortest wall (what threads are for)
            best = min((run(fn, wins, codec, ps, threads) for _ in range(args.repeat)),
                       key=lambda r: r[1] if threads == 1 else r[0])
            wall, cpu, size = best
            print(f"| {codec} | {label} | {threads} | {cpu:.2f} | {cpu / n * 1e6:.2f} | {wall:.2f} | {size / 1e6:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
