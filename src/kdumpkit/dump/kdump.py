"""The kdump-compressed ("diskdump") format: declarations, reader and writer.

Reader and writer share one set of declarations, so what we write and what
we read cannot disagree.

Layout (formats.md §3): block 0 header, then the sub-header followed by a
copy of the ELF notes, then two bitmaps (RAM, dumped), then one 24-byte
``page_desc`` per dumped page, then page data.  A page's descriptor index is
the number of 2nd-bitmap bits below its pfn; we precompute one cumulative
count per 4096-pfn section (as crash does), so a lookup is one array read
plus a popcount of at most 512 bytes, and memory is one int64 per section.
"""

from __future__ import annotations

import collections
import concurrent.futures
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdumpkit.dump import codecs
from kdumpkit.dump.base import Buffer, Dump, DumpInfo, Note, PageState, merge_runs, runs_count, subtract_runs
from kdumpkit.dump.codecs import COMPRESSION_FLAGS, FLAG_EXCLUDED_VMEMMAP, FLAG_INCOMPLETE, decompress_page, flag_name
from kdumpkit.dump.elfnotes import build_notes, parse_notes
from kdumpkit.dump.fileio import ByteSource
from kdumpkit.dump.sink import Sink
from kdumpkit.dump.writer import Progress, WriteStats
from kdumpkit.errors import CorruptDumpError, NotADumpError, PageMissingError, TruncatedDumpError
from kdumpkit.structs import Record, Struct, cstr

SIG_KDUMP = b"KDUMP   "
SIG_DISKDUMP = b"DISKDUMP"
HEADER_VERSION = 6
SECTION_PFNS = 4096  # pfns per precomputed popcount (crash's BITMAP_SECT_LEN)

UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")
_UTS = [(f, "65s") for f in UTS_FIELDS]
_HEADER_TAIL = [
    ("status", "I"),
    ("block_size", "i"),
    ("sub_hdr_size", "i"),
    ("bitmap_blocks", "I"),
    ("max_mapnr", "I"),
    ("total_ram_blocks", "I"),
    ("device_blocks", "I"),
    ("written_blocks", "I"),
    ("current_cpu", "I"),
    ("nr_cpus", "i"),
]
# struct disk_dump_header: LP64 (size 464) and ILP32 (size 452)
DISK_DUMP_HEADER_64 = Struct(
    "disk_dump_header",
    [("signature", "8s"), ("header_version", "i"), *_UTS, ("_pad", "6x"), ("tv_sec", "q"), ("tv_usec", "q"), *_HEADER_TAIL],
)
DISK_DUMP_HEADER_32 = Struct(
    "disk_dump_header_32",
    [("signature", "8s"), ("header_version", "i"), *_UTS, ("_pad", "2x"), ("tv_sec", "i"), ("tv_usec", "i"), *_HEADER_TAIL],
)
# struct kdump_sub_header: LP64 (104), i386 packed (80), ARM32 8-byte aligned (96)
KDUMP_SUB_HEADER_64 = Struct(
    "kdump_sub_header",
    [
        ("phys_base", "Q"),
        ("dump_level", "i"),
        ("split", "i"),
        ("start_pfn", "Q"),
        ("end_pfn", "Q"),
        ("offset_vmcoreinfo", "q"),
        ("size_vmcoreinfo", "Q"),
        ("offset_note", "q"),
        ("size_note", "Q"),
        ("offset_eraseinfo", "q"),
        ("size_eraseinfo", "Q"),
        ("start_pfn_64", "Q"),
        ("end_pfn_64", "Q"),
        ("max_mapnr_64", "Q"),
    ],
)
KDUMP_SUB_HEADER_32_PACKED = Struct(
    "kdump_sub_header_32pack",
    [
        ("phys_base", "I"),
        ("dump_level", "i"),
        ("split", "i"),
        ("start_pfn", "I"),
        ("end_pfn", "I"),
        ("offset_vmcoreinfo", "q"),
        ("size_vmcoreinfo", "I"),
        ("offset_note", "q"),
        ("size_note", "I"),
        ("offset_eraseinfo", "q"),
        ("size_eraseinfo", "I"),
        ("start_pfn_64", "Q"),
        ("end_pfn_64", "Q"),
        ("max_mapnr_64", "Q"),
    ],
)
KDUMP_SUB_HEADER_32_PADDED = Struct(
    "kdump_sub_header_32pad",
    [
        ("phys_base", "I"),
        ("dump_level", "i"),
        ("split", "i"),
        ("start_pfn", "I"),
        ("end_pfn", "I"),
        ("_pad1", "4x"),
        ("offset_vmcoreinfo", "q"),
        ("size_vmcoreinfo", "I"),
        ("_pad2", "4x"),
        ("offset_note", "q"),
        ("size_note", "I"),
        ("_pad3", "4x"),
        ("offset_eraseinfo", "q"),
        ("size_eraseinfo", "I"),
        ("_pad4", "4x"),
        ("start_pfn_64", "Q"),
        ("end_pfn_64", "Q"),
        ("max_mapnr_64", "Q"),
    ],
)
PAGE_DESC = Struct("page_desc", [("offset", "q"), ("size", "I"), ("flags", "I"), ("page_flags", "Q")])

_NP_CODES = {"q": "i8", "Q": "u8", "i": "i4", "I": "u4", "h": "i2", "H": "u2", "b": "i1", "B": "u1"}


def np_dtype(s: Struct) -> np.dtype[Any]:
    """The NumPy record dtype of a declared structure (for arrays of it)."""
    bo = "<" if s.byteorder in ("<", "=") else ">"
    fields: list[tuple[str, str]] = []
    for i, (name, fmt) in enumerate(s.fields):
        if fmt.endswith("x"):
            fields.append((f"_pad{i}", f"V{int(fmt[:-1] or 1)}"))
        else:
            fields.append((name, bo + _NP_CODES[fmt]))
    return np.dtype(fields)


_32BIT_MACHINES = re.compile(r"^(i[3-6]86|x86|arm(?!64)|mips|mipsel|ppc|powerpc|s390|sparc|riscv32|m68k|sh\d?|microblaze|nios2|openrisc)$")


