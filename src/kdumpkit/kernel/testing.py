"""A tiny synthetic x86_64 kernel in memory, for tests of the kernel helpers.

Real crashed kernels are slow to produce; the helpers in this package only
need physical memory, page tables and a VMCOREINFO text.  This module builds
exactly those from small specs:

* :class:`PhysMem` — sparse physical memory (unwritten pages are holes);
* :class:`SparseDump` — a :class:`~kdumpkit.dump.base.Dump` over it;
* :class:`PageTables` — x86_64 4/5-level tables with 4 KiB, 2 MiB, 1 GiB pages;
* :class:`SyntheticKernel` — text mapping, direct map, VMCOREINFO, and
  writers that lay out a kernel log in each of the three printk layouts the
  way the kernel's own writer does (wrapping included).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kdumpkit.dump.base import NT_PRSTATUS, Buffer, Dump, Note, PageState, merge_runs
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo
from kdumpkit.kernel.x86_64 import START_KERNEL_MAP

__all__ = [
    "PageTables",
    "PhysMem",
    "SparseDump",
    "SynthRecord",
    "SyntheticKernel",
    "prstatus_x86_64",
]

PAGE = 4096
P_PRESENT, P_RW, P_ACCESSED, P_DIRTY, P_PSE, P_GLOBAL = 1, 2, 0x20, 0x40, 0x80, 0x100
P_PAT_LARGE = 1 << 12
P_NX = 1 << 63
_LEAF = P_PRESENT | P_RW | P_ACCESSED | P_DIRTY | P_GLOBAL
_TABLE = P_PRESENT | P_RW | P_ACCESSED | P_DIRTY


class PhysMem:
    """Sparse physical memory: a dict of pages created on first write."""

    def __init__(self, page_size: int = PAGE) -> None:
        self.page_size = page_size
        self.pages: dict[int, bytearray] = {}

    def write(self, pa: int, data: bytes) -> None:
        ps = self.page_size
        pos = 0
        while pos < len(data):
            pfn, off = divmod(pa + pos, ps)
            n = min(ps - off, len(data) - pos)
            page = self.pages.setdefault(pfn, bytearray(ps))
            page[off:off + n] = data[pos:pos + n]
            pos += n

    def write_u64(self, pa: int, value: int) -> None:
        self.write(pa, struct.pack("<Q", value & (2**64 - 1)))

    def read(self, pa: int, n: int) -> bytes:
        out = bytearray()
        ps = self.page_size
        while n > 0:
            pfn, off = divmod(pa, ps)
            k = min(ps - off, n)
            out += self.pages.get(pfn, bytes(ps))[off:off + k]
            pa += k
            n -= k
        return bytes(out)


class SparseDump(Dump):
    """A dump of a :class:`PhysMem`: written pages are DUMPED, others NOT_RAM.

    ``excluded`` pfns read as EXCLUDED (filtered out by a dump level);
    ``direct_map`` answers the optional ``direct_map_base()`` hook the way an
    ELF vmcore does.
    """

    format_name = "sparse"

    def __init__(self, mem: PhysMem, *, notes: Sequence[Note] = (), excluded: Iterable[int] = (),
                 direct_map: int | None = None, arch: str = "x86_64") -> None:
        self.mem = mem
        self.path = "<sparse>"
        self.page_size = mem.page_size
        self.arch = arch
        self.byteorder = "little"
        self.max_pfn = max(mem.pages, default=-1) + 1
        self._notes = list(notes)
        self.excluded = set(excluded)
        self._direct_map = direct_map

    def ram_runs(self) -> list[tuple[int, int]]:
        return merge_runs((p, p + 1) for p in self.mem.pages)

    def dumped_runs(self) -> list[tuple[int, int]]:
        return merge_runs((p, p + 1) for p in self.mem.pages if p not in self.excluded)

    def page_state(self, pfn: int) -> PageState:
        if pfn not in self.mem.pages:
            return PageState.NOT_RAM
        return PageState.EXCLUDED if pfn in self.excluded else PageState.DUMPED

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        return self.mem.read(pfn * self.page_size, count * self.page_size)

    def notes(self) -> list[Note]:
        return list(self._notes)

    def direct_map_base(self) -> int | None:
        return self._direct_map


class PageTables:
    """x86_64 page tables built in a :class:`PhysMem`, tables taken from ``alloc``."""

    def __init__(self, mem: PhysMem, root: int, alloc_base: int, levels: int = 4) -> None:
        self.mem = mem
        self.root = root
        self.levels = levels
        self._next = alloc_base
        mem.write(root, bytes(PAGE))

    def _alloc(self) -> int:
        pa = self._next
        self._next += PAGE
        self.mem.write(pa, bytes(PAGE))
        return pa

    def entry_addr(self, va: int, level: int, table: int) -> int:
        shift = 12 + 9 * (self.levels - 1 - level)
        return table + ((va >> shift) & 511) * 8

    def map(self, va: int, pa: int, size: int = PAGE, *, flags: int = _LEAF, extra: int = 0) -> None:
        """Map one page of ``size`` (4 KiB, 2 MiB or 1 GiB); ``extra`` ORs bits into the leaf (NX, PAT, SME)."""
        table = self.root
        for level in range(self.levels):
            shift = 12 + 9 * (self.levels - 1 - level)
            ea = self.entry_addr(va, level, table)
            if size == 1 << shift:
                leaf = pa | flags | extra | (P_PSE if level != self.levels - 1 else 0)
                self.mem.write_u64(ea, leaf)
                return
            cur = struct.unpack("<Q", self.mem.read(ea, 8))[0]
            if cur & P_PRESENT:
                table = cur & 0x000F_FFFF_FFFF_F000
            else:
                table = self._alloc()
                self.mem.write_u64(ea, table | _TABLE)
        raise ValueError(f"page size {size:#x} is not a page size")

    def map_range(self, va: int, pa: int, length: int, size: int = PAGE, **kw: int) -> None:
        for off in range(0, length, size):
            self.map(va + off, pa + off, size, **kw)


@dataclass(frozen=True)
class SynthRecord:
    """A log record to write: text, timestamp, level, caller."""

    text: bytes
    ts_nsec: int = 0
    level: int = 6
    facility: int = 0
    caller_id: int = 1
    dict_: bytes = b""


# printk_info / prb layout of a 6.1 x86_64 kernel (LP64)
_LOCKLESS_KEYS = {
    "SIZE(printk_ringbuffer)": 88, "OFFSET(printk_ringbuffer.desc_ring)": 0,
    "OFFSET(printk_ringbuffer.text_data_ring)": 48, "OFFSET(printk_ringbuffer.fail)": 80,
    "SIZE(prb_desc_ring)": 48, "OFFSET(prb_desc_ring.count_bits)": 0, "OFFSET(prb_desc_ring.descs)": 8,
    "OFFSET(prb_desc_ring.infos)": 16, "OFFSET(prb_desc_ring.head_id)": 24, "OFFSET(prb_desc_ring.tail_id)": 32,
    "SIZE(prb_desc)": 24, "OFFSET(prb_desc.state_var)": 0, "OFFSET(prb_desc.text_blk_lpos)": 8,
    "SIZE(prb_data_blk_lpos)": 16, "OFFSET(prb_data_blk_lpos.begin)": 0, "OFFSET(prb_data_blk_lpos.next)": 8,
    "SIZE(printk_info)": 88, "OFFSET(printk_info.seq)": 0, "OFFSET(printk_info.ts_nsec)": 8,
    "OFFSET(printk_info.text_len)": 16, "OFFSET(printk_info.caller_id)": 20, "OFFSET(printk_info.dev_info)": 24,
    "SIZE(dev_printk_info)": 64, "OFFSET(dev_printk_info.subsystem)": 0, "OFFSET(dev_printk_info.device)": 16,
    "LENGTH(printk_info_subsystem)": 16, "LENGTH(printk_info_device)": 48,
    "SIZE(prb_data_ring)": 32, "OFFSET(prb_data_ring.size_bits)": 0, "OFFSET(prb_data_ring.data)": 8,
    "OFFSET(prb_data_ring.head_lpos)": 16, "OFFSET(prb_data_ring.tail_lpos)": 24,
    "SIZE(atomic_long_t)": 8, "OFFSET(atomic_long_t.counter)": 0,
}
_STRUCTURED_KEYS = {
    "SIZE(printk_log)": 16, "OFFSET(printk_log.ts_nsec)": 0, "OFFSET(printk_log.len)": 8,
    "OFFSET(printk_log.text_len)": 10, "OFFSET(printk_log.dict_len)": 12,
}
_ID_BITS = 62
_ID_MASK = (1 << _ID_BITS) - 1


class SyntheticKernel:
    """A minimal x86_64 kernel image: text mapping, direct map, VMCOREINFO, a log.

    Layout: the kernel image is mapped with 2 MiB pages at
    ``0xffffffff81000000`` → ``phys_base + 0x1000000``; RAM ``[0, ram)`` is
    direct-mapped with 1 GiB pages at ``direct_map``; "kmalloc" objects are
    placed from ``heap`` upward and addressed through the direct map.
    """

    TEXT_VA = START_KERNEL_MAP + 0x100_0000

    def __init__(self, *, phys_base: int = 0x200_0000, direct_map: int = 0xFFFF_9A4C_4000_0000,
                 levels: int = 4, ram: int = 1 << 30, sme_mask: int = 0,
                 osrelease: str = "6.1.0-synthetic") -> None:
        self.mem = PhysMem()
        self.phys_base = phys_base
        self.direct_map = direct_map
        self.levels = levels
        self.sme_mask = sme_mask
        self.osrelease = osrelease
        self.text_pa = self.TEXT_VA - START_KERNEL_MAP + phys_base
        self._text_next = self.TEXT_VA + 0x10_0000  # variables go here
        self.root_va = self._text_alloc(PAGE)
        self.pt = PageTables(self.mem, self.text_to_phys(self.root_va), alloc_base=0x10_0000, levels=levels)
        self.pt.map_range(self.TEXT_VA, self.text_pa, 0x400_0000, 1 << 21, extra=sme_mask)
        self.pt.map_range(direct_map, 0, ram, 1 << 30, extra=sme_mask)
        self.heap = 0x800_0000
        self.keys: dict[str, str] = {}
        self.symbols: dict[str, int] = {}
        self.extra_lines: list[str] = []
        # mem_section's root array: a direct-map pointer the translator can derive the base from.
        ms = self.kmalloc(PAGE)
        self.symbols["mem_section"] = ms

    # -- memory helpers -----------------------------------------------------
    def text_to_phys(self, va: int) -> int:
        return va - START_KERNEL_MAP + self.phys_base

    def _text_alloc(self, size: int, align: int = 8) -> int:
        va = (self._text_next + align - 1) & ~(align - 1)
        self._text_next = va + size
        return va

    def variable(self, name: str, size: int = 8) -> int:
        """A kernel global in the image; its address becomes ``SYMBOL(name)``."""
        va = self._text_alloc(size)
        self.symbols[name] = va
        self.mem.write(self.text_to_phys(va), bytes(size))
        return va

    def kmalloc(self, size: int, align: int = 64) -> int:
        """Direct-map memory; returns its virtual address."""
        pa = (self.heap + align - 1) & ~(align - 1)
        self.heap = pa + size
        self.mem.write(pa, bytes(size))
        return self.direct_map + pa

    def write_virt(self, va: int, data: bytes) -> None:
        if va >= START_KERNEL_MAP:
            self.mem.write(self.text_to_phys(va), data)
        else:
            self.mem.write(va - self.direct_map, data)

    def write_ulong(self, va: int, value: int) -> None:
        self.write_virt(va, struct.pack("<Q", value & (2**64 - 1)))

    def write_u32(self, va: int, value: int) -> None:
        self.write_virt(va, struct.pack("<I", value & 0xFFFFFFFF))

    # -- VMCOREINFO -----------------------------------------------------------
    def vmcoreinfo_text(self) -> bytes:
        lines = [f"OSRELEASE={self.osrelease}", "BUILD-ID=" + "ab" * 20, "PAGESIZE=4096"]
        lines += [f"SYMBOL({k})={v:x}" for k, v in self.symbols.items()]
        lines += [f"{k}={v}" for k, v in self.keys.items()]
        lines += [
            f"SYMBOL(init_top_pgt)={self.root_va:x}",
            f"SYMBOL(swapper_pg_dir)={self.root_va:x}",
            "OFFSET(mem_section.section_mem_map)=0",
            f"NUMBER(phys_base)={self.phys_base}",
            f"NUMBER(pgtable_l5_enabled)={1 if self.levels == 5 else 0}",
            f"KERNELOFFSET={0x1e000000:x}",
            "NUMBER(KERNEL_IMAGE_SIZE)=1073741824",
            f"NUMBER(sme_mask)={self.sme_mask}",
        ]
        lines += self.extra_lines
        lines.append("CRASHTIME=1700000000")
        return ("\n".join(lines) + "\n").encode()

    def vmcoreinfo(self) -> VmcoreInfo:
        return VmcoreInfo.from_text(self.vmcoreinfo_text())

    def dump(self, *, notes: Sequence[Note] = (), excluded: Iterable[int] = (),
             with_direct_map_hook: bool = False) -> SparseDump:
        all_notes = list(notes) + [Note("VMCOREINFO", 0, self.vmcoreinfo_text())]
        return SparseDump(self.mem, notes=all_notes, excluded=excluded,
                          direct_map=self.direct_map if with_direct_map_hook else None)

    # -- printk layouts -----------------------------------------------------------
    def lockless_log(self, records: Sequence[SynthRecord], *, count_bits: int = 5, size_bits: int = 10,
                     first_id: int = 0, first_lpos: int = 0, first_seq: int = 0) -> list[SynthRecord]:
        """Write a 5.10+ ring the way ``prb_reserve`` fills it; returns the records that survive."""
        self.keys.update({k: str(v) for k, v in _LOCKLESS_KEYS.items()})
        count, size = 1 << count_bits, 1 << size_bits
        prb = self.variable("printk_rb_dynamic", 88)
        ptr = self.variable("prb", 8)
        self.write_ulong(ptr, prb)
        descs = self.kmalloc(24 * count)
        infos = self.kmalloc(88 * count)
        data = self.kmalloc(size)
        placed: list[tuple[int, int, int, SynthRecord]] = []  # id, begin, next, rec
        lpos = first_lpos
        for k, rec in enumerate(records):
            ident = (first_id + k) & _ID_MASK
            blk_size = (8 + len(rec.text) + 7) & ~7
            begin, nxt = lpos, lpos + blk_size
            if begin >> size_bits != nxt >> size_bits:  # wraps: data at index 0, id also at begin
                self.write_ulong(data + (begin & (size - 1)), ident)
                nxt = ((nxt >> size_bits) << size_bits) + blk_size
                at = 0
            else:
                at = begin & (size - 1)
            self.write_ulong(data + at, ident)
            self.write_virt(data + at + 8, rec.text)
            placed.append((ident, begin, nxt, rec))
            lpos = nxt
        head_lpos = lpos
        alive = [p for p in placed if p[1] >= head_lpos - size][-(count - 1):]  # data and a free descriptor
        alive_ids = {p[0] for p in alive}
        for n, (ident, begin, nxt, rec) in enumerate(placed):
            state = 2 if ident in alive_ids else 3  # finalized / reusable
            d = descs + (ident % count) * 24
            self.write_ulong(d, (state << _ID_BITS) | ident)
            self.write_ulong(d + 8, begin)
            self.write_ulong(d + 16, nxt)
            i = infos + (ident % count) * 88
            self.write_virt(i, struct.pack("<QQHBBI", first_seq + n, rec.ts_nsec, len(rec.text), rec.facility,
                                           (rec.level << 5), rec.caller_id))
        head_id = placed[-1][0] if placed else (first_id - 1) & _ID_MASK
        tail_id = alive[0][0] if alive else first_id
        self.write_virt(prb, struct.pack("<IIQQQQQ", count_bits, 0, descs, infos, head_id, tail_id, head_id))
        self.write_virt(prb + 48, struct.pack("<IIQQQ", size_bits, 0, data, head_lpos, alive[0][1] if alive else 0))
        self.prb = prb
        self.prb_descs, self.prb_infos, self.prb_data = descs, infos, data
        return [p[3] for p in alive]

    def structured_log(self, records: Sequence[SynthRecord], *, buf_len: int = 512) -> list[SynthRecord]:
        """Write a 3.5-5.9 ``log_buf`` the way ``log_store`` does; returns the surviving records."""
        self.keys.update({k: str(v) for k, v in _STRUCTURED_KEYS.items()})
        buf = self.kmalloc(buf_len)
        self.write_ulong(self.variable("log_buf"), buf)
        self.write_u32(self.variable("log_buf_len", 4), buf_len)
        first_sym, next_sym = self.variable("log_first_idx", 4), self.variable("log_next_idx", 4)
        mem = bytearray(buf_len)
        first = nxt = 0
        kept: list[tuple[int, SynthRecord]] = []  # (idx, rec), oldest first

        def rec_len(idx: int) -> int:
            return int(struct.unpack_from("<H", mem, idx + 8)[0])

        def has_space(need: int, empty: bool) -> bool:
            free = max(buf_len - nxt, first) if (nxt > first or empty) else first - nxt
            return free >= need + 16

        for rec in records:
            size = (16 + len(rec.text) + len(rec.dict_) + 3) & ~3
            while kept and not has_space(size, False):
                ln = rec_len(first)
                first = rec_len(0) if ln == 0 else first + ln
                kept.pop(0)
            if not kept:
                first = nxt
            if not has_space(size, not kept):
                continue  # the kernel truncates; tests never need it
            if nxt + size + 16 > buf_len:
                mem[nxt:nxt + 16] = bytes(16)
                nxt = 0
            struct.pack_into("<QHHHBB", mem, nxt, rec.ts_nsec, size, len(rec.text), len(rec.dict_),
                             rec.facility, rec.level << 5)
            mem[nxt + 16:nxt + 16 + len(rec.text)] = rec.text
            mem[nxt + 16 + len(rec.text):nxt + 16 + len(rec.text) + len(rec.dict_)] = rec.dict_
            kept.append((nxt, rec))
            nxt += size
        self.write_virt(buf, bytes(mem))
        self.write_u32(first_sym, first)
        self.write_u32(next_sym, nxt)
        self.log_buf = buf
        return [r for _, r in kept]

    def plain_log(self, text: bytes, *, buf_len: int = 256) -> bytes:
        """Write a pre-3.5 character ring holding ``text``; returns what makedumpfile prints."""
        buf = self.kmalloc(buf_len)
        self.write_ulong(self.variable("log_buf"), buf)
        self.write_u32(self.variable("log_buf_len", 4), buf_len)
        self.write_u32(self.variable("log_end", 4), len(text))
        self.variable("logged_chars", 4)
        ring = bytearray(buf_len)
        for i, b in enumerate(text):
            ring[i % buf_len] = b
        self.write_virt(buf, bytes(ring))
        self.log_buf = buf
        return text if len(text) < buf_len else text[-buf_len:]


def prstatus_x86_64(pid: int, regs: Sequence[int] = ()) -> Note:
    """An NT_PRSTATUS note with ``pr_pid`` and the first ``len(regs)`` of the 27 registers."""
    desc = bytearray(336)
    struct.pack_into("<i", desc, 32, pid)
    for i, r in enumerate(regs):
        struct.pack_into("<Q", desc, 112 + 8 * i, r & (2**64 - 1))
    return Note("CORE", NT_PRSTATUS, bytes(desc))
