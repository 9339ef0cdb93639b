#!/usr/bin/env python3
"""Side-by-side benchmarks: kdumpkit vs makedumpfile on the same input, in one run.

Each case runs both commands on the same input file, one after the other,
after dropping nothing and warming the page cache with one read of the input
(so neither pays the first read).  For each command it records wall time,
CPU time, peak RSS (``wait4`` rusage of that child only) and output size, and
writes the ratios to ``bench/RESULTS.md``.

Inputs: the lab's real ELF vmcore (``kdumpkit.lab.reference``), and with
``--synthetic-gib N`` a large synthetic sparse ELF (a realistic mix of zero,
compressible and random pages).  Timings are never pass/fail: this only reports.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

ROOT = Path(__file__).resolve().parent.parent
KDUMPKIT = [sys.executable, "-m", "kdumpkit.cli.main"]


@dataclass
class Measure:
    wall: float
    cpu: float
    rss_mib: float
    out_bytes: int
    rc: int


def measure(cmd: list[str], outputs: list[Path]) -> Measure:
    """Run ``cmd`` under GNU time for its own peak RSS.

    Not ``wait4`` on a child of this process: Linux keeps a process's RSS
    high-water mark across ``exec``, so a child forked from this (large)
    Python process would report our RSS, not its own.
    """
    for o in outputs:
        if o.exists():
            o.unlink()
    rss_file = outputs[0].with_suffix(".rss")
    t0 = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss_file), *cmd], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        print(f"  ! {' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode().strip()[-300:]}", file=sys.stderr)
    fields = rss_file.read_text().split()[-3:]
    rss_kib, user, system = int(fields[0]), float(fields[1]), float(fields[2])
    size = sum(o.stat().st_size for o in outputs if o.exists())
    return Measure(wall, user + system, rss_kib / 1024, size, proc.returncode)


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def synthetic_elf(gib: float, path: Path) -> None:
    from kdumpkit.dump.elf import write_elf
    from kdumpkit.dump.sink import FileSink
    from kdumpkit.dump.testing import makedumpfile_ready_dump

    pages = int(gib * (1 << 30) // 4096)
    # Half zero pages, a few incompressible ones: the mix of a lightly used machine.
    src = makedumpfile_ready_dump(ram=[(0, pages)], zero_fraction=0.5, random_fraction=0.05, seed=1)
    with FileSink(str(path), overwrite=True) as sink:
        write_elf(src, sink)


def read_program_headers(f: BinaryIO) -> tuple[bytearray, int, int, int, list[bytes], list[tuple[int, ...]]]:
    """An ELF64 file's header, e_phoff, e_phentsize, e_phnum, raw program headers and its PT_LOADs unpacked
    (p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align)."""
    import struct

    f.seek(0)
    ehdr = bytearray(f.read(64))
    phoff, = struct.unpack_from("<Q", ehdr, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", ehdr, 0x36)
    f.seek(phoff)
    phdrs = [f.read(phentsize) for _ in range(phnum)]
    loads = [struct.unpack_from("<IIQQQQQQ", p) for p in phdrs if struct.unpack_from("<I", p)[0] == 1]
    return ehdr, phoff, phentsize, phnum, phdrs, loads


def sparse_elf(src: Path, gib: int, path: Path) -> None:
    """``src`` (an ELF vmcore) plus one PT_LOAD of zeros up to ``gib`` GiB of RAM, kept as a file hole.

    The new program header table goes at the end of the file (``e_phoff`` may
    point anywhere), so the original notes and data stay where they were.
    What must not grow with RAM (dmesg, info) is timed on this.
    """
    import struct

    shutil.copyfile(src, path)
    with open(path, "r+b") as f:
        ehdr, phoff, phentsize, phnum, phdrs, loads = read_program_headers(f)
        ram = [ld for ld in loads if ld[4] < (1 << 46)]
        end = max(ld[4] + ld[6] for ld in ram)
        start = max(end, 1 << 32) + (1 << 30) - 1 & ~((1 << 30) - 1)
        size = (gib << 30) - start
        if size <= 0:
            raise SystemExit(f"--sparse-gib {gib} is below the dump's own RAM")
        vaddr = ram[-1][3] - ram[-1][4] + start
        data_off = os.fstat(f.fileno()).st_size + 4095 & ~4095
        new = struct.pack("<IIQQQQQQ", 1, 7, data_off, vaddr, start, size, size, 0)
        f.seek(data_off + size)
        f.write(b"".join(phdrs) + new)
        struct.pack_into("<Q", ehdr, 0x20, data_off + size)
        struct.pack_into("<H", ehdr, 0x38, phnum + 1)
        f.seek(0)
        f.write(ehdr)


def cases(vmcore: Path, tmp: Path, workers: list[int], *, real: bool = True, sparse: bool = False
          ) -> list[tuple[str, list[str], list[str] | None, list[Path], list[Path]]]:
    ours, theirs = tmp / "ours.out", tmp / "theirs.out"
    out: list[tuple[str, list[str], list[str] | None, list[Path], list[Path]]] = []
    if sparse:  # what must not grow with the dump: the log and the summary
        return [("dmesg", [*KDUMPKIT, "dmesg", str(vmcore), "-o", str(ours)],
                 ["makedumpfile", "--dump-dmesg", str(vmcore), str(theirs)], [ours], [theirs]),
                ("info (no makedumpfile equivalent)", [*KDUMPKIT, "info", "--json", str(vmcore)], None, [ours], [])]
    import importlib.util

    levels = [(["-d", "0"], "d0"), (["-d", "1"], "d1")]
    if real and importlib.util.find_spec("kdumpkit.cli.cmd_save"):  # filtering needs a real kernel's memory
        levels.append((["-d", "31"], "d31"))
    for level_opts, label in levels:
        for codec in ("c", "l", "z"):
            for n in workers:
                if label == "d1":  # zero pages only: no kernel knowledge needed (synthetic input too)
                    our_cmd = [*KDUMPKIT, "convert", str(vmcore), str(ours), "--format", "kdump", f"-{codec}",
                               "--exclude-zero", "--num-threads", str(n), "--force"]
                elif label == "d31":
                    our_cmd = [*KDUMPKIT, "save", *level_opts, f"-{codec}", "--num-threads", str(n), str(vmcore), str(ours)]
                else:
                    our_cmd = [*KDUMPKIT, "convert", str(vmcore), str(ours), "--format", "kdump", f"-{codec}",
                               "--num-threads", str(n), "--force"]
                mdf = ["makedumpfile", *level_opts, f"-{codec}", str(vmcore), str(theirs)]
                if n > 1:
                    mdf[1:1] = ["--num-threads", str(n)]
                out.append((f"ELF→kdump {label} -{codec} {n}w", our_cmd, mdf, [ours], [theirs]))
    # Conversion throughput against a plain copy of the same bytes (issue: within 1.2x for uncompressed targets).
    out.append(("ELF→ELF convert (second column: cp, not makedumpfile)",
                [*KDUMPKIT, "convert", str(vmcore), str(ours), "--format", "elf", "--force"],
                ["cp", "--sparse=never", str(vmcore), str(theirs)], [ours], [theirs]))
    out.append(("ELF→kdump --no-compress (second column: cp)",
                [*KDUMPKIT, "convert", str(vmcore), str(ours), "--format", "kdump", "--no-compress", "--force"],
                ["cp", "--sparse=never", str(vmcore), str(theirs)], [ours], [theirs]))
    if real:  # a synthetic dump has no kernel log
        out.append(("info (no makedumpfile equivalent)", [*KDUMPKIT, "info", "--json", str(vmcore)], None, [ours], []))
        out.append(("dmesg", [*KDUMPKIT, "dmesg", str(vmcore), "-o", str(ours)],
                    ["makedumpfile", "--dump-dmesg", str(vmcore), str(theirs)], [ours], [theirs]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vmcore", help="ELF vmcore (default: the lab's bookworm reference dump)")
    ap.add_argument("--synthetic-gib", type=float, default=0, help="also run on a synthetic ELF of this size")
    ap.add_argument("--sparse-gib", type=int, default=0,
                    help="also time dmesg/info on the real vmcore grown to this much RAM with a sparse hole")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--only", help="substring filter on case names")
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()
    if not shutil.which("makedumpfile"):
        print("makedumpfile is not installed (make bootstrap)", file=sys.stderr)
        return 2
    inputs: list[tuple[str, Path]] = []
    if args.vmcore:
        inputs.append(("given vmcore", Path(args.vmcore)))
    else:
        from kdumpkit.lab.reference import reference_set

        ref = reference_set("bookworm")
        inputs.append((f"lab bookworm {ref.release}", Path(ref.vmcore)))
    tmpdir = Path(tempfile.mkdtemp(prefix="kdumpkit-bench-", dir=os.environ.get("KDUMPKIT_BENCH_TMP")))
    if args.synthetic_gib:
        syn = tmpdir / "synthetic.elf"
        synthetic_elf(args.synthetic_gib, syn)
        inputs.append((f"synthetic {args.synthetic_gib:g} GiB (makedumpfile-ready, 50% zero pages)", syn))
    if args.sparse_gib:
        sp = tmpdir / "sparse.elf"
        sparse_elf(inputs[0][1], args.sparse_gib, sp)
        inputs.append((f"{inputs[0][0]} grown to {args.sparse_gib} GiB of RAM (sparse hole)", sp))
    workers = [int(w) for w in args.workers.split(",")]
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M')} — {platform.node()}, {os.cpu_count()} CPUs, "
             f"{platform.python_implementation()} {platform.python_version()}", ""]
    try:
        for label, vmcore in inputs:
            sparse = "sparse hole" in label
            if not sparse:  # warming a sparse file would read its hole
                warm(vmcore)
            size_mb = vmcore.stat().st_size / 1e6
            lines += [f"### {label} ({size_mb:.0f} MB ELF)", "",
                      "| case | kdumpkit s | makedumpfile s | time ratio (mdf/ours) | kdumpkit MB | mdf MB | size ratio | "
                      "kdumpkit RSS MiB | mdf RSS MiB |", "|---|---|---|---|---|---|---|---|---|"]
            for name, ours_cmd, mdf_cmd, o1, o2 in cases(vmcore, tmpdir, workers, real=not label.startswith("synth"),
                                                           sparse=sparse):
                if args.only and args.only not in name:
                    continue
                a = measure(ours_cmd, o1)
                if mdf_cmd is None:
                    flag = "" if a.rc == 0 else f" (rc {a.rc})"
                    row = (f"| {name}{flag} | {a.wall:.2f} | — | — | — | — | — | {a.rss_mib:.0f} | — |")
                    print(row, flush=True)
                    lines.append(row)
                    continue
                b = measure(mdf_cmd, o2)
                ratio = b.wall / a.wall if a.wall else float("nan")
                sratio = a.out_bytes / b.out_bytes if b.out_bytes else float("nan")
                flag = "" if a.rc == 0 and b.rc == 0 else f" (rc {a.rc}/{b.rc})"
                row = (f"| {name}{flag} | {a.wall:.2f} | {b.wall:.2f} | {ratio:.2f}× | {a.out_bytes / 1e6:.1f} | "
                       f"{b.out_bytes / 1e6:.1f} | {sratio:.3f} | {a.rss_mib:.0f} | {b.rss_mib:.0f} |")
                print(row, flush=True)
                lines.append(row)
            lines.append("")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    res = Path(args.results)
    old = res.read_text() if res.exists() else "# Benchmarks: kdumpkit vs makedumpfile\n\nProduced by `make bench` (bench/run.py).\n\n"
    res.write_text(old + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
