"""Where the crashed kernel keeps ``struct page`` for each pfn (formats.md §5.3).

Page filtering needs the ``struct page`` of every RAM page, read in bulk.
The kernel's memory model decides where it lives:

* **SPARSEMEM** (every x86_64 kernel): ``mem_section[]`` describes
  ``2^(SECTION_SIZE_BITS - PAGE_SHIFT)`` pfns per section; its
  ``section_mem_map`` stores ``mem_map - section_start_pfn`` plus flag bits
  in the low bits (present, has-mem-map, online, early, zone-device,
  vmemmap-preinit …).  With SPARSEMEM_EXTREME the symbol is a root array of
  pointers to pages of sections.  With SPARSEMEM_VMEMMAP every section
  decodes to the same base (``vmemmap``) and the array is virtually
  contiguous, backed by 2 MiB pages: we translate once per mapping and read
  big physical blocks.
* **FLATMEM**: one ``mem_map`` array (``SYMBOL(mem_map)`` is the pointer
  variable), starting at ARCH_PFN_OFFSET (0 on x86).

Everything comes from VMCOREINFO; missing ``NUMBER(SECTION_SIZE_BITS)`` /
``NUMBER(MAX_PHYSMEM_BITS)`` (kernels before 5.13 / 5.9) fall back to the
x86_64 values makedumpfile also assumes (27 and 46 or 52).

Reading never raises for holes: :meth:`StructPageMap.read` returns the bytes
it could read and a per-pfn validity mask, because a pfn whose ``struct
page`` cannot be read must be *kept* by the filter, never guessed about.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

import numpy as np

from kdumpkit.errors import BadDumpError, KdumpkitError, KernelError, TranslationError
from kdumpkit.kernel.memory import KernelMemory
from kdumpkit.kernel.paging import PageTableFault
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

if TYPE_CHECKING:
    from kdumpkit.dump.base import Dump

__all__ = [
    "SECTION_FLAG_MASK",
    "PhysReader",
    "StructPageMap",
    "field_offset",
    "page_struct_size",
    "plausible",
    "struct_page_map",
]

SECTION_MARKED_PRESENT = 1
SECTION_FLAG_MASK = 0x3F
"""Low bits of ``section_mem_map`` that are flags, not address bits.

makedumpfile masks ``0x1f`` (SECTION_MAP_LAST_BIT = 1<<5); newer kernels
added SECTION_IS_VMEMMAP_PREINIT as bit 5.  The encoded map is
``mem_map - start_pfn`` in ``struct page`` units with ``start_pfn`` a
multiple of the section size, so it is at least 64-byte aligned and masking
six bits never drops an address bit."""

_X86_64_SECTION_SIZE_BITS = 27
_MIN_SECTION_SIZE_BITS = 20
_X86_64_MAX_PHYSMEM_BITS = {False: 46, True: 52}
_MAX_PHYS_CHUNK = 1 << 24  # read physical memory in blocks of at most 16 MiB
STRUCT_PAGE_MIN, STRUCT_PAGE_MAX = 16, 1024
"""Bounds for ``SIZE(page)``: every kernel's ``struct page`` is 32–80 bytes; the
upper bound also caps the filter's window buffer (2^16 rows) at 64 MiB."""


def plausible(field: str, value: int, lo: int, hi: int) -> int:
    """``value`` if ``lo <= value <= hi``, else :class:`BadDumpError` naming the VMCOREINFO ``field``.

    Checked once where the facts are gathered, so the filter's NumPy code can
    index with them and never raises IndexError/OverflowError on a bad dump.
    """
    if not lo <= value <= hi:
        raise BadDumpError(field, value, f"{lo}..{hi}")
    return value


@overload
def field_offset(field: str, value: int, width: int, struct_size: int) -> int: ...
@overload
def field_offset(field: str, value: None, width: int, struct_size: int) -> None: ...
@overload
def field_offset(field: str, value: int | None, width: int, struct_size: int) -> int | None: ...
def field_offset(field: str, value: int | None, width: int, struct_size: int) -> int | None:
    """An ``OFFSET(...)`` whose ``width``-byte field must lie inside a ``struct_size``-byte struct."""
    if value is None:
        return None
    return plausible(field, value, 0, struct_size - width)


def page_struct_size(info: VmcoreInfo) -> int:
    """``SIZE(page)``, required and plausible."""
    return plausible("SIZE(page)", info.require_size("page"), STRUCT_PAGE_MIN, STRUCT_PAGE_MAX)


