"""The vectorised classifier against a pfn-by-pfn walk written the way makedumpfile loops.

:func:`classify` decides candidates in bulk and paints blocks with NumPy;
the oracle here looks at one pfn at a time (first match wins, a classified
block is jumped over), on random ``struct page`` arrays that mix every
class, compound heads with good and unaligned orders, tails, buddy blocks
with valid and invalid orders and unreadable rows, window after window
with the carry passed on.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_pageflags import V61, era_612, vmci

from kdumpkit.kernel.pageflags import (
    CLASS_CACHE,
    CLASS_CACHE_PRIVATE,
    CLASS_FREE,
    CLASS_HWPOISON,
    CLASS_OFFLINE,
    CLASS_UNACCEPTED,
    CLASS_USER,
    PageFlagsSpec,
    _type_is,
    classify,
)


def _u(row: np.ndarray, off: int | None, n: int) -> int:
    return 0 if off is None else int.from_bytes(row[off:off + n].tobytes(), "little")


def _is(v: int, t: int | None) -> bool:
    return bool(_type_is(np.array([v], dtype=np.uint64), t)[0])


def oracle(spec: PageFlagsSpec, pages: np.ndarray, readable: np.ndarray, start: int, level: int,
           carry: tuple[int, int] | None) -> tuple[list[int], tuple[int, int] | None, int, int]:
    n = readable.size
    out = [0] * n
    bit = lambda v, nr: nr is not None and bool(v >> nr & 1)  # noqa: E731
    skip_to, skip_cls = (carry[0] - start, carry[1]) if carry and carry[0] > start else (0, 0)
    free_seen, bad_orders, free_end = 0, 0, -1
    for i in range(n):
        if i < skip_to:
            out[i] = skip_cls
        row, nxt = pages[i], pages[i + 1]
        flags, mc = _u(row, spec.off_flags, 8), _u(row, spec.off_mapcount, 4)
        if not readable[i] or _u(row, spec.off_compound_head, 8) & 1:
            continue
        private = _u(row, spec.off_private, 8)
        slab = _is(mc, spec.slab_mapcount) if spec.slab_mapcount is not None else bit(flags, spec.pg_slab)
        buddy = spec.off_private is not None and (bit(flags, spec.pg_buddy) if spec.pg_buddy is not None else
                                                  spec.buddy_mapcount is not None and not slab and
                                                  _is(mc, spec.buddy_mapcount))
        max_order = spec.max_order if spec.max_order is not None else 64
        if buddy and private >= max_order:
            bad_orders += 1
        elif buddy:  # free pages seen whatever the level; a block starting inside an earlier one is ignored
            end = i + (1 << min(private, 63))
            if i >= free_end:
                free_seen += min(end, n) - i
            free_end = max(free_end, end)
        if i < skip_to:
            continue
        order, hugetlb = 0, False
        if spec.head_mask and flags & spec.head_mask:
            raw = _u(nxt, spec.tail_order_off, spec.tail_order_size)
            if spec.hugetlb_mapcount is not None or spec.pg_hugetlb is not None:
                raw &= 0xFF
            order = 0 if raw >= 64 or (start + i) & ((1 << min(raw, 62)) - 1) else raw
            if spec.hugetlb_mapcount is not None:
                hugetlb = _is(mc, spec.hugetlb_mapcount)
            elif spec.pg_hugetlb is not None:
                hugetlb = bit(_u(nxt, spec.off_flags, 8), spec.pg_hugetlb)
            elif spec.tail_dtor_off is not None:
                hugetlb = _u(nxt, spec.tail_dtor_off, spec.tail_dtor_size) == spec.hugetlb_dtor
        cache = bit(flags, spec.pg_lru) or (bit(flags, spec.pg_swapcache) and
                                            (spec.pg_swapbacked is None or bit(flags, spec.pg_swapbacked)))
        pf = bit(flags, spec.pg_private)
        anon = bool(_u(row, spec.off_mapping, 8) & 1) and not slab
        nr, cls = 1 << order, 0
        if level & 16 and buddy:
            if private >= max_order:
                continue
            cls, nr = CLASS_FREE, 1 << private
        elif level & 2 and cache and not pf and not anon:
            cls = CLASS_CACHE
        elif level & 4 and cache and not anon:
            cls = CLASS_CACHE_PRIVATE if pf else CLASS_CACHE
        elif level & 8 and (anon or hugetlb):
            cls = CLASS_USER
        elif bit(flags, spec.pg_hwpoison):
            cls = CLASS_HWPOISON
        elif not slab and _is(mc, spec.offline_mapcount):
            cls = CLASS_OFFLINE
        elif level & 16 and spec.unaccepted_mapcount is not None and _is(mc, spec.unaccepted_mapcount):
            cls, nr = CLASS_UNACCEPTED, 1 << max(max_order - 1, 0)
        if cls:
            skip_to, skip_cls = i + nr, cls
            out[i] = cls
    new_carry = (start + skip_to, skip_cls) if skip_to > n else None
    return out, new_carry, free_seen, bad_orders


def random_pages(rng: np.random.Generator, n: int, types: list[int]) -> np.ndarray:
    arr = np.zeros((n + 1, 8), dtype=np.uint64)
    flagbits = np.array([1 << b for b in (4, 9, 10, 13, 16, 19, 23)], dtype=np.uint64)
    pick = rng.random((n + 1, flagbits.size)) < [0.4, 0.1, 0.15, 0.2, 0.12, 0.3, 0.02]
    arr[:, 0] = (pick * flagbits).sum(axis=1).astype(np.uint64)
    arr[:, 3] = rng.integers(0, 4, n + 1).astype(np.uint64) | np.uint64(0xFFFF888000000000)
    arr[:, 1] = (rng.random(n + 1) < 0.1).astype(np.uint64)            # tails
    arr[:, 5] = rng.choice([0, 1, 2, 3, 5, 9, 10, 11, 40], n + 1).astype(np.uint64)
    mc = arr.view(np.int32)[:, 12]
    mc[:] = rng.choice(np.array([-1, 0, 3, *types], dtype=np.int64), n + 1, p=None)
    arr.view(np.uint8).reshape(n + 1, 64)[:, 16] = rng.choice([0, 2, 3], n + 1)          # compound dtor
    arr.view(np.uint8).reshape(n + 1, 64)[:, 17] = rng.choice([0, 1, 2, 3, 9, 70], n + 1)  # compound order
    arr.view(np.uint8).reshape(n + 1, 64)[:, 0] |= rng.choice([0, 1, 2, 9], n + 1).astype(np.uint8)
    return arr.view(np.uint8).reshape(n + 1, 64)


@pytest.mark.parametrize("era", ["6.1", "6.12"])
@pytest.mark.parametrize("seed", range(6))
def test_classify_equals_a_pfn_walk(era: str, seed: int) -> None:
    info = vmci(V61) if era == "6.1" else era_612()
    spec = PageFlagsSpec.from_vmcoreinfo(info)
    types = [-129, -257] if era == "6.1" else [v | low for v in (-268435456, -251658240, -201326592, -184549376,
                                                                   -150994944) for low in (0, 5)]
    rng = np.random.default_rng(seed)
    for level in (31, 1, 2, 4, 8, 16, 6, 24, int(rng.integers(0, 32))):
        n, win = 1024, 64
        pages = random_pages(rng, n, types)
        readable = rng.random(n) < 0.95
        c_new = c_ref = None
        for w in range(0, n, win):
            we = min(w + win, n)
            res = classify(spec, pages[w:we + 1], readable[w:we], w, level, carry=c_new)
            ref, c_ref, free_seen, bad = oracle(spec, pages[w:we + 1], readable[w:we], w, level, c_ref)
            assert res.cls.tolist() == ref, (level, w)
            assert res.carry == c_ref and res.free_seen == free_seen and res.bad_orders == bad, (level, w)
            c_new = res.carry
