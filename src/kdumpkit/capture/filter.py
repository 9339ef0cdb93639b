"""Dump levels as a layer: a :class:`FilteredDump` is its source minus what the level excludes.

Like a volatility3 layer, :func:`filtered` wraps any :class:`Dump` (an ELF
``/proc/vmcore``, or a kdump file for refiltering) and answers the same
API; writers take it as their source and never know.  Classification
follows makedumpfile (see :mod:`kdumpkit.kernel.pageflags`), bit by bit:

====  =========================================================
1     zero pages — *not* removed here: the writers do it (kdump points all
      zero pages at one shared copy, ELF drops them), via ``exclude_zero``
2     page cache without private data
4     all page cache
8     user data: anonymous (incl. swap-cache backed) and hugetlbfs pages
16    free pages (buddy blocks) and unaccepted memory
====  =========================================================

HWPoison and logically offline pages are excluded at every level, as
makedumpfile does.  A pfn whose ``struct page`` cannot be read is kept.

Memory stays bounded whatever the RAM size (makedumpfile's cyclic mode):
``struct page`` is read ``window_pfns`` at a time into one reused buffer
(4 MiB per 2^16 pfns with a 64-byte struct page), and the result is one **bit per pfn** of
``max_pfn`` — 32 MiB for 1 TiB of 4 KiB pages — from which the dumped runs
are derived once.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from kdumpkit.capture.selfcheck import SelfCheck, run_selfcheck
from kdumpkit.dump.base import Buffer, Dump, DumpInfo, Note, PageState
from kdumpkit.errors import UsageError
from kdumpkit.kernel.memory import KernelMemory, kernel_memory
from kdumpkit.kernel.mm import StructPageMap, struct_page_map
from kdumpkit.kernel.pageflags import CLASS_NAMES, PageFlagsSpec, classify, level_classes
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

__all__ = ["FilteredDump", "filtered", "runs_to_mask", "mask_to_runs"]

log = logging.getLogger("kdumpkit")

#: pfns per ``struct page`` window: 4 MiB of 64-byte struct pages, read into
#: one buffer reused by every window.  classify() makes few temporaries of
#: window size (bool/int8, plus the candidates' fields), so peak RSS stays
#: ~46 MiB from 1 to 16 GiB (bench/RESULTS.md), while per-window Python and
#: NumPy call overhead, which dominated at 2^14, is amortised.
DEFAULT_WINDOW_PFNS = 1 << 16

COUNT_KEYS = ("cache", "cache_private", "user", "free", "hwpoison", "offline", "unaccepted")


def mask_to_runs(mask: np.ndarray, base: int = 0) -> list[tuple[int, int]]:
    """``[start, end)`` runs of True in a boolean array (offset by ``base``)."""
    if mask.size == 0:
        return []
    m = mask.astype(np.int8)
    d = np.diff(np.concatenate(([0], m, [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return [(int(s) + base, int(e) + base) for s, e in zip(starts, ends, strict=True)]


def runs_to_mask(runs: list[tuple[int, int]], start: int, end: int) -> np.ndarray:
    """Boolean mask of pfns ``[start, end)`` covered by ``runs``."""
    out = np.zeros(end - start, dtype=bool)
    for s, e in runs:
        if e <= start or s >= end:
            continue
        out[max(s, start) - start:min(e, end) - start] = True
    return out


class FilteredDump(Dump):
    """``source`` with the pages ``dump_level`` excludes marked EXCLUDED.

    ``counts`` holds pages per class among the source's DUMPED pages
    (``"zero"`` only after :meth:`count_zero_pages`), plus ``"kept"``,
    ``"excluded"`` and ``"unreadable"`` (RAM pages without a readable
    ``struct page``, kept).  ``free_seen`` counts free pages in all RAM
    whatever the level (what the self-check compares).
    """

    format_name = "filtered"

    def __init__(self, source: Dump, dump_level: int, excluded_bits: np.ndarray, counts: dict[str, int], *,
                 free_seen: int, selfcheck_result: SelfCheck | None = None, stats: dict[str, Any] | None = None) -> None:
        self.source = source
        self.dump_level = dump_level
        self.exclude_zero = bool(dump_level & 1)
        self.path = source.path
        self.page_size = source.page_size
        self.arch = source.arch
        self.byteorder = source.byteorder
        self.max_pfn = source.max_pfn
        self.incomplete = source.incomplete
        self._bits = excluded_bits  # packed, bitorder little, one bit per pfn < max_pfn
        self.counts = counts
        self.free_seen = free_seen
        self.selfcheck_result = selfcheck_result
        self.stats = stats or {}
        self._dumped: list[tuple[int, int]] | None = None

    # -- exclusion bitmap ---------------------------------------------------
    def is_excluded(self, pfn: int) -> bool:
        """Whether the level (not the source) excludes ``pfn``."""
        if pfn < 0 or pfn >= self.max_pfn:
            return False
        return bool(self._bits[pfn >> 3] >> (pfn & 7) & 1)

    def excluded_mask(self, start: int, end: int) -> np.ndarray:
        s8, e8 = start >> 3, (end + 7) >> 3
        bits = np.unpackbits(self._bits[s8:e8], bitorder="little")
        out = np.zeros(end - start, dtype=bool)
        got = bits[start - s8 * 8:start - s8 * 8 + (end - start)].astype(bool)
        out[:got.size] = got
        return out

    # -- Dump primitives ----------------------------------------------------
    def ram_runs(self) -> list[tuple[int, int]]:
        return self.source.ram_runs()

    def reopen_spec(self) -> tuple[str, str] | None:
        # Kept pages are the source's bytes unchanged: workers may read the source.
        return self.source.reopen_spec()

    def dumped_runs(self) -> list[tuple[int, int]]:
        if self._dumped is None:
            out: list[tuple[int, int]] = []
            for s, e in self.source.dumped_runs():
                for cs in range(s, e, 1 << 22):
                    ce = min(e, cs + (1 << 22))
                    keep = ~self.excluded_mask(cs, ce)
                    for rs, re_ in mask_to_runs(keep, cs):
                        if out and out[-1][1] == rs:
                            out[-1] = (out[-1][0], re_)
                        else:
                            out.append((rs, re_))
            self._dumped = out
        return list(self._dumped)

    def page_state(self, pfn: int) -> PageState:
        st = self.source.page_state(pfn)
        if st is PageState.DUMPED and self.is_excluded(pfn):
            return PageState.EXCLUDED
        return st

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        return self.source._read_dumped(pfn, count)

    def notes(self) -> list[Note]:
        return self.source.notes()

    def vmcoreinfo_raw(self) -> bytes | None:
        return self.source.vmcoreinfo_raw()

    def info(self) -> DumpInfo:
        base = self.source.info()
        details = dict(base.details)
        details["dump_level"] = self.dump_level
        details["filter_counts"] = dict(self.counts)
        return DumpInfo(base.format, details)

    def close(self) -> None:
        self.source.close()

    def direct_map_base(self) -> int | None:
        fn = getattr(self.source, "direct_map_base", None)
        if callable(fn):
            v = fn()
            return v if isinstance(v, int) else None
        return None

    def __getattr__(self, name: str) -> Any:
        # format-specific extras of the source (utsname(), zero_page_offset() …)
        if name.startswith("_") or name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    # -- extras ---------------------------------------------------------------
    def count_zero_pages(self, batch: int = 1024) -> int:
        """Read every kept page and count the all-zero ones (what level bit 1 would drop)."""
        ps = self.page_size
        zeros = 0
        for _pfn, data in self.iter_dumped_pages(batch):
            arr = np.frombuffer(data, dtype=np.uint64).reshape(-1, ps // 8)
            zeros += int((~arr.any(axis=1)).sum())
        self.counts["zero"] = zeros
        return zeros

    def iter_excluded_runs(self) -> Iterator[tuple[int, int]]:
        """Runs the level excludes among the source's DUMPED pages."""
        for s, e in self.source.dumped_runs():
            yield from mask_to_runs(self.excluded_mask(s, e), s)