class PhysReader:
    """Bulk physical reads straight from a dump's dumped runs.

    ``Dump.read`` checks every page's state and concatenates bytes; the
    filter reads 16 MiB of ``struct page`` per window, so this reader looks up
    the dumped runs once (bisect) and asks the format for whole contiguous
    runs (``_read_dumped`` of an ELF core is an mmap view).  Pages the dump
    does not hold come back as zeros and are reported as bad byte ranges.
    """

    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self.page_size = dump.page_size
        self.runs = dump.dumped_runs()
        self._starts = [s for s, _ in self.runs]

    def read_into(self, out: np.ndarray, out_off: int, pa: int, length: int, bad: list[tuple[int, int]]) -> None:
        """Copy ``[pa, pa+length)`` into ``out[out_off:]``; append unreadable output ranges to ``bad``."""
        ps = self.page_size
        pos = 0
        while pos < length:
            addr = pa + pos
            pfn, off = divmod(addr, ps)
            i = bisect.bisect_right(self._starts, pfn) - 1
            if i >= 0 and pfn < self.runs[i][1]:
                run_end_bytes = self.runs[i][1] * ps
                n = min(length - pos, run_end_bytes - addr, _MAX_PHYS_CHUNK)
                npages = (off + n + ps - 1) // ps
                try:
                    buf = self.dump._read_dumped(pfn, npages)
                except KdumpkitError:
                    bad.append((out_off + pos, out_off + pos + n))
                else:
                    out[out_off + pos:out_off + pos + n] = np.frombuffer(buf, dtype=np.uint8, count=n, offset=off)
                pos += n
            else:
                # not dumped: skip to the next dumped run (or the end)
                nxt = self.runs[i + 1][0] * ps if i + 1 < len(self.runs) else pa + length
                n = max(min(length - pos, nxt - addr), 1)
                bad.append((out_off + pos, out_off + pos + n))
                pos += n


@dataclass(frozen=True)
class _MapRun:
    """Pfns ``[start, end)`` whose struct pages are virtually contiguous from ``va``."""

    start: int
    end: int
    va: int


