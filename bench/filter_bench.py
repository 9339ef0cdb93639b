"""Page-filter classification rate (pfns/s) and peak RSS.

Usage::

    .venv/bin/python bench/filter_bench.py [VMCORE] [--synthetic-gib N]

* on a real dump (default: the cached bookworm reference vmcore if present):
  ``filtered(dump, 31)`` timed end to end, and the rate of the
  classification pass alone;
* on a large sparse synthetic kernel: ``N`` GiB of "RAM" described by a
  vmemmap backed by 2 MiB pages, with ~1% of pfns holding non-trivial struct
  pages; the page contents are never read, only struct pages, so this
  measures the classifier, the 2 MiB translation fast path and the bitmap.

Each measurement runs in a child process so its peak RSS is its own.
Numbers only; no assertions.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import resource
import sys
import time
from typing import Any


def _real(path: str, level: int, window: int, q: Any) -> None:
    from kdumpkit.capture.filter import filtered
    from kdumpkit.dump import open_dump

    with open_dump(path) as d:
        t = time.perf_counter()
        f = filtered(d, level, window_pfns=window)
        total = time.perf_counter() - t
        t = time.perf_counter()
        runs = f.dumped_runs()
        runs_s = time.perf_counter() - t
    q.put({"what": f"real {path} -d {level}", "pfns": f.max_pfn, "seconds_total": round(total, 3),
           "classify_pfns_per_s": round(f.stats["pfns_per_second"]), "dumped_runs_s": round(runs_s, 3),
           "runs": len(runs), "translations": f.stats["translations"],
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024})


LRU, PRIVATE, SWAPCACHE, SLAB, HEAD, SWAPBACKED = 1 << 4, 1 << 13, 1 << 10, 1 << 9, 1 << 16, 1 << 19


def _struct_pages(npfn: int, mix: str) -> Any:
    """6.1-layout ``struct page`` rows (8 u64 each) for ``npfn`` pfns.

    ``idle``: 1% order-0 cache/anon pages, a third of RAM in order-10 buddy
    blocks, the rest kernel-owned (the easy case: few candidates).
    ``busy``: every 512-pfn block is one of free (buddy blocks of orders
    0–9), anonymous THP (order-9 compound), page cache (order-0, a third
    with PG_private), anonymous order-0 pages, page-cache folios (order 2),
    slab or kernel pages — most pfns are candidates and every code path runs.
    """
    import numpy as np

    arr = np.zeros((npfn, 8), dtype=np.uint64)
    mc = arr.view(np.int32)[:, 12]
    mc[:] = -1
    rng = np.random.default_rng(1)
    if mix == "idle":
        idx = rng.choice(npfn, npfn // 100, replace=False)
        arr[idx, 0] = np.uint64(LRU)             # cache pages
        arr[idx[::2], 3] = np.uint64(0x1001)     # half of them anon
        blocks = np.arange(0, npfn, 1024)[::3]
        mc[blocks] = -129                        # order-10 buddy blocks
        arr[blocks, 5] = np.uint64(10)
        return arr
    nblk = npfn // 512
    kind = rng.choice(7, nblk, p=[0.25, 0.15, 0.25, 0.15, 0.08, 0.05, 0.07])
    base = np.arange(nblk, dtype=np.int64) * 512
    pfn_kind = np.repeat(kind, 512)
    pos = np.arange(npfn, dtype=np.int64) & 511
    # 0 free: buddy blocks whose order varies per 512-block (aligned, so 512 >> order heads each)
    order = rng.integers(0, 10, nblk)
    o = np.repeat(order, 512)
    heads = (pfn_kind == 0) & ((pos & ((1 << o) - 1)) == 0)
    mc[heads] = -129
    arr[heads, 5] = o[heads].astype(np.uint64)
    # 1 anonymous THP: head + 511 tails (order in the first tail's byte 17)
    thp = base[kind == 1]
    arr[thp, 0] = np.uint64(HEAD | LRU | SWAPBACKED)
    arr[thp, 3] = np.uint64(0xFFFF888000001001)
    arr.view(np.uint8).reshape(npfn, 64)[thp + 1, 17] = 9
    tails = (pfn_kind == 1) & (pos != 0)
    arr[tails, 1] = np.uint64(0xFFFFEA0000000001)
    # 2 page cache, a third with private data (buffer heads)
    pc = pfn_kind == 2
    arr[pc, 0] = np.uint64(LRU)
    arr[pc, 3] = np.uint64(0xFFFF888012345600)
    arr[pc & (rng.random(npfn) < 0.33), 0] |= np.uint64(PRIVATE)
    # 3 anonymous order-0 (some in the swap cache)
    an = pfn_kind == 3
    arr[an, 0] = np.uint64(LRU | SWAPBACKED)
    arr[an, 3] = np.uint64(0xFFFF888012345601)
    arr[an & (rng.random(npfn) < 0.1), 0] |= np.uint64(SWAPCACHE)
    # 4 page-cache folios of order 2
    fo = (pfn_kind == 4) & ((pos & 3) == 0)
    arr[fo, 0] = np.uint64(HEAD | LRU)
    arr[fo, 3] = np.uint64(0xFFFF888012345600)
    arr.view(np.uint8).reshape(npfn, 64)[np.flatnonzero(fo) + 1, 17] = 2
    ft = (pfn_kind == 4) & ((pos & 3) != 0)
    arr[ft, 1] = np.uint64(0xFFFFEA0000000001)
    # 5 slab (mapping field is the slab cache pointer), 6 kernel pages: flags only
    arr[pfn_kind == 5, 0] = np.uint64(SLAB)
    arr[pfn_kind == 5, 3] = np.uint64(0xFFFF888000abc001)
    return arr


def _synthetic(gib: int, window: int, mix: str, q: Any) -> None:
    import numpy as np

    from kdumpkit.capture.filter import filtered
    from kdumpkit.dump.base import Buffer, Note, PageState
    from kdumpkit.kernel.testing import PAGE, SparseDump, SyntheticKernel

    npfn = gib << 18
    vmemmap_va = 0xFFFF_EA00_0000_0000
    k = SyntheticKernel(ram=1 << 30)
    keys = {"SIZE(page)": 64, "OFFSET(page.flags)": 0, "OFFSET(page.mapping)": 24, "OFFSET(page._mapcount)": 48,
            "OFFSET(page.private)": 40, "OFFSET(page.compound_head)": 8, "OFFSET(page.compound_dtor)": 16,
            "OFFSET(page.compound_order)": 17, "LENGTH(zone.free_area)": 11, "NUMBER(PG_lru)": 4,
            "NUMBER(PG_private)": 13, "NUMBER(PG_swapcache)": 10, "NUMBER(PG_swapbacked)": 19, "NUMBER(PG_slab)": 9,
            "NUMBER(PG_hwpoison)": 23, "NUMBER(PG_head_mask)": 65536, "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": -129,
            "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)": -257, "SIZE(mem_section)": 16,
            "NUMBER(SECTION_SIZE_BITS)": 27, "NUMBER(MAX_PHYSMEM_BITS)": 46, "LENGTH(mem_section)": 2048}
    k.keys.update({a: str(b) for a, b in keys.items()})
    # struct pages live in one big host array exposed as physical memory at BACK (above "RAM")
    back = 1 << 40
    arr = _struct_pages(npfn, mix)
    raw = arr.view(np.uint8).reshape(-1)
    k.pt.map_range(vmemmap_va, back, npfn * 64, 1 << 21)
    secs = k.kmalloc(PAGE, align=PAGE)
    k.write_ulong(k.symbols["mem_section"], secs)
    for nr in range((npfn + 32767) // 32768):
        k.write_ulong(secs + nr * 16, vmemmap_va | 0x3)
    small = k.dump()
    notes: list[Note] = small.notes()
    mem = k.mem
    ps = PAGE
    back_pfn = back // ps
    back_end = back_pfn + len(raw) // ps

    class Big(SparseDump):
        def __init__(self) -> None:
            super().__init__(mem, notes=notes)
            self.max_pfn = npfn
            self._ram = [(0, npfn)]
            self._small = sorted(mem.pages)

        def ram_runs(self) -> list[tuple[int, int]]:
            return [(0, npfn)]

        def dumped_runs(self) -> list[tuple[int, int]]:
            from kdumpkit.dump.base import merge_runs
            return merge_runs([(0, npfn), (back_pfn, back_end)] + [(p, p + 1) for p in self._small])

        def page_state(self, pfn: int) -> PageState:
            return PageState.DUMPED

        def _read_dumped(self, pfn: int, count: int) -> Buffer:
            if back_pfn <= pfn < back_end:
                o = (pfn - back_pfn) * ps
                return raw.data[o:o + count * ps]
            if pfn in mem.pages:
                return mem.read(pfn * ps, count * ps)
            return bytes(count * ps)

    d = Big()
    t = time.perf_counter()
    f = filtered(d, 31, selfcheck=False, window_pfns=window)
    total = time.perf_counter() - t
    q.put({"what": f"synthetic {gib} GiB, {mix} (vmemmap, 2 MiB pages)", "pfns": npfn, "seconds_total": round(total, 3),
           "classify_pfns_per_s": round(f.stats["pfns_per_second"]), "translations": f.stats["translations"],
           "excluded": f.counts["excluded"], "struct_page_array_mib": arr.nbytes >> 20,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024})


def _child(target: Any, *args: Any) -> dict[str, Any]:
    q: Any = mp.Queue()
    p = mp.Process(target=target, args=(*args, q))
    p.start()
    while True:  # a child that dies (bad path, MemoryError) must not hang the bench
        try:
            res: dict[str, Any] = q.get(timeout=1)
            break
        except queue.Empty:
            if not p.is_alive():
                return {"what": getattr(target, "__name__", "?"), "error": f"child exited {p.exitcode}"}
    p.join()
    return res


def _classify_only(path: str, level: int, window: int | None) -> None:
    """One classification of ``path`` at ``level``; prints its stats as JSON (run as a child under GNU time)."""
    from kdumpkit.capture.filter import DEFAULT_WINDOW_PFNS, filtered
    from kdumpkit.dump import open_dump

    with open_dump(path) as d:
        f = filtered(d, level, selfcheck=False, window_pfns=window or DEFAULT_WINDOW_PFNS)
        print(json.dumps({"pfns": f.max_pfn, "seconds": f.stats["seconds"], "counts": f.counts}))


def _timed(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB, GNU time: the child's own) and output of ``cmd``."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", tf.name, *cmd], capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr[-500:]}")
        rss = int(tf.read().split()[-1]) / 1024
    return wall, rss, p.stdout + p.stderr


_MDF_COUNTS = {"Non-private cache pages": "cache", "Private cache pages": "cache_private",
               "User process data pages": "user", "Free pages": "free"}


def vs_makedumpfile(src: str, sizes: list[int], level: int, repeat: int, workdir: str) -> list[str]:
    """Markdown rows: kdumpkit's classification and ``estimate`` next to makedumpfile's exclusion, per size."""
    import os
    import re

    py = sys.executable
    rows = []
    for gib in sizes:
        path = src if gib == 1 else os.path.join(workdir, f"grown-{gib}g.elf")
        if gib != 1:
            grown_elf(src, gib, path)
        try:
            ours, est, mdf = [], [], []
            for _ in range(repeat):  # interleaved: both tools see the same machine load
                wall, rss, out = _timed([py, __file__, "--classify-only", path, "--level", str(level)])
                ours.append((json.loads(out.splitlines()[-1]), rss))
                wall, rss, _ = _timed([py, "-m", "kdumpkit.cli.main", "estimate", "--no-selfcheck", path])
                est.append((wall, rss))
                x = os.path.join(workdir, "mdf.out")
                wall, rss, out = _timed(["makedumpfile", "--dry-run", "-d", str(level), "--message-level", "31",
                                         path, x])
                steps = [float(v) for v in re.findall(r"STEP \[Excluding unnecessary pages\] : ([0-9.]+)", out)]
                counts = {_MDF_COUNTS[m.group(1)]: int(m.group(2), 16) for m in
                          re.finditer(r"^\s*([A-Za-z -]+?)\s*: 0x([0-9a-f]+)", out, re.M) if m.group(1) in _MDF_COUNTS}
                mdf.append((steps, wall, rss, counts))
        finally:
            if gib != 1 and os.path.exists(path):
                os.unlink(path)
        best = min(ours, key=lambda o: o[0]["seconds"])[0]
        secs, pfns = best["seconds"], best["pfns"]
        mdf_pass = min(m[0][0] for m in mdf)
        mdf_total = min(sum(m[0]) for m in mdf)
        same = all(best["counts"][k] == v for k, v in mdf[0][3].items())
        rows.append(f"| {'real 6.1 lab dump' if gib == 1 else 'real 6.1 dump grown (tiled struct pages)'} | {gib} | "
                    f"{pfns:,} | {secs:.3f} | {pfns / secs / 1e6:.1f} | {min(e[0] for e in est):.2f} | "
                    f"{mdf_pass:.3f} ({mdf_total:.3f}) | {mdf_pass / secs:.2f}× | {pfns / mdf_pass / 1e6:.0f} | "
                    f"{max(o[1] for o in ours):.0f} / {max(e[1] for e in est):.0f} | {max(m[2] for m in mdf):.0f} | "
                    f"{'yes' if same else 'NO'} |")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("vmcore", nargs="?")
    ap.add_argument("--synthetic-gib", type=int, default=16)
    ap.add_argument("--no-real", action="store_true", help="only the synthetic kernel")
    ap.add_argument("--level", type=int, default=31)
    ap.add_argument("--mix", choices=("idle", "busy"), default="busy", help="synthetic struct page contents")
    ap.add_argument("--window-pfns", type=int, default=None, help="pfns per struct page window (default: the library's)")
    ap.add_argument("--classify-only", metavar="DUMP", help=argparse.SUPPRESS)
    ap.add_argument("--vs-makedumpfile", action="store_true",
                    help="side by side with makedumpfile on VMCORE (default: the lab's) grown to --sizes GiB")
    ap.add_argument("--sizes", default="1,4,16", help="GiB of RAM for --vs-makedumpfile (1: the real dump itself)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool and size (the best is reported)")
    a = ap.parse_args()
    if a.classify_only:
        _classify_only(a.classify_only, a.level, a.window_pfns)
        return 0
    path = a.vmcore
    if path is None and not a.no_real:
        try:
            from kdumpkit.lab.reference import reference_set
            path = str(reference_set("bookworm", build=False).vmcore)
        except Exception:  # noqa: BLE001 - the bench runs without a lab too
            path = None
    from kdumpkit.capture.filter import DEFAULT_WINDOW_PFNS
    window = a.window_pfns or DEFAULT_WINDOW_PFNS
    if a.vs_makedumpfile:
        import os
        import tempfile

        if not path:
            raise SystemExit("no vmcore (give one, or build the lab's reference set)")
        base = os.environ.get("KDUMPKIT_CACHE")
        work = tempfile.mkdtemp(prefix="filter-bench-", dir=os.path.join(base, "bench") if base else None)
        try:
            print("| input | RAM GiB | pfns | kdumpkit classify s | M pfns/s | estimate s | makedumpfile exclusion s "
                  "(all passes) | ratio (mdf/ours) | mdf M pfns/s | kdumpkit RSS MiB (classify / estimate) | "
                  "mdf RSS MiB | same counts |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
            vs_makedumpfile(path, [int(x) for x in a.sizes.split(",")], a.level, a.repeat, work)
        finally:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
        return 0
    if path:
        print(json.dumps({**_child(_real, path, a.level, window), "window_pfns": window}))
    print(json.dumps({**_child(_synthetic, a.synthetic_gib, window, a.mix), "window_pfns": window}))
    return 0



# -- side by side with makedumpfile on ELF files -------------------------------------------------

def grown_elf(src: str, gib: int, path: str) -> None:
    """``src`` (a real x86_64 ELF vmcore of a small guest) grown to ``gib`` GiB of RAM *with struct pages*.

    A new PT_LOAD covers ``[1 GiB, gib GiB)`` (a file hole: its pages read
    as zeros); the sections of those pfns are marked present in the first
    ``mem_section`` root (copies of the last real section's entry, so they
    decode to the same vmemmap), and the vmemmap PMD table gets one 2 MiB
    entry per new section, pointing at struct pages stored at the top of the
    new RAM.  Those struct pages are the real guest's, tiled every 2^18 pfns
    (1 GiB; buddy and compound alignment survive the shift), so
    makedumpfile and kdumpkit both walk real-looking ``struct page`` arrays.
    Needs SPARSEMEM_VMEMMAP with 2 MiB vmemmap pages, RAM below 1 GiB and a
    1 GiB-aligned vmemmap (the lab's Debian guests).
    """
    import os
    import shutil
    import struct

    import numpy as np
    from run import read_program_headers  # bench/ is the script's directory

    from kdumpkit.dump import open_dump
    from kdumpkit.kernel.memory import kernel_memory
    from kdumpkit.kernel.mm import struct_page_map
    from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

    one = 1 << 18  # pfns per GiB
    with open_dump(src) as d:
        info = VmcoreInfo.from_dump(d)
        km = kernel_memory(d, info)
        spm = struct_page_map(km, d, info)
        if spm.model != "sparsemem_vmemmap" or d.max_pfn > one or spm.vmemmap is None or spm.vmemmap % (1 << 30):
            raise SystemExit(f"{src}: cannot grow this dump ({spm.describe()})")
        tile, valid = spm.read(0, one)  # the real struct pages, one GiB's worth
        tile = tile.copy()
        tile[~valid] = 0
        sec_size = info.require_size("mem_section")
        # SYMBOL(mem_section) is the root array (VMCOREINFO_SYMBOL_ARRAY); its first entry the first root page
        root0_va = km.read_ulong(info.require_symbol("mem_section"))
        per_root = km.page_size // sec_size
        pfn_shift = (info.number("SECTION_SIZE_BITS") or 27) - 12
        nsec_old = (d.max_pfn + (1 << pfn_shift) - 1) >> pfn_shift
        nsec_new = (gib * one) >> pfn_shift
        if nsec_new > per_root:
            raise SystemExit(f"--sizes {gib}: more sections than one mem_section root holds ({per_root})")
        last_entry = km.read_virt(root0_va + (nsec_old - 1) * sec_size, sec_size)
        root0_pa = km.to_phys(root0_va)
        steps = km.vtop(spm.vmemmap).steps
        pmd_step = steps[-1]
        if pmd_step.level != "PMD":
            raise SystemExit("vmemmap is not mapped with 2 MiB pages")
        pmd_table_pa = pmd_step.entry_addr - ((spm.vmemmap >> 21) & 511) * 8
        pmd_flags = pmd_step.entry & ~0x000F_FFFF_FFE0_0000 & 0xFFFF_FFFF_FFFF_FFFF

    shutil.copyfile(src, path)
    start = 1 << 30
    size = (gib << 30) - start
    sp_bytes = (nsec_new - 8) << 21  # struct pages of the new sections, one 2 MiB page per section
    sp_pa = start + size - sp_bytes
    with open(path, "r+b") as f:
        ehdr, phoff, phentsize, phnum, phdrs, loads = read_program_headers(f)

        def file_off(pa: int) -> int:
            for _t, _fl, off, _va, paddr, filesz, _m, _a in loads:
                if paddr <= pa < paddr + filesz and paddr < (1 << 46) and _va < 0xFFFF_FFFF_8000_0000:
                    return off + pa - paddr
            raise SystemExit(f"physical {pa:#x} is not in the dump")

        # sections 8 .. nsec_new-1: present, same encoded map as the real ones
        f.seek(file_off(root0_pa + nsec_old * sec_size))
        f.write(last_entry * (nsec_new - nsec_old))
        # vmemmap PMD entries for sections nsec_old.. (one 2 MiB page each), beyond the real ones
        pmd = [((sp_pa + ((i - 8) << 21)) | pmd_flags) for i in range(8, nsec_new)]
        f.seek(file_off(pmd_table_pa + 8 * 8))
        f.write(struct.pack(f"<{len(pmd)}Q", *pmd))
        ram_va = [ld for ld in loads if ld[4] < (1 << 46) and ld[3] < 0xFFFF_FFFF_8000_0000]
        vaddr = ram_va[-1][3] - ram_va[-1][4] + start
        data_off = os.fstat(f.fileno()).st_size + 4095 & ~4095
        # the new struct pages: the real ones tiled, pfn p gets the struct page of p mod 2^18
        f.seek(data_off + (sp_pa - start))
        raw = tile.reshape(-1)
        for _ in range(one, gib * one, one):
            f.write(raw.data)
        # makedumpfile reads program headers right after the ELF header whatever e_phoff says:
        # the new one goes after the last, in the slack before the first segment
        new = struct.pack("<IIQQQQQQ", 1, 7, data_off, vaddr, start, size, size, 0)
        first = min(struct.unpack_from("<Q", p, 8)[0] for p in phdrs)
        if phoff != 64 or phoff + (phnum + 1) * phentsize > first:
            raise SystemExit(f"{src}: no room for another program header")
        f.truncate(data_off + size)
        f.seek(phoff + phnum * phentsize)
        f.write(new)
        struct.pack_into("<H", ehdr, 0x38, phnum + 1)
        f.seek(0)
        f.write(ehdr)
    del np


if __name__ == "__main__":
    sys.exit(main())