def _ram_pfn_runs(source: Dump) -> list[tuple[int, int]]:
    return source.ram_runs()


class _Cover:
    """Which pfns of a window sorted, disjoint runs cover: ``True`` (all), ``False`` (none) or a mask."""

    def __init__(self, runs: list[tuple[int, int]]) -> None:
        merged: list[tuple[int, int]] = []
        for s, e in sorted(r for r in runs if r[1] > r[0]):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        self.runs = merged
        self.starts = [s for s, _ in merged]

    def window(self, start: int, end: int) -> bool | np.ndarray:
        i = bisect.bisect_right(self.starts, start) - 1
        if i >= 0 and self.runs[i][1] >= end:
            return True
        j = bisect.bisect_left(self.starts, end)
        lo = max(i, 0)
        if all(e <= start for _, e in self.runs[lo:j]):
            return False
        out = np.zeros(end - start, dtype=bool)
        for s, e in self.runs[lo:j]:
            if e > start:
                out[max(s, start) - start:min(e, end) - start] = True
        return out


def _classify_all(source: Dump, kmem: KernelMemory, spm: StructPageMap, spec: PageFlagsSpec, dump_level: int,
                  window_pfns: int) -> tuple[np.ndarray, dict[str, int], int, dict[str, Any]]:
    max_pfn = source.max_pfn
    bits = np.zeros((max_pfn + 7) // 8 + 1, dtype=np.uint8)
    per_class = np.zeros(8, dtype=np.int64)
    unreadable = 0
    ram = _Cover(_ram_pfn_runs(source))
    dumped_runs = source.dumped_runs()
    dumped = _Cover(dumped_runs)
    carry: tuple[int, int] | None = None
    free_seen = 0
    bad_orders = 0
    classified = 0
    t0 = time.perf_counter()
    if window_pfns < 8 or window_pfns & 7:
        raise UsageError(f"window_pfns must be a positive multiple of 8, not {window_pfns}")
    # one struct page buffer for every window (the extra row is the next pfn's, for compound orders)
    buf = np.empty((min(window_pfns, max_pfn) + 1) * spm.size, dtype=np.uint8)
    for w in range(0, max_pfn, window_pfns):
        we = min(w + window_pfns, max_pfn)
        n = we - w
        in_ram = ram.window(w, we)
        if in_ram is False and carry is None:
            continue
        pages, valid = spm.read(w, we + 1, out=buf)
        readable = valid[:n] if in_ram is True else valid[:n] & in_ram
        res = classify(spec, pages, readable, w, dump_level, carry=carry)
        carry = res.carry
        free_seen += res.free_seen
        bad_orders += res.bad_orders
        classified += int(np.count_nonzero(readable))
        is_dumped = dumped.window(w, we)
        if is_dumped is False:
            continue
        if in_ram is not False and not bool(valid[:n].all()):
            lost = ~valid[:n] if in_ram is True else in_ram & ~valid[:n]
            unreadable += int(np.count_nonzero(lost if is_dumped is True else lost & is_dumped))
        cls = res.cls if is_dumped is True else np.where(is_dumped, res.cls, np.int8(0))
        hist = np.bincount(cls.view(np.uint8), minlength=8)
        if hist[0] == n:
            continue
        per_class += hist[:8]
        packed = np.packbits(cls.view(np.uint8), bitorder="little")
        bits[w >> 3:(w >> 3) + packed.size] |= packed
    elapsed = time.perf_counter() - t0
    counts = {name: int(per_class[code]) for code, name in CLASS_NAMES.items()}
    counts = {k: counts[k] for k in COUNT_KEYS}
    counts["unreadable"] = unreadable
    total_dumped = sum(e - s for s, e in dumped_runs)
    excluded = sum(counts[k] for k in COUNT_KEYS)
    counts["excluded"] = excluded
    counts["kept"] = total_dumped - excluded
    stats = {"seconds": elapsed, "pfns": max_pfn, "classified": classified,
             "pfns_per_second": max_pfn / elapsed if elapsed > 0 else 0.0,
             "translations": spm.translations, "bad_buddy_orders": bad_orders, **spm.describe()}
    if bad_orders:
        log.warning("kdumpkit filter: %d buddy pages with an order >= LENGTH(zone.free_area) were kept", bad_orders)
    return bits, counts, free_seen, stats


def filtered(source: Dump, dump_level: int, *, vmcoreinfo: VmcoreInfo | None = None, selfcheck: bool = True,
             window_pfns: int = DEFAULT_WINDOW_PFNS, fallback_level: int | None = None) -> FilteredDump:
    """``source`` seen through ``dump_level`` (0–31).

    With ``selfcheck`` the free pages found are compared with the kernel's
    own NR_FREE_PAGES counters (:mod:`kdumpkit.capture.selfcheck`); on a
    disagreement a loud warning is logged on the ``kdumpkit`` logger and,
    when ``fallback_level`` is given, the filter at that (safer) level is
    returned instead, itself without a self-check.
    """
    if not 0 <= dump_level <= 31:
        raise UsageError(f"dump level must be 0..31, not {dump_level}")
    info = vmcoreinfo if vmcoreinfo is not None else VmcoreInfo.from_dump(source)
    if dump_level & ~1 == 0 and not selfcheck:
        # level 0/1 excludes nothing in the layer except hwpoison/offline, which still needs struct pages
        pass
    kmem = kernel_memory(source, info)
    spm = struct_page_map(kmem, source, info)
    spec = PageFlagsSpec.from_vmcoreinfo(info, byteorder=source.byteorder)
    bits, counts, free_seen, stats = _classify_all(source, kmem, spm, spec, dump_level, window_pfns)
    result = FilteredDump(source, dump_level, bits, counts, free_seen=free_seen, stats=stats)
    if selfcheck:
        sc = run_selfcheck(kmem, info, spec, free_seen=free_seen, ram_pages=sum(e - s for s, e in source.ram_runs()),
                           ncpus=max(len(source.prstatus_notes()), 1))
        result.selfcheck_result = sc
        if not sc.ok:
            log.warning("kdumpkit filter SELF-CHECK FAILED at dump level %d: %s", dump_level, sc.message)
            if fallback_level is not None and fallback_level != dump_level:
                log.warning("kdumpkit filter: falling back to dump level %d", fallback_level)
                fb = filtered(source, fallback_level, vmcoreinfo=info, selfcheck=False, window_pfns=window_pfns)
                fb.selfcheck_result = sc
                return fb
    return result


def describe_levels() -> dict[int, set[str]]:
    """Which classes each of the 32 levels excludes (for docs and ``estimate``)."""
    return {lvl: level_classes(lvl) for lvl in range(32)}