class StructPageMap:
    """``pfn -> struct page`` for one crashed kernel, read in bulk.

    ``model`` is ``"sparsemem_vmemmap"``, ``"sparsemem"`` (including
    EXTREME) or ``"flatmem"``; ``runs`` are the pfn ranges that have a
    ``struct page`` at all (present sections, or the flat ``mem_map``).
    """

    def __init__(self, kmem: KernelMemory, dump: Dump, model: str, runs: list[_MapRun], page_struct_size: int,
                 *, sections: int = 0, extreme: bool = False, vmemmap: int | None = None) -> None:
        self.kmem = kmem
        self.dump = dump
        self.model = model
        self.runs = runs
        self.size = page_struct_size
        self.sections = sections
        self.extreme = extreme
        self.vmemmap = vmemmap
        self._run_starts = [r.start for r in runs]
        self.phys = PhysReader(dump)
        self.translations = 0
        """Page-table walks done so far (the fast path does one per 2 MiB of vmemmap)."""

    def describe(self) -> dict[str, object]:
        return {"model": self.model, "sections_present": self.sections, "extreme": self.extreme,
                "vmemmap": None if self.vmemmap is None else f"{self.vmemmap:#x}",
                "struct_page_size": self.size, "mapped_pfns": sum(r.end - r.start for r in self.runs)}

    def address(self, pfn: int) -> int | None:
        """Virtual address of pfn's ``struct page``, or None without one."""
        i = bisect.bisect_right(self._run_starts, pfn) - 1
        if i >= 0 and pfn < self.runs[i].end:
            r = self.runs[i]
            return r.va + (pfn - r.start) * self.size
        return None

    def read(self, start: int, end: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``struct page`` bytes of pfns ``[start, end)`` as ``(n, SIZE(page))`` uint8, and a validity mask.

        ``out`` (uint8, at least ``n * SIZE(page)`` bytes) is reused instead
        of a new buffer; what could not be read is zero in it either way.
        """
        n = end - start
        sz = self.size
        if out is None:
            out = np.zeros(n * sz, dtype=np.uint8)
            fresh = True
        else:
            out = out[:n * sz]
            fresh = False
        valid = np.zeros(n, dtype=bool)
        i = max(bisect.bisect_right(self._run_starts, start) - 1, 0)
        bad: list[tuple[int, int]] = []
        done = 0  # bytes of out up to which every gap has been zeroed
        while i < len(self.runs) and self.runs[i].start < end:
            r = self.runs[i]
            s, e = max(r.start, start), min(r.end, end)
            if s < e:
                valid[s - start:e - start] = True
                if not fresh and (s - start) * sz > done:
                    out[done:(s - start) * sz] = 0
                self._read_virt(r.va + (s - r.start) * sz, (e - s) * sz, out, (s - start) * sz, bad)
                done = (e - start) * sz
            i += 1
        if not fresh:
            out[done:] = 0
        for bs, be in bad:
            if not fresh:
                out[bs:be] = 0
            valid[bs // sz:(be + sz - 1) // sz] = False
        return out.reshape(n, sz), valid

    def _read_virt(self, va: int, length: int, out: np.ndarray, out_off: int, bad: list[tuple[int, int]]) -> None:
        """Read a virtual range: one translation per mapping (2 MiB / 1 GiB / 4 KiB), big physical reads."""
        pos = 0
        mode = getattr(self.kmem, "mode", None)
        while pos < length:
            addr = va + pos
            try:
                t = self.kmem.vtop(addr)
                self.translations += 1
                size = t.page_size
                pa = t.pa
            except PageTableFault as f:
                # skip the whole unmapped region the missing entry stands for
                size = 1 << mode.shift(max(len(f.steps) - 1, 0)) if mode is not None else self.kmem.page_size
                n = min(length - pos, size - addr % size)
                bad.append((out_off + pos, out_off + pos + n))
                pos += n
                continue
            except TranslationError:
                n = min(length - pos, self.kmem.page_size - addr % self.kmem.page_size)
                bad.append((out_off + pos, out_off + pos + n))
                pos += n
                continue
            n = min(length - pos, size - addr % size)
            self.phys.read_into(out, out_off + pos, pa, n, bad)
            pos += n


def _read_ulongs(kmem: KernelMemory, va: int, count: int) -> np.ndarray:
    data = kmem.read_virt(va, count * kmem.pointer_size)
    dt = np.dtype("<u8" if kmem.byteorder == "little" else ">u8") if kmem.pointer_size == 8 else \
        np.dtype("<u4" if kmem.byteorder == "little" else ">u4")
    return np.frombuffer(data, dtype=dt).astype(np.uint64)


def _decode_sections(kmem: KernelMemory, info: VmcoreInfo, root: int, nr_needed: int, extreme: bool,
                     spr: int, sec_size: int, map_off: int) -> np.ndarray:
    """Encoded ``section_mem_map`` of sections ``0 .. nr_needed-1`` (0 = absent)."""
    maps = np.zeros(nr_needed, dtype=np.uint64)
    ps = kmem.pointer_size
    if extreme:
        nroots = (nr_needed + spr - 1) // spr
        ptrs = _read_ulongs(kmem, root, nroots)
        for r, p in enumerate(ptrs.tolist()):
            if not p:
                continue
            cnt = min(spr, nr_needed - r * spr)
            raw = kmem.read_virt(int(p), cnt * sec_size)
            arr = np.frombuffer(raw, dtype=np.uint8).reshape(cnt, sec_size)[:, map_off:map_off + ps]
            maps[r * spr:r * spr + cnt] = np.ascontiguousarray(arr).view("<u8" if ps == 8 else "<u4").ravel()
    else:
        raw = kmem.read_virt(root, nr_needed * sec_size)
        arr = np.frombuffer(raw, dtype=np.uint8).reshape(nr_needed, sec_size)[:, map_off:map_off + ps]
        maps[:] = np.ascontiguousarray(arr).view("<u8" if ps == 8 else "<u4").ravel()
    return maps


def _sparsemem(kmem: KernelMemory, dump: Dump, info: VmcoreInfo, size: int, max_pfn: int) -> StructPageMap:
    root = info.require_symbol("mem_section")
    sec_size = plausible("SIZE(mem_section)", info.require_size("mem_section"), kmem.pointer_size, kmem.page_size)
    map_off = field_offset("OFFSET(mem_section.section_mem_map)", info.require_offset("mem_section.section_mem_map"),
                           kmem.pointer_size, sec_size)
    page_shift = (kmem.page_size).bit_length() - 1
    l5 = info.number("pgtable_l5_enabled") == 1
    # every architecture's sections are 2^24..2^30 bytes; below 2^20 the section table alone would
    # need gigabytes on a large machine (an OOM kill in the capture kernel instead of an error)
    ssb = plausible("NUMBER(SECTION_SIZE_BITS)", info.number("SECTION_SIZE_BITS") or _X86_64_SECTION_SIZE_BITS,
                    max(page_shift + 1, _MIN_SECTION_SIZE_BITS), 63)
    mpb = plausible("NUMBER(MAX_PHYSMEM_BITS)", info.number("MAX_PHYSMEM_BITS") or _X86_64_MAX_PHYSMEM_BITS[l5],
                    ssb + 1, 64)
    pfn_shift = ssb - page_shift
    nr_sections = 1 << (mpb - ssb)
    spr = kmem.page_size // sec_size
    nr_roots = info.length("mem_section")
    extreme = nr_roots is None or nr_roots == (nr_sections + spr - 1) // spr
    if not extreme:
        spr = 1
    nr_needed = min(nr_sections, (max_pfn + (1 << pfn_shift) - 1) >> pfn_shift)
    if nr_needed <= 0:
        raise KernelError("no memory sections to decode")

    def attempt(base: int) -> np.ndarray | None:
        try:
            maps = _decode_sections(kmem, info, base, nr_needed, extreme, spr, sec_size, map_off)
        except KdumpkitError:
            return None
        present = (maps & np.uint64(SECTION_MARKED_PRESENT)) != 0
        if not present.any():
            return None
        decoded = maps & ~np.uint64(SECTION_FLAG_MASK)
        # makedumpfile's validate_mem_section: a present section must decode to a kernel address.
        if not bool(np.all(decoded[present] >> np.uint64(63))):
            return None
        return maps

    maps = attempt(root)
    if maps is None and extreme:
        # an older export (or a vmlinux-derived value) gives the pointer's address: dereference once
        try:
            maps = attempt(kmem.read_ulong(root))
        except KdumpkitError:
            maps = None
    if maps is None:
        raise KernelError(f"mem_section at {root:#x} does not decode to any present section")
    present = (maps & np.uint64(SECTION_MARKED_PRESENT)) != 0
    decoded = maps & ~np.uint64(SECTION_FLAG_MASK)
    runs: list[_MapRun] = []
    for nr in np.flatnonzero(present).tolist():
        start = nr << pfn_shift
        end = min((nr + 1) << pfn_shift, max_pfn)
        va = (int(decoded[nr]) + start * size) & 0xFFFF_FFFF_FFFF_FFFF
        if runs and runs[-1].end == start and runs[-1].va + (start - runs[-1].start) * size == va:
            runs[-1] = _MapRun(runs[-1].start, end, runs[-1].va)
        else:
            runs.append(_MapRun(start, end, va))
    bases = set(decoded[present].tolist())
    vmemmap = int(next(iter(bases))) if len(bases) == 1 else None
    sym_vmemmap = info.symbol("vmemmap")
    if sym_vmemmap:
        vmemmap = sym_vmemmap
    model = "sparsemem_vmemmap" if vmemmap is not None and len(bases) == 1 else "sparsemem"
    return StructPageMap(kmem, dump, model, runs, size, sections=int(present.sum()), extreme=extreme,
                         vmemmap=vmemmap if model == "sparsemem_vmemmap" else None)


def _flatmem(kmem: KernelMemory, dump: Dump, info: VmcoreInfo, size: int, max_pfn: int) -> StructPageMap:
    sym = info.require_symbol("mem_map")
    mem_map = kmem.read_ulong(sym)
    if not mem_map:
        raise KernelError("mem_map is NULL")
    pfn_offset = 0
    cpd = info.symbol("contig_page_data")
    off_start = info.offset("pglist_data.node_start_pfn")
    off_map = info.offset("pglist_data.node_mem_map")
    if cpd and off_start is not None and off_map is not None:
        # drgn's rule: ARCH_PFN_OFFSET = node_start_pfn - (node_mem_map - mem_map) / SIZE(page)
        try:
            start = kmem.read_ulong(cpd + off_start)
            node_map = kmem.read_ulong(cpd + off_map)
            pfn_offset = start - (node_map - mem_map) // size
        except KdumpkitError:
            pfn_offset = 0
    return StructPageMap(kmem, dump, "flatmem", [_MapRun(pfn_offset, max_pfn, mem_map)], size)


def struct_page_map(kmem: KernelMemory, dump: Dump, info: VmcoreInfo | None = None) -> StructPageMap:
    """Find ``struct page`` for the dump's pfns: SPARSEMEM(_EXTREME/_VMEMMAP), else FLATMEM."""
    info = info if info is not None else kmem.vmcoreinfo
    size = page_struct_size(info)
    max_pfn = dump.max_pfn
    if info.symbol("mem_section") and info.size("mem_section") is not None \
            and info.offset("mem_section.section_mem_map") is not None:
        return _sparsemem(kmem, dump, info, size, max_pfn)
    if info.symbol("mem_map"):
        return _flatmem(kmem, dump, info, size, max_pfn)
    raise KernelError("VMCOREINFO describes neither SPARSEMEM (mem_section) nor FLATMEM (mem_map)")
