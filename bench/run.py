#!/usr/bin/env python3
"""Side-by-side benchmarks: kdumpkit vs makedumpfile on the same input, in one run.

Each case runs both commands on the same input file, alternating, ``--repeat``
times (best kept: the machine is shared), after warming the page cache with
one read of the input (so neither pays the first read).  For each command it
records wall time, CPU time (user + system: what a loaded machine disturbs
least), peak RSS (GNU time, that child only) and output size, and writes the ratios to ``bench/RESULTS.md``; "vs mdf's fastest"
compares with makedumpfile's best thread count on that case.  Start-up
(interpreter, imports, parser) is timed on its own first; ``--python-core``
adds rows run with the C writer core disabled.

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


def best_of(repeat: int, ours: tuple[list[str], list[Path]], theirs: tuple[list[str], list[Path]] | None
            ) -> tuple[Measure, Measure | None]:
    """Each command ``repeat`` times, alternating ours and theirs (a shared machine drifts): the fastest
    run of each, with the largest peak RSS seen."""
    a_runs: list[Measure] = []
    b_runs: list[Measure] = []
    for _ in range(repeat):
        a_runs.append(measure(*ours))
        if theirs is not None:
            b_runs.append(measure(*theirs))

    def best(runs: list[Measure]) -> Measure:
        m = min(runs, key=lambda r: r.wall)
        return Measure(m.wall, m.cpu, max(r.rss_mib for r in runs), m.out_bytes, max(r.rc for r in runs))

    return best(a_runs), (best(b_runs) if b_runs else None)


def startup_rows(repeat: int) -> list[str]:
    """Interpreter start, imports and argument parsing alone: ``kdumpkit CMD --help``, best of ``repeat``."""
    rows = ["### start-up (`kdumpkit CMD --help`: interpreter, imports, parser; no dump opened)", "",
            "| command | wall s | CPU s | RSS MiB |", "|---|---|---|---|"]
    tmp = Path(tempfile.mkdtemp(prefix="kdumpkit-startup-"))
    try:
        for name, cmd in [("python -c pass (floor)", [sys.executable, "-c", "pass"]),
                          *[(f"kdumpkit {c} --help", [*KDUMPKIT, c, "--help"]) for c in ("save", "dmesg", "info")],
                          ("kdumpkit --help (imports every sub-command)", [*KDUMPKIT, "--help"]),
                          ("makedumpfile --help", ["makedumpfile", "--help"])]:
            m, _ = best_of(repeat, (cmd, [tmp / "out"]), None)
            rows.append(f"| {name} | {m.wall:.3f} | {m.cpu:.2f} | {m.rss_mib:.0f} |")
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows + [""]


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


def native_label() -> str:
    """Which writer core the kdumpkit runs use (the C extension, or the Python fallback)."""
    try:
        from kdumpkit.dump import _native  # noqa: F401
    except ImportError:
        return "native core NOT built (Python writer loop)"
    return "native core built"


def bench_row(name: str, a: Measure, b: Measure | None, mdf_fastest: float | None) -> str:
    """One table row; ``mdf_fastest`` is makedumpfile's best time on this case at any thread count."""
    if b is None:
        flag = "" if a.rc == 0 else f" (rc {a.rc})"
        return f"| {name}{flag} | {a.wall:.2f} | — | — | — | — | — | — | {a.rss_mib:.0f} | — | {a.cpu:.2f} | — |"
    ratio = b.wall / a.wall if a.wall else float("nan")
    best = (mdf_fastest or b.wall) / a.wall if a.wall else float("nan")
    sratio = a.out_bytes / b.out_bytes if b.out_bytes else float("nan")
    flag = "" if a.rc == 0 and b.rc == 0 else f" (rc {a.rc}/{b.rc})"
    return (f"| {name}{flag} | {a.wall:.2f} | {b.wall:.2f} | {ratio:.2f}× | {best:.2f}× | {a.out_bytes / 1e6:.1f} | "
            f"{b.out_bytes / 1e6:.1f} | {sratio:.3f} | {a.rss_mib:.0f} | {b.rss_mib:.0f} | {a.cpu:.2f} | {b.cpu:.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vmcore", help="ELF vmcore (default: the lab's bookworm reference dump)")
    ap.add_argument("--synthetic-gib", type=float, default=0, help="also run on a synthetic ELF of this size")
    ap.add_argument("--sparse-gib", type=int, default=0,
                    help="also time dmesg/info on the real vmcore grown to this much RAM with a sparse hole")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--only", help="substring filter on case names")
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--repeat", type=int, default=3, help="runs per command, alternating the two tools; best is kept")
    ap.add_argument("--python-core", action="store_true",
                    help="also run every kdumpkit case with KDUMPKIT_NATIVE=0 (the pure-Python writer loop)")
    args = ap.parse_args()
    # Start-up is measured, not bytecode compilation: write the .pyc files once (PYTHONDONTWRITEBYTECODE
    # may be set in the environment, and then every run would compile the package again).
    import compileall

    compileall.compile_dir(str(ROOT / "src"), quiet=1)
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
             f"{platform.python_implementation()} {platform.python_version()}, {native_label()}, best of {args.repeat}",
             ""]
    try:
        if not args.only or "start" in args.only:
            lines += startup_rows(max(args.repeat, 5))
        for label, vmcore in inputs:
            sparse = "sparse hole" in label
            if not sparse:  # warming a sparse file would read its hole
                warm(vmcore)
            size_mb = vmcore.stat().st_size / 1e6
            lines += [f"### {label} ({size_mb:.0f} MB ELF)", "",
                      "| case | kdumpkit s | makedumpfile s | time ratio (mdf/ours) | vs mdf's fastest | kdumpkit MB | "
                      "mdf MB | size ratio | kdumpkit RSS MiB | mdf RSS MiB | kdumpkit CPU s | mdf CPU s |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            fastest: dict[str, float] = {}  # makedumpfile's best time per case without the worker count
            for name, ours_cmd, mdf_cmd, o1, o2 in cases(vmcore, tmpdir, workers, real=not label.startswith("synth"),
                                                           sparse=sparse):
                if args.only and args.only not in name:
                    continue
                a, b = best_of(args.repeat, (ours_cmd, o1), (mdf_cmd, o2) if mdf_cmd else None)
                key = name.rsplit(" ", 1)[0]  # the case without its worker count
                if b is not None:
                    fastest[key] = min(fastest.get(key, b.wall), b.wall)
                rows = [bench_row(name, a, b, fastest.get(key))]
                if args.python_core and b is not None and "kdump" in name:
                    slow, _ = best_of(args.repeat, (["env", "KDUMPKIT_NATIVE=0", *ours_cmd], o1), None)
                    rows.append(bench_row(name + " (python core)", slow, b, fastest.get(key)))
                for row in rows:
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