def is_32bit_machine(machine: str) -> bool:
    """Whether ``uname -m`` names a 32-bit ABI (selects the ILP32 headers)."""
    return bool(_32BIT_MACHINES.match(machine)) or (machine.startswith("arm") and machine not in ("arm64", "aarch64"))


def header_layout(machine: str, byteorder: str) -> tuple[Struct, Struct]:
    """(disk_dump_header, kdump_sub_header) declarations for an architecture."""
    bo = "<" if byteorder == "little" else ">"
    if is_32bit_machine(machine):
        sub = KDUMP_SUB_HEADER_32_PADDED if machine.startswith("arm") else KDUMP_SUB_HEADER_32_PACKED
        return DISK_DUMP_HEADER_32.with_byteorder(bo), sub.with_byteorder(bo)
    return DISK_DUMP_HEADER_64.with_byteorder(bo), KDUMP_SUB_HEADER_64.with_byteorder(bo)


def popcount_u8(a: np.ndarray) -> np.ndarray:
    """Per-byte popcount of a uint8 array."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(a)  # type: ignore[no-any-return]
    return _POP8[a]  # type: ignore[no-any-return]


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def bitmap_runs(bm: np.ndarray, nbits: int, chunk_bytes: int = 1 << 20) -> list[tuple[int, int]]:
    """Half-open runs of set bits (LSB-first) among the first ``nbits`` bits.

    Vectorised per 1 MiB chunk; all-zero and all-one chunks are skipped
    without unpacking, so a sparse or dense 1 TiB bitmap is fast.
    """
    runs: list[tuple[int, int]] = []
    nbytes = min(len(bm), (nbits + 7) // 8)
    for off in range(0, nbytes, chunk_bytes):
        chunk = bm[off:off + chunk_bytes][: nbytes - off]
        base = off * 8
        if not chunk.any():
            continue
        if bool((chunk == 0xFF).all()):
            starts: Any = [0]
            ends: Any = [len(chunk) * 8]
        else:
            bits = np.unpackbits(chunk, bitorder="little").view(np.int8)
            d = np.diff(bits, prepend=np.int8(0), append=np.int8(0))
            starts = np.flatnonzero(d == 1).tolist()
            ends = np.flatnonzero(d == -1).tolist()
        for s, e in zip(starts, ends, strict=True):
            s += base
            e += base
            if runs and runs[-1][1] == s:
                runs[-1] = (runs[-1][0], e)
            else:
                runs.append((s, e))
    out = []
    for s, e in runs:
        if s >= nbits:
            break
        out.append((s, min(e, nbits)))
    return out


def set_bitmap_runs(bm: np.ndarray, runs: list[tuple[int, int]]) -> None:
    """Set the bits of ``runs`` in a uint8 LSB-first bitmap (whole bytes by slicing)."""
    for s, e in runs:
        if e <= s:
            continue
        fs = (s + 7) // 8  # first whole byte
        fe = e // 8  # end of whole bytes
        if fs < fe:
            bm[fs:fe] = 0xFF
            for p in range(s, fs * 8):
                bm[p >> 3] |= 1 << (p & 7)
            for p in range(fe * 8, e):
                bm[p >> 3] |= 1 << (p & 7)
        else:
            for p in range(s, e):
                bm[p >> 3] |= 1 << (p & 7)


def clip_runs(runs: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    return [(max(s, start), min(e, end)) for s, e in runs if e > start and s < end]


def parse_vmcoreinfo_min(text: bytes | str | None) -> dict[str, str]:
    """KEY=VALUE lines of a VMCOREINFO text; the first occurrence wins (as in makedumpfile)."""
    out: dict[str, str] = {}
    if not text:
        return out
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        if sep and key not in out:
            out[key] = value.strip()
    return out


class KdumpFile(Dump):
    """A kdump-compressed (``KDUMP   ``) or old ``DISKDUMP`` file, read in place."""

    format_name = "kdump"

    @classmethod
    def probe(cls, src: ByteSource) -> bool:
        if src.size < 8:
            return False
        return bytes(src.view(0, 8)) in (SIG_KDUMP, SIG_DISKDUMP)

    def __init__(self, src: ByteSource) -> None:
        if not self.probe(src):
            raise NotADumpError(f"{src.name}: no KDUMP/DISKDUMP signature")
        self.src = src
        self.path = src.name
        self.signature = bytes(src.view(0, 8))
        self.is_diskdump = self.signature == SIG_DISKDUMP
        self.header, self.header_struct, self.sub_struct = self._read_header()
        h = self.header
        self.byteorder = "little" if self.header_struct.byteorder == "<" else "big"
        bs = h.block_size
        self.block_size = self.page_size = bs
        self.header_version = h.header_version
        self.machine = cstr(h.machine)
        self.arch = self.machine or "unknown"
        self.status = h.status
        # A flattened stream that ends without its end marker lost its last writes, whatever the header says.
        self.incomplete = bool(h.status & FLAG_INCOMPLETE) and not self.is_diskdump or not getattr(src, "complete", True)
        self.sub = self._read_sub_header()
        self.max_mapnr = self._max_mapnr()
        self.max_pfn = self.max_mapnr
        self._setup_bitmaps()
        self._setup_split()
        self._desc_off = (1 + h.sub_hdr_size + h.bitmap_blocks) * bs
        self._desc_dtype = np_dtype(PAGE_DESC.with_byteorder(self.header_struct.byteorder))
        self._desc_struct = PAGE_DESC.with_byteorder(self.header_struct.byteorder)
        self._notes = self._read_notes()
        self._ram_cache: list[tuple[int, int]] | None = None
        self._dumped_cache: list[tuple[int, int]] | None = None

    # -- header parsing ---------------------------------------------------------
    def _read_header(self) -> tuple[Record, Struct, Struct]:
        src = self.src
        n = min(src.size, DISK_DUMP_HEADER_64.size)
        raw = src.read(0, n)
        if n < DISK_DUMP_HEADER_32.size:
            raise TruncatedDumpError("disk_dump_header", n)
        machine = cstr(raw[12 + 4 * 65:12 + 5 * 65])
        version_le = int.from_bytes(raw[8:12], "little", signed=True)
        byteorder = "little" if 0 <= version_le < 0x10000 else "big"
        first, first_sub = header_layout(machine, byteorder)
        if first.size == DISK_DUMP_HEADER_64.size:
            other, other_sub = DISK_DUMP_HEADER_32, KDUMP_SUB_HEADER_32_PACKED
        else:
            other, other_sub = DISK_DUMP_HEADER_64, KDUMP_SUB_HEADER_64
        other, other_sub = other.with_byteorder(first.byteorder), other_sub.with_byteorder(first.byteorder)
        for hs, ss in ((first, first_sub), (other, other_sub)):
            if len(raw) < hs.size:
                continue
            h = hs.unpack(raw)
            if _plausible_block_size(h.block_size):
                return h, hs, ss
        h = first.unpack(raw) if len(raw) >= first.size else other.unpack(raw)
        raise CorruptDumpError(f"{src.name}: block size {h.block_size} is not a plausible page size")

    def _read_sub_header(self) -> Record | None:
        h = self.header
        bs = h.block_size
        if h.sub_hdr_size < 0 or h.bitmap_blocks == 0:
            raise CorruptDumpError(f"sub_hdr_size {h.sub_hdr_size}, bitmap_blocks {h.bitmap_blocks}")
        if self.is_diskdump or h.header_version < 1:
            return None
        if h.sub_hdr_size * bs < self.sub_struct.size and h.header_version >= 2:
            # the version-1 fields fit in any sub-header block; newer ones need the whole struct
            raise CorruptDumpError(f"sub_hdr_size {h.sub_hdr_size} blocks too small for kdump_sub_header")
        self.src._check(bs, self.sub_struct.size, "kdump_sub_header")
        sub = self.sub_struct.unpack(self.src.view(bs, self.sub_struct.size), file_offset=bs)
        if self.sub_struct.size < KDUMP_SUB_HEADER_64.size:
            # i386-packed vs ARM32-padded: pick the one whose vmcoreinfo lands inside the sub-header area
            padded = self.sub_struct.name == KDUMP_SUB_HEADER_32_PADDED.name
            alt = (KDUMP_SUB_HEADER_32_PACKED if padded else KDUMP_SUB_HEADER_32_PADDED).with_byteorder(self.sub_struct.byteorder)
            area = (bs, (1 + h.sub_hdr_size) * bs)
            if h.header_version >= 3 and not _inside(sub.offset_vmcoreinfo, sub.size_vmcoreinfo, area):
                cand = alt.unpack(self.src.view(bs, alt.size), file_offset=bs)
                if _inside(cand.offset_vmcoreinfo, cand.size_vmcoreinfo, area):
                    self.sub_struct, sub = alt, cand
        return sub

    def _max_mapnr(self) -> int:
        sub = self.sub
        if sub is not None and self.header_version >= 6 and sub.max_mapnr_64:
            return int(sub.max_mapnr_64)
        return int(self.header.max_mapnr)

    def _setup_bitmaps(self) -> None:
        h = self.header
        bs = h.block_size
        self._bitmap_off = (1 + h.sub_hdr_size) * bs
        total = h.bitmap_blocks * bs
        need_bytes = _ceil_div(self.max_mapnr, 8)
        need_blocks = _ceil_div(need_bytes, bs)
        if h.bitmap_blocks >= 2 * need_blocks:
            self.bitmap_count = 2
            half = (h.bitmap_blocks // 2) * bs
            bm1: Buffer = self.src.view(self._bitmap_off, half)
            bm2: Buffer
            short = self._bitmap_off + total - self.src.size
            if 0 < short <= half - need_bytes:
                # A --split piece with no pages after its bitmaps: makedumpfile leaves the 2nd
                # bitmap's padding past max_mapnr unwritten, so the file ends early.  Those bits
                # cover no pfn; read them as zeros.
                bm2 = bytes(self.src.view(self._bitmap_off + half, half - short)) + bytes(short)
            else:
                self.src._check(self._bitmap_off, total, "bitmaps")
                bm2 = self.src.view(self._bitmap_off + half, half)
        else:
            # old DISKDUMP: one bitmap serves as both (crash does the same)
            self.src._check(self._bitmap_off, total, "bitmaps")
            self.bitmap_count = 1
            bm1 = bm2 = self.src.view(self._bitmap_off, total)
            if total * 8 < self.max_mapnr:
                raise CorruptDumpError(f"bitmap of {total} bytes cannot cover max_mapnr {self.max_mapnr}")
        self._bm1 = np.frombuffer(bm1, dtype=np.uint8)
        self._bm2 = np.frombuffer(bm2, dtype=np.uint8)
        self._bm1_mv = memoryview(bm1).cast("B") if not isinstance(bm1, bytes) else memoryview(bm1)
        self._bm2_mv = memoryview(bm2).cast("B") if not isinstance(bm2, bytes) else memoryview(bm2)
        self._cum = self._section_counts(self._bm2, self.max_mapnr)

    @staticmethod
    def _section_counts(bm: np.ndarray, nbits: int) -> np.ndarray:
        """cum[i] = set bits among pfns < i*SECTION_PFNS (int64, one per section)."""
        sect_bytes = SECTION_PFNS // 8
        nbytes = min(len(bm), -(-nbits // 8))
        nsect = -(-nbytes // sect_bytes)
        counts = np.zeros(nsect + 1, dtype=np.int64)
        step = 16384 * sect_bytes  # 8 MiB of bitmap at a time bounds the temporaries
        for off in range(0, nbytes, step):
            chunk = bm[off:min(off + step, nbytes)]
            pc = popcount_u8(chunk)
            pad = (-len(pc)) % sect_bytes
            if pad:
                pc = np.concatenate([pc, np.zeros(pad, dtype=pc.dtype)])
            s0 = off // sect_bytes
            counts[s0 + 1:s0 + 1 + len(pc) // sect_bytes] = pc.reshape(-1, sect_bytes).sum(axis=1, dtype=np.int64)
        return np.cumsum(counts)

    def _setup_split(self) -> None:
        sub = self.sub
        self.split = bool(sub is not None and self.header_version >= 2 and sub.split)
        self.start_pfn, self.end_pfn = 0, self.max_mapnr
        if self.split and sub is not None:
            if self.header_version >= 6:
                self.start_pfn, self.end_pfn = int(sub.start_pfn_64), int(sub.end_pfn_64)
            else:
                self.start_pfn, self.end_pfn = int(sub.start_pfn), int(sub.end_pfn)
            if self.start_pfn > self.end_pfn or self.start_pfn > self.max_mapnr:
                raise CorruptDumpError(f"split range [{self.start_pfn}, {self.end_pfn}) outside max_mapnr {self.max_mapnr}")
            self.end_pfn = min(self.end_pfn, self.max_mapnr)
        self._index_base = self._count_below(self.start_pfn) if self.split else 0

    def _read_notes(self) -> list[Note]:
        sub = self.sub
        if sub is None:
            return []
        notes: list[Note] = []
        if self.header_version >= 4 and sub.offset_note and sub.size_note:
            self.src._check(sub.offset_note, sub.size_note, "ELF notes")
            notes = parse_notes(self.src.view(sub.offset_note, sub.size_note), self.byteorder)
        if self.header_version >= 3 and sub.offset_vmcoreinfo and sub.size_vmcoreinfo:
            if not any(n.name == "VMCOREINFO" for n in notes):
                self.src._check(sub.offset_vmcoreinfo, sub.size_vmcoreinfo, "VMCOREINFO")
                notes.append(Note("VMCOREINFO", 0, self.src.read(sub.offset_vmcoreinfo, sub.size_vmcoreinfo)))
        return notes

    # -- lookup -------------------------------------------------------------------
    def _bit(self, mv: memoryview, pfn: int) -> bool:
        return bool(mv[pfn >> 3] >> (pfn & 7) & 1)

    def _count_below(self, pfn: int) -> int:
        """Set 2nd-bitmap bits among pfns < ``pfn``."""
        sect = pfn // SECTION_PFNS
        nbits = pfn - sect * SECTION_PFNS
        n = int(self._cum[sect])
        if nbits:
            start = sect * (SECTION_PFNS // 8)
            part = int.from_bytes(self._bm2_mv[start:start + (nbits + 7) // 8], "little")
            n += (part & ((1 << nbits) - 1)).bit_count()
        return n

    def _desc_index(self, pfn: int) -> int:
        return self._count_below(pfn) - self._index_base

    def _desc(self, index: int, count: int = 1) -> np.ndarray | None:
        """``count`` page_desc records from ``index``; None if beyond EOF of an incomplete dump."""
        off = self._desc_off + index * PAGE_DESC.size
        n = count * PAGE_DESC.size
        if off + n > self.src.size:
            if self.incomplete:
                return None
            raise TruncatedDumpError(f"page_desc #{index + count - 1}", self.src.size)
        return np.frombuffer(self.src.view(off, n), dtype=self._desc_dtype)

    def page_state(self, pfn: int) -> PageState:
        if pfn < 0 or pfn >= self.max_mapnr or not self._bit(self._bm1_mv, pfn):
            return PageState.NOT_RAM
        if not self._bit(self._bm2_mv, pfn):
            return PageState.EXCLUDED
        if not self.start_pfn <= pfn < self.end_pfn:
            return PageState.MISSING  # held by another piece of a split set
        d = self._desc(self._desc_index(pfn))
        if d is None or int(d["offset"][0]) == 0:
            return PageState.MISSING
        return PageState.DUMPED

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        bs = self.block_size
        descs = self._desc(self._desc_index(pfn), count)
        if descs is None:
            raise PageMissingError(pfn, "descriptor beyond end of file")
        out = bytearray()
        for i, (off, size, flags) in enumerate(zip(descs["offset"].tolist(), descs["size"].tolist(), descs["flags"].tolist(), strict=True)):
            out += self._page_data(pfn + i, off, size, flags, bs)
        return bytes(out)

    def _page_data(self, pfn: int, off: int, size: int, flags: int, bs: int) -> bytes:
        if off == 0:
            raise PageMissingError(pfn)
        if off < 0 or size == 0 or size > bs:
            raise CorruptDumpError(f"page {pfn:#x}: descriptor offset {off} size {size} (block size {bs})")
        if off + size > self.src.size:
            if self.incomplete:
                raise PageMissingError(pfn, "data beyond end of file")
            raise TruncatedDumpError(f"data of page {pfn:#x}", self.src.size)
        data = self.src.read(off, size)
        if flags & COMPRESSION_FLAGS == 0 and size != bs:
            raise CorruptDumpError(f"page {pfn:#x}: raw page of {size} bytes (block size {bs})")
        return decompress_page(flags, data, bs)

    # -- runs ---------------------------------------------------------------------
    def ram_runs(self) -> list[tuple[int, int]]:
        if self._ram_cache is None:
            self._ram_cache = bitmap_runs(self._bm1, self.max_mapnr)
        return list(self._ram_cache)

    def dumped_runs(self) -> list[tuple[int, int]]:
        if self._dumped_cache is None:
            if self.bitmap_count == 1:
                both = bitmap_runs(self._bm1, self.max_mapnr)
            else:
                both = _and_runs(self._bm1, self._bm2, self.max_mapnr)
            runs = clip_runs(both, self.start_pfn, self.end_pfn)
            if self.incomplete:
                runs = subtract_runs(runs, self._missing_runs())
            self._dumped_cache = runs
        return list(self._dumped_cache)

    def missing_runs(self) -> list[tuple[int, int]]:
        """Pages with a 2nd-bitmap bit but no data: other pieces' pages of a split set, unwritten ones."""
        runs: list[tuple[int, int]] = []
        if self.split:
            runs = subtract_runs(_and_runs(self._bm1, self._bm2, self.max_mapnr), [(self.start_pfn, self.end_pfn)])
        return merge_runs(runs + (self._missing_runs() if self.incomplete else []))

    def _missing_runs(self) -> list[tuple[int, int]]:
        """Pfn runs whose descriptor is zero or beyond EOF (incomplete dumps only)."""
        bit2 = clip_runs(bitmap_runs(self._bm2, self.max_mapnr), self.start_pfn, self.end_pfn)
        total = sum(e - s for s, e in bit2)
        avail = max(0, min(total, (self.src.size - self._desc_off) // PAGE_DESC.size))
        miss_idx: list[tuple[int, int]] = []
        step = 1 << 20
        for i0 in range(0, avail, step):
            n = min(step, avail - i0)
            d = self._desc(i0, n)
            assert d is not None
            zero = (d["offset"] == 0).view(np.int8)
            dd = np.diff(zero, prepend=np.int8(0), append=np.int8(0))
            for s, e in zip(np.flatnonzero(dd == 1).tolist(), np.flatnonzero(dd == -1).tolist(), strict=True):
                miss_idx.append((i0 + s, i0 + e))
        if avail < total:
            miss_idx.append((avail, total))
        miss_idx = merge_runs(miss_idx)
        # map descriptor-index runs to pfn runs through the 2nd-bitmap runs
        out: list[tuple[int, int]] = []
        idx = 0
        j = 0
        for s, e in bit2:
            i_end = idx + (e - s)
            while j < len(miss_idx) and miss_idx[j][1] <= idx:
                j += 1
            k = j
            while k < len(miss_idx) and miss_idx[k][0] < i_end:
                a = max(miss_idx[k][0], idx)
                b = min(miss_idx[k][1], i_end)
                out.append((s + a - idx, s + b - idx))
                k += 1
            idx = i_end
        return merge_runs(out)

    # -- notes and info -----------------------------------------------------------
    def notes(self) -> list[Note]:
        return list(self._notes)

    def utsname(self) -> dict[str, str]:
        return {f: cstr(self.header[f]) for f in UTS_FIELDS}

    def eraseinfo(self) -> bytes | None:
        sub = self.sub
        if sub is None or self.header_version < 5 or not sub.offset_eraseinfo or not sub.size_eraseinfo:
            return None
        self.src._check(sub.offset_eraseinfo, sub.size_eraseinfo, "eraseinfo")
        return self.src.read(sub.offset_eraseinfo, sub.size_eraseinfo)

    def zero_page_offset(self) -> int | None:
        """Offset of the shared zero page, if the writer used one (first page of the data area)."""
        if self.sub is None or not self.sub.dump_level & 1:
            return None
        total = int(self._cum[-1])
        return int(self._desc_off + total * PAGE_DESC.size)

    def info(self) -> DumpInfo:
        h, sub = self.header, self.sub
        d: dict[str, Any] = {
            "signature": self.signature.decode("ascii", "replace"),
            "header_version": h.header_version,
            "compression": flag_name(h.status),
            "status": h.status,
            "incomplete": self.incomplete,
            "excluded_vmemmap": bool(h.status & FLAG_EXCLUDED_VMEMMAP),
            "block_size": h.block_size,
            "byteorder": self.byteorder,
            "layout": f"{self.header_struct.name}/{self.sub_struct.name}",
            "timestamp": h.tv_sec,
            "nr_cpus": h.nr_cpus,
            "max_mapnr": self.max_mapnr,
            "bitmaps": self.bitmap_count,
            "split": self.split,
            "start_pfn": self.start_pfn,
            "end_pfn": self.end_pfn,
        }
        d.update({f"utsname.{k}": v for k, v in self.utsname().items()})
        if sub is not None:
            d["phys_base"] = sub.phys_base
            d["dump_level"] = sub.dump_level
            if self.header_version >= 5:
                d["eraseinfo_size"] = sub.size_eraseinfo
        return DumpInfo("kdump", d)

    def iter_descs(self) -> Iterator[tuple[int, Record]]:
        """``(pfn, page_desc)`` for each dumped page with a readable descriptor (for verify)."""
        for s, e in self.dumped_runs():
            idx = self._desc_index(s)
            for i in range(e - s):
                off = self._desc_off + (idx + i) * PAGE_DESC.size
                yield s + i, self._desc_struct.unpack(self.src.view(off, PAGE_DESC.size), file_offset=off)

    def close(self) -> None:
        self.src.close()


def _and_runs(a: np.ndarray, b: np.ndarray, nbits: int) -> list[tuple[int, int]]:
    """Runs of bits set in both bitmaps, ANDed in chunks to bound memory."""
    step = 8 << 20
    nbytes = min(len(a), len(b), -(-nbits // 8))
    out: list[tuple[int, int]] = []
    for off in range(0, nbytes, step):
        end = min(off + step, nbytes)
        chunk = np.bitwise_and(a[off:end], b[off:end])
        for s, e in bitmap_runs(chunk, (end - off) * 8):
            s += off * 8
            e += off * 8
            if out and out[-1][1] == s:
                out[-1] = (out[-1][0], e)
            else:
                out.append((s, e))
    return clip_runs(out, 0, nbits)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _plausible_block_size(bs: int) -> bool:
    return 512 <= bs <= (1 << 20) and bs & (bs - 1) == 0


def _inside(off: int, size: int, area: tuple[int, int]) -> bool:
    return area[0] <= off and off + size <= area[1]


# =============================================================================
# Writer
# =============================================================================

BATCH_PAGES = 256  # pages per compression job: 1 MiB of 4 KiB pages amortises IPC and call overhead
# Codecs slow enough for a process pool to pay off.  Measured on 2 cores, 1 GiB synthetic dump
# (see write_kdump): zlib 27.5k -> 47.8k pages/s with 2 processes, but lzo 84k -> 51k and
# zstd 63k -> 31k (pickling 1 MiB batches both ways costs more than compressing them).
# Threads are not used: the zstandard compressor object is not thread-safe (it crashed).
PARALLEL_CODECS = frozenset({"zlib"})


@dataclass
class KdumpLayout:
    """Where everything goes in one output file (computed before any page is read)."""

    page_size: int
    header_struct: Struct
    sub_struct: Struct
    notes_blob: bytes
    offset_vmcoreinfo: int
    size_vmcoreinfo: int
    sub_hdr_size: int
    bitmap_len: int
    max_mapnr: int
    n_desc: int

    @property
    def offset_note(self) -> int:
        return self.page_size + self.sub_struct.size

    @property
    def bitmap_off(self) -> int:
        return (1 + self.sub_hdr_size) * self.page_size

    @property
    def bitmap_blocks(self) -> int:
        return 2 * self.bitmap_len // self.page_size

    @property
    def desc_off(self) -> int:
        return self.bitmap_off + 2 * self.bitmap_len

    @property
    def data_off(self) -> int:
        return self.desc_off + self.n_desc * PAGE_DESC.size


def _notes_blob(notes: list[Note], byteorder: str) -> tuple[bytes, int, int]:
    """Encoded notes and the (offset inside the blob, size) of the VMCOREINFO desc."""
    blob = bytearray()
    vm_off, vm_size = -1, 0
    for n in notes:
        if n.name == "VMCOREINFO" and vm_off < 0:
            namesz = len(n.name.encode("ascii")) + 1
            vm_off = len(blob) + 12 + ((namesz + 3) & ~3)
            vm_size = len(n.desc)
        blob += build_notes([n], byteorder)
    return bytes(blob), vm_off, vm_size


def plan_layout(source: Dump, dumped: list[tuple[int, int]], *, n_desc: int | None = None) -> KdumpLayout:
    """Compute the layout for ``source``; ``dumped`` are the 2nd-bitmap runs."""
    ps = source.page_size
    hs, ss = header_layout(source.arch, source.byteorder)
    blob, vm_off, vm_size = _notes_blob(source.notes(), source.byteorder)
    ram = source.ram_runs()
    max_mapnr = max([source.max_pfn] + [e for _, e in ram[-1:]] + [e for _, e in dumped[-1:]])
    sub_hdr_size = _ceil_div(ss.size + len(blob), ps)
    bitmap_len = max(1, _ceil_div(_ceil_div(max_mapnr, 8), ps)) * ps
    offset_note = ps + ss.size
    return KdumpLayout(
        page_size=ps,
        header_struct=hs,
        sub_struct=ss,
        notes_blob=blob,
        offset_vmcoreinfo=offset_note + vm_off if vm_off >= 0 else 0,
        size_vmcoreinfo=vm_size,
        sub_hdr_size=sub_hdr_size,
        bitmap_len=bitmap_len,
        max_mapnr=max_mapnr,
        n_desc=n_desc if n_desc is not None else runs_count(dumped),
    )


def default_utsname(source: Dump, vmcoreinfo: dict[str, str]) -> dict[str, str]:
    return {"sysname": "Linux", "release": vmcoreinfo.get("OSRELEASE", ""), "machine": source.arch}


def _int_or(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value, 0) if value.lower().startswith(("0x", "-0x")) else int(value)
    except ValueError:
        return default


def encode_batch(codec_name: str | None, page_size: int, data: bytes, share_zero: bool) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """Compress a batch of pages: (blob, sizes, flags, zero mask).

    Module-level so a process pool can run it.  Pages that are all zero get
    size 0 in ``sizes`` when ``share_zero`` (the caller points them at the
    shared zero page); a page whose compressed form is not strictly smaller
    than the page is stored raw (flags 0), as makedumpfile does.
    """
    n = len(data) // page_size
    zero: np.ndarray = np.logical_not(np.frombuffer(data, dtype=np.uint64).reshape(n, page_size // 8).any(axis=1))
    sizes = np.zeros(n, dtype=np.uint32)
    flags = np.zeros(n, dtype=np.uint32)
    if not codec_name:  # raw pages: no per-page work at all
        keep = np.logical_not(zero) if share_zero else np.ones(n, dtype=bool)
        sizes[keep] = page_size
        rows = np.frombuffer(data, dtype=np.uint8).reshape(n, page_size)
        return (bytes(data) if bool(keep.all()) else rows[keep].tobytes()), sizes, flags, zero
    comp = codecs.codec(codec_name)
    data = bytes(data)
    cuts = _page_slices(page_size, n)
    if share_zero and bool(zero.any()):
        idx = np.flatnonzero(np.logical_not(zero))
        cuts = [cuts[i] for i in idx.tolist()]
    else:
        idx = np.arange(n)
    # Pages are bytes slices (python-lzo takes nothing else) and the codec maps its C function over
    # them: no Python frame per page.
    pages = list(map(data.__getitem__, cuts))
    outs = comp.compress_pages(pages)
    lens = np.fromiter(map(len, outs), dtype=np.int64, count=len(outs))
    small = lens < page_size
    if bool(small.all()):
        parts = outs
    else:
        parts = [o if ok else p for o, p, ok in zip(outs, pages, small.tolist(), strict=True)]
    sizes[idx] = np.where(small, lens, page_size)
    flags[idx] = np.where(small, comp.flag, 0)
    return b"".join(parts), sizes, flags, zero


@dataclass(frozen=True)
class Extent:
    """Raw pages still in the source file: the writer copies them in the kernel (``Sink.copy_from``)."""

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length


RAW_BATCH_PAGES = 1024  # 4 MiB per copy_file_range call


def _raw_pages(source: Dump, runs: list[tuple[int, int]]
               ) -> Iterator[tuple[int, int, tuple[Extent | bytes, np.ndarray, np.ndarray, np.ndarray]]]:
    """Uncompressed pages with no zero-page sharing: nothing to look at, so nothing is read.

    Each batch is an :class:`Extent` where the source keeps the pages raw in
    a file, else its bytes; zero pages are not counted (they are not sought).
    """
    ps = source.page_size
    for pfn, n in _batch_ranges(runs, RAW_BATCH_PAGES):
        ext = source.file_extent(pfn, n)
        blob: Extent | bytes = Extent(ext[0], ext[1], n * ps) if ext else bytes(source._read_dumped(pfn, n))
        yield pfn, n, (blob, np.full(n, ps, dtype=np.uint32), np.zeros(n, dtype=np.uint32), np.zeros(n, dtype=bool))


_SLICES: dict[int, list[slice]] = {}


def _page_slices(page_size: int, n: int) -> list[slice]:
    """``slice`` objects of the first ``n`` pages of a batch (made once per page size)."""
    cached = _SLICES.get(page_size)
    if cached is None or len(cached) < n:
        cached = _SLICES[page_size] = [slice(i * page_size, (i + 1) * page_size) for i in range(max(n, 1024))]
    return cached[:n]


def _batches(source: Dump, runs: list[tuple[int, int]], batch: int) -> Iterator[tuple[int, int, bytes]]:
    for s, e in runs:
        for pfn in range(s, e, batch):
            n = min(batch, e - pfn)
            yield pfn, n, bytes(source._read_dumped(pfn, n))


_worker_dumps: dict[tuple[str, str], Dump] = {}


def _encode_from_file(spec: tuple[str, str], pfn: int, n: int, codec_name: str | None, page_size: int,
                      share_zero: bool) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray] | None:
    """Worker side: read the batch from the source file itself, then encode it.

    None when the read fails, so the parent reads that batch through its own
    layers (which may turn read errors into recorded missing pages).
    """
    from kdumpkit.dump.detect import open_dump
    from kdumpkit.errors import KdumpkitError

    try:
        dump = _worker_dumps.get(spec)
        if dump is None:
            dump = _worker_dumps[spec] = open_dump(spec[0], format=spec[1], use_mmap=False)
        data = bytes(dump._read_dumped(pfn, n))
    except (KdumpkitError, OSError):
        return None
    return encode_batch(codec_name, page_size, data, share_zero)


def _batch_ranges(runs: list[tuple[int, int]], batch: int) -> Iterator[tuple[int, int]]:
    for s, e in runs:
        for pfn in range(s, e, batch):
            yield pfn, min(batch, e - pfn)


def _encoded(
    source: Dump, runs: list[tuple[int, int]], codec_name: str | None, share_zero: bool, workers: int
) -> Iterator[tuple[int, int, tuple[bytes, np.ndarray, np.ndarray, np.ndarray]]]:
    """Encoded batches in pfn order; with workers > 1 a bounded number in flight.

    When the source can be reopened by path (``Dump.reopen_spec``), each worker
    process reads its own batches from the file and only compressed output
    comes back, so every codec scales.  Otherwise pages are shipped to the pool,
    which pays off only for the slow codecs (:data:`PARALLEL_CODECS`).
    """
    ps = source.page_size
    if codec_name is None and not share_zero:
        yield from _raw_pages(source, runs)  # type: ignore[misc]
        return
    spec = source.reopen_spec() if workers > 1 else None
    if workers <= 1 or (spec is None and codec_name not in PARALLEL_CODECS):
        for pfn, n, data in _batches(source, runs, BATCH_PAGES):
            yield pfn, n, encode_batch(codec_name, ps, data, share_zero)
        return
    import multiprocessing

    Result = tuple[bytes, np.ndarray, np.ndarray, np.ndarray]
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    inflight: collections.deque[tuple[int, int, concurrent.futures.Future[Result | None]]] = collections.deque()

    def submit(pfn: int, n: int) -> concurrent.futures.Future[Result | None]:
        if spec is not None:
            return pool.submit(_encode_from_file, spec, pfn, n, codec_name, ps, share_zero)
        return pool.submit(encode_batch, codec_name, ps, bytes(source._read_dumped(pfn, n)), share_zero)

    def done(p: int, k: int, fut: concurrent.futures.Future[Result | None]) -> Result:
        res = fut.result()
        if res is None:  # the worker could not read it: read through our own layers
            res = encode_batch(codec_name, ps, bytes(source._read_dumped(p, k)), share_zero)
        return res

    try:
        for pfn, n in _batch_ranges(runs, BATCH_PAGES):
            inflight.append((pfn, n, submit(pfn, n)))
            if len(inflight) >= 4 * workers:
                p, k, fut = inflight.popleft()
                yield p, k, done(p, k, fut)
        while inflight:
            p, k, fut = inflight.popleft()
            yield p, k, done(p, k, fut)
    finally:
        for _, _, fut in inflight:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def write_kdump(
    source: Dump,
    sink: Sink,
    *,
    codec: str | None = "zlib",
    exclude_zero: bool = False,
    dump_level: int = 0,
    utsname: dict[str, str] | None = None,
    phys_base: int | None = None,
    pfn_range: tuple[int, int] | None = None,
    progress: Progress | None = None,
    workers: int = 1,
) -> WriteStats:
    """Write ``source`` as a kdump-compressed file the way makedumpfile does.

    ``codec`` is zlib, lzo, snappy, zstd or None (raw pages); ``exclude_zero``
    (or ``dump_level`` bit 1) stores all-zero pages once and points their
    descriptors at that copy.  ``pfn_range`` dumps only ``[start, end)`` (the
    other pages read as excluded).  The header first goes out with the
    INCOMPLETE flag, and is rewritten without it only after the last page:
    a writer killed midway leaves a file whose unwritten pages read as
    MISSING.  ``workers > 1`` compresses 256-page batches in a process pool,
    keeping at most ``4 * workers`` batches in flight: for any codec when the
    source can be reopened by path (workers read pages themselves), otherwise
    only for the codecs in :data:`PARALLEL_CODECS`.
    """
    dumped = source.dumped_runs()
    missing = source.missing_runs()
    if pfn_range is not None:
        dumped = clip_runs(dumped, *pfn_range)
        missing = clip_runs(missing, *pfn_range)
    return write_kdump_piece(
        source,
        sink,
        dumped=dumped,
        missing=missing,
        piece=None,
        codec=codec,
        exclude_zero=exclude_zero,
        dump_level=dump_level,
        utsname=utsname,
        phys_base=phys_base,
        progress=progress,
        workers=workers,
    )


def write_kdump_piece(
    source: Dump,
    sink: Sink,
    *,
    dumped: list[tuple[int, int]],
    piece: tuple[int, int] | None,
    missing: list[tuple[int, int]] | None = None,
    codec: str | None = "zlib",
    exclude_zero: bool = False,
    dump_level: int = 0,
    utsname: dict[str, str] | None = None,
    phys_base: int | None = None,
    progress: Progress | None = None,
    workers: int = 1,
) -> WriteStats:
    """Write one file; ``piece`` = ``(start, end)`` makes it a ``--split`` piece.

    A split piece keeps the full bitmaps and a descriptor array sized for all
    dumped pages, but writes descriptors and data only for its own pfns,
    starting at descriptor 0 (makedumpfile's layout; crash counts from
    ``start_pfn``).  ``missing`` pages keep their 2nd-bitmap bit with an
    empty descriptor under the INCOMPLETE flag: what makedumpfile leaves for
    pages it never wrote, and what readers report as missing, not excluded.
    """
    if codec is not None:
        codecs.codec(codec)  # fail early on a codec we cannot load
    share_zero = exclude_zero or bool(dump_level & 1)
    if share_zero:
        dump_level |= 1
    ps = source.page_size
    missing = missing or []
    listed = merge_runs(dumped + missing)  # the 2nd bitmap
    layout = plan_layout(source, listed)
    own = clip_runs(dumped, *piece) if piece is not None else dumped
    own_missing = clip_runs(missing, *piece) if piece is not None else missing
    vmci = parse_vmcoreinfo_min(source.vmcoreinfo_raw())
    uts = default_utsname(source, vmci)
    uts.update(utsname or {})
    if phys_base is None:
        phys_base = _int_or(vmci.get("NUMBER(phys_base)"), 0)
    flag = codecs.codec(codec).flag if codec else 0
    start_pfn, end_pfn = piece if piece is not None else (0, 0)
    header = {
        "signature": SIG_KDUMP,
        "header_version": HEADER_VERSION,
        **{f: uts.get(f, "").encode("utf-8")[:64] for f in UTS_FIELDS},
        "tv_sec": _int_or(vmci.get("CRASHTIME"), 0),
        "tv_usec": 0,
        "status": flag | FLAG_INCOMPLETE,
        "block_size": ps,
        "sub_hdr_size": layout.sub_hdr_size,
        "bitmap_blocks": layout.bitmap_blocks,
        "max_mapnr": min(layout.max_mapnr, 0xFFFFFFFF),
        "nr_cpus": len(source.prstatus_notes()),
    }
    word_mask = 0xFFFFFFFF if layout.sub_struct.size < KDUMP_SUB_HEADER_64.size else 0xFFFFFFFFFFFFFFFF
    sub = {
        "phys_base": phys_base & word_mask,
        "dump_level": dump_level,
        "split": 1 if piece is not None else 0,
        "start_pfn": start_pfn & word_mask,
        "end_pfn": end_pfn & word_mask,
        "offset_vmcoreinfo": layout.offset_vmcoreinfo,
        "size_vmcoreinfo": layout.size_vmcoreinfo,
        "offset_note": layout.offset_note if layout.notes_blob else 0,
        "size_note": len(layout.notes_blob),
        "start_pfn_64": start_pfn,
        "end_pfn_64": end_pfn,
        "max_mapnr_64": layout.max_mapnr,
    }
    hs = layout.header_struct
    sink.pwrite(0, hs.pack(header))
    sink.pwrite(ps, layout.sub_struct.pack(sub) + layout.notes_blob)
    for runs, off in ((source.ram_runs(), layout.bitmap_off), (listed, layout.bitmap_off + layout.bitmap_len)):
        bm = np.zeros(layout.bitmap_len, dtype=np.uint8)
        set_bitmap_runs(bm, clip_runs(runs, 0, layout.max_mapnr))
        for o in range(0, layout.bitmap_len, 8 << 20):
            sink.pwrite(off + o, bm[o:o + (8 << 20)].tobytes())

    desc_dtype = np_dtype(PAGE_DESC.with_byteorder(hs.byteorder))
    cur = layout.data_off
    zero_off = cur
    if share_zero:
        sink.pwrite(cur, bytes(ps))
        cur += ps
    total = runs_count(own)
    done = zero_pages = 0
    idx = mi = 0
    for _pfn, n, (blob, sizes, flags, zero) in _encoded(source, own, codec, share_zero, workers):
        while mi < len(own_missing) and own_missing[mi][0] < _pfn:  # their descriptors stay zero
            idx += own_missing[mi][1] - own_missing[mi][0]
            mi += 1
        descs = np.zeros(n, dtype=desc_dtype)
        ends = np.cumsum(sizes, dtype=np.int64)
        descs["offset"] = cur + ends - sizes
        descs["size"] = sizes
        descs["flags"] = flags
        if share_zero:
            descs["offset"][zero] = zero_off
            descs["size"][zero] = ps
            descs["flags"][zero] = 0
        zero_pages += int(zero.sum())
        if isinstance(blob, Extent):
            if not sink.copy_from(blob.fd, blob.offset, cur, blob.length):
                sink.pwrite(cur, source._read_dumped(_pfn, n))
        elif blob:
            sink.pwrite(cur, blob)
        sink.pwrite(layout.desc_off + idx * PAGE_DESC.size, descs.tobytes())
        cur += len(blob)
        idx += n
        done += n
        if progress is not None:
            progress(done, total)
    # Complete now — unless the source itself lacks pages: those are not "excluded".
    header["status"] = flag | (FLAG_INCOMPLETE if source.incomplete or missing else 0)
    sink.pwrite(0, hs.pack(header))
    ram = runs_count(source.ram_runs())
    return WriteStats(
        format="kdump",
        pages_written=done,
        zero_pages=zero_pages,
        excluded_pages=max(ram - runs_count(listed), 0),
        bytes_written=cur,
        compression=codec or "none",
        extra={"missing_pages": runs_count(missing), "shared_zero": share_zero, "dump_level": dump_level, "split": piece,
               "workers": workers if (codec in PARALLEL_CODECS or source.reopen_spec()) else 1},
    )
