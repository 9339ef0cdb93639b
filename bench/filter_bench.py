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


def _synthetic(gib: int, window: int, q: Any) -> None:
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
    arr = np.zeros((npfn, 8), dtype=np.uint64)
    arr.view(np.int32)[:, 12] = -1
    rng = np.random.default_rng(1)
    idx = rng.choice(npfn, npfn // 100, replace=False)
    arr[idx, 0] = np.uint64(1 << 4)          # cache pages
    arr[idx[::2], 3] = np.uint64(0x1001)     # half of them anon
    blocks = np.arange(0, npfn, 1024)[::3]
    arr.view(np.int32)[blocks, 12] = -129    # order-10 buddy blocks
    arr[blocks, 5] = np.uint64(10)
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
    q.put({"what": f"synthetic {gib} GiB (vmemmap, 2 MiB pages)", "pfns": npfn, "seconds_total": round(total, 3),
           "classify_pfns_per_s": round(f.stats["pfns_per_second"]), "translations": f.stats["translations"],
           "excluded": f.counts["excluded"], "struct_page_array_mib": arr.nbytes >> 20,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024})


def _child(target: Any, *args: Any) -> dict[str, Any]:
    q: Any = mp.Queue()
    p = mp.Process(target=target, args=(*args, q))
    p.start()
    res: dict[str, Any] = q.get()
    p.join()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("vmcore", nargs="?")
    ap.add_argument("--synthetic-gib", type=int, default=16)
    ap.add_argument("--level", type=int, default=31)
    ap.add_argument("--window-pfns", type=int, default=None, help="pfns per struct page window (default: the library's)")
    a = ap.parse_args()
    path = a.vmcore
    if path is None:
        try:
            from kdumpkit.lab.reference import reference_set
            path = str(reference_set("bookworm", build=False).vmcore)
        except Exception:  # noqa: BLE001 - the bench runs without a lab too
            path = None
    from kdumpkit.capture.filter import DEFAULT_WINDOW_PFNS
    window = a.window_pfns or DEFAULT_WINDOW_PFNS
    if path:
        print(json.dumps({**_child(_real, path, a.level, window), "window_pfns": window}))
    print(json.dumps({**_child(_synthetic, a.synthetic_gib, window), "window_pfns": window}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
