"""LKCD dumps (Linux Kernel Crash Dump, versions 8 and 9): reading and writing.

Layout (crash ``lkcd_dump_v8.h``/``lkcd_v8.c``/``lkcd_common.c``, libkdumpfile
``src/kdumpfile/lkcd.c`` ``struct dump_header_v8`` and ``struct dump_page``;
summarised in the shared reference formats.md §8.2):

* a packed ``dump_header_v8`` at offset 0, in the dump's byte order (the magic
  0xa8190173618f23ed tells which); ``dh_version & 0xf`` is the version, v9
  adds ``dh_dump_buffer_size``;
* an arch header (``dump_header_asm``, magic 0xdeaddead) at ``dh_header_size``;
* page records from offset 65536 (v8) or ``dh_dump_buffer_size`` (v9): a
  16-byte ``dump_page`` {address u64, size u32, flags u32} then ``size``
  bytes — RAW (exactly one page; 0 bytes = a zero page), COMPRESSED (RLE or
  zlib per ``dh_dump_compress``), and a final record flagged END.

Records are sequential with no index, so the reader builds one in a single
scan (NumPy arrays of pfn, offset, size, flags — 20 bytes a page).  LKCD has
no notes and cannot say "excluded": RAM is what the dump holds.  A file
without the END record was cut short and is flagged incomplete; the page of a
record cut short is MISSING.  LKCD cannot list missing pages, so ``convert``
refuses an input with missing pages to LKCD (:mod:`kdumpkit.dump.missing`).
"""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np

from kdumpkit.dump.base import NT_PRSTATUS, Buffer, Dump, DumpInfo, Note, PageState, merge_runs, subtract_runs
from kdumpkit.dump.elfnotes import PRSTATUS_REG_OFFSET_X86_64, X86_64_USER_REGS, x86_64_prstatus
from kdumpkit.dump.fileio import ByteSource
from kdumpkit.dump.sink import Sink
from kdumpkit.dump.writer import Progress, WriteStats
from kdumpkit.errors import CorruptDumpError, NotADumpError, UnsupportedError, UsageError
from kdumpkit.structs import Struct, cstr

DUMP_MAGIC = 0xA8190173618F23ED
DUMP_MAGIC_LIVE = 0xA8190173618F23CD
DUMP_ASM_MAGIC = 0xDEADDEAD
DUMP_ASM_VERSION = 5
DUMP_ASM_VERSION_X86_64 = 2  # crash's lkcd_dump_v8.h for x86_64
OFFSET_TO_FIRST_PAGE = 65536  # LKCD_OFFSET_TO_FIRST_PAGE (≤ v8)
DUMP_RAW, DUMP_COMPRESSED, DUMP_END = 0x1, 0x2, 0x4
COMPRESS_NONE, COMPRESS_RLE, COMPRESS_GZIP = 0, 1, 2
COMPRESS_NAMES = {COMPRESS_NONE: "none", COMPRESS_RLE: "rle", COMPRESS_GZIP: "gzip"}
UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")
DUMP_LEVEL_ALL = 0x10  # LKCD's "dump all memory" level (we always write what the source holds)

_HEADER_V8_FIELDS = [
    ("magic", "Q"), ("version", "I"), ("header_size", "I"), ("dump_level", "I"), ("page_size", "I"),
    ("memory_size", "Q"), ("memory_start", "Q"), ("memory_end", "Q"), ("num_pages", "I"),
    ("panic_string", "256s"), ("time_sec", "Q"), ("time_usec", "Q"), ("utsname", "390s"),
    ("current_task", "Q"), ("dump_compress", "I"), ("dump_flags", "I"), ("dump_device", "I"),
]
HEADER_V8 = Struct("dump_header_v8", _HEADER_V8_FIELDS)
HEADER_V9 = Struct("dump_header_v9", [*_HEADER_V8_FIELDS, ("dump_buffer_size", "Q")])
PAGE_REC = Struct("dump_page", [("address", "Q"), ("size", "I"), ("flags", "I")])
# The generic start of dump_header_asm; the registers after it are arch-specific
# (x86_64: struct pt_regs, 21 u64, r15 … ss).
ASM_HEADER = Struct("dump_header_asm", [("magic", "Q"), ("version", "I"), ("header_size", "I")])
PT_REGS_X86_64 = X86_64_USER_REGS[:21]  # struct pt_regs: the start of user_regs_struct
PT_REGS_SIZE = 8 * len(PT_REGS_X86_64)
CPU_INFO_SIZE = PT_REGS_SIZE + 24  # dump_CPU_info_t: pt_regs, current task, stack, stack pointer


def rle_decode(data: bytes, limit: int) -> bytes:
    """LKCD's RLE (crash ``lkcd_uncompress_RLE``): ``00 00`` = one zero, ``00 n v`` = n+1 × v."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        i += 1
        if c:
            out.append(c)
        else:
            if i >= n:
                raise CorruptDumpError("RLE stream ends inside an escape")
            count = data[i]
            i += 1
            if count == 0:
                out.append(0)
            else:
                if i >= n:
                    raise CorruptDumpError("RLE stream ends inside a run")
                out += bytes([data[i]]) * (count + 1)
                i += 1
        if len(out) > limit:
            raise CorruptDumpError(f"RLE page decodes to more than {limit} bytes")
    return bytes(out)


def rle_encode(page: bytes) -> bytes:
    """The inverse of :func:`rle_decode`: runs of 3+ equal bytes (or 2+ zeros) become ``00 n v``."""
    arr = np.frombuffer(page, dtype=np.uint8)
    if not len(arr):
        return b""
    cuts = np.flatnonzero(np.diff(arr)) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(arr)]))
    out = bytearray()
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        v = page[s]
        length = e - s
        while length:
            run = min(length, 256)
            if v == 0 and run == 1:
                out += b"\0\0"
            elif run >= 3 or (v == 0 and run == 2):
                out += bytes((0, run - 1, v))
            else:
                out += bytes([v]) * run
            length -= run
    return bytes(out)


class LkcdDump(Dump):
    """An LKCD v8/v9 dump (either byte order) seen as physical memory."""

    format_name = "lkcd"

    @classmethod
    def probe(cls, src: ByteSource) -> bool:
        if src.size < 8:
            return False
        head = src.read(0, 8)
        return any(int.from_bytes(head, bo) in (DUMP_MAGIC, DUMP_MAGIC_LIVE) for bo in ("little", "big"))

    def __init__(self, src: ByteSource) -> None:
        if not self.probe(src):
            raise NotADumpError(f"{src.name}: no LKCD magic")
        self.src = src
        self.path = src.name
        head = src.read(0, 8)
        self.byteorder = "little" if int.from_bytes(head, "little") in (DUMP_MAGIC, DUMP_MAGIC_LIVE) else "big"
        bo = "<" if self.byteorder == "little" else ">"
        ver = HEADER_V8.with_byteorder(bo).unpack(src.read(0, min(HEADER_V8.size, src.size)), file_offset=0).version
        self.version = ver & 0xF
        if self.version not in (8, 9):
            raise UnsupportedError(f"LKCD version {self.version} (only v8 and v9 are read)")
        hs = (HEADER_V9 if self.version == 9 else HEADER_V8).with_byteorder(bo)
        h = hs.unpack(src.read(0, min(hs.size, src.size)), file_offset=0)
        self.header = h
        ps = h.page_size
        if ps < 512 or ps > 1 << 20 or ps & (ps - 1):
            raise CorruptDumpError(f"LKCD page size {ps}")
        self.page_size = ps
        if h.dump_compress not in COMPRESS_NAMES:
            raise UnsupportedError(f"LKCD compression {h.dump_compress}")
        self.compression = h.dump_compress
        self.uts = {f: cstr(h.utsname[i * 65:(i + 1) * 65]) for i, f in enumerate(UTS_FIELDS)}
        self.arch = self.uts["machine"] or "x86_64"
        self.live = DUMP_MAGIC_LIVE in (int.from_bytes(head, "little"), int.from_bytes(head, "big"))
        self.data_offset = h.dump_buffer_size if self.version == 9 else OFFSET_TO_FIRST_PAGE
        if self.data_offset < hs.size:
            raise CorruptDumpError(f"LKCD page data at {self.data_offset}, inside the header")
        self.asm_regs = self._read_asm_header(h.header_size, bo)
        self._scan(bo)

    def _read_asm_header(self, off: int, bo: str) -> dict[str, int]:
        """Registers from the arch header, when it is there and x86_64-shaped (else empty).

        Also fills ``cpu_regs``: each CPU's registers when the header has
        crash's full x86_64 layout (``x86_64_asm_header``), whose CPU count
        crash derives from the header size.
        """
        self.cpu_regs: list[dict[str, int]] = []
        a = ASM_HEADER.with_byteorder(bo)
        if off + a.size > min(self.src.size, self.data_offset):
            return {}
        asm = a.unpack(self.src.read(off, a.size))
        if asm.magic != DUMP_ASM_MAGIC or self.arch != "x86_64" or asm.header_size < a.size + PT_REGS_SIZE \
                or off + min(asm.header_size, self.data_offset) > self.src.size:
            return {}

        def regs(at: int) -> dict[str, int]:
            vals = np.frombuffer(self.src.read(at, PT_REGS_SIZE), dtype=f"{bo}u8")
            return dict(zip(PT_REGS_X86_64, (int(v) for v in vals), strict=True))

        per_cpu = a.size + PT_REGS_SIZE + 8
        ncpus = (asm.header_size - per_cpu) // CPU_INFO_SIZE if asm.header_size >= per_cpu else 0
        if 0 < ncpus <= 8192 and off + asm.header_size <= self.data_offset:
            self.cpu_regs = [regs(off + per_cpu + i * PT_REGS_SIZE) for i in range(ncpus)]
        return regs(off + a.size)

    def _scan(self, bo: str) -> None:
        """One pass over the page records: the index, and whether the END record is there."""
        src = self.src
        rec = PAGE_REC.with_byteorder(bo)
        ps = self.page_size
        pfns: list[int] = []
        offs: list[int] = []
        sizes: list[int] = []
        flags: list[int] = []
        off = self.data_offset
        self.ended = False
        self._missing: list[tuple[int, int]] = []
        while off + rec.size <= src.size:
            r = rec.unpack(src.read(off, rec.size))
            if r.flags & DUMP_END:
                self.ended = True
                break
            if not r.flags & (DUMP_RAW | DUMP_COMPRESSED):
                raise CorruptDumpError(f"LKCD page record at offset {off}: flags {r.flags:#x}")
            if r.size > ps or (r.flags & DUMP_RAW and r.size not in (0, ps)):
                raise CorruptDumpError(f"LKCD page record at offset {off}: size {r.size} for a {ps}-byte page")
            if off + rec.size + r.size > src.size:
                self._missing = [(r.address // ps, r.address // ps + 1)]
                break
            pfns.append(r.address // ps)
            offs.append(off + rec.size)
            sizes.append(r.size)
            flags.append(r.flags)
            off += rec.size + r.size
        self.end_offset = off
        pfn_arr = np.array(pfns, dtype=np.uint64)
        order = np.argsort(pfn_arr, kind="stable")
        self._pfns = pfn_arr[order]
        if len(self._pfns) > 1 and np.any(self._pfns[1:] == self._pfns[:-1]):
            dup = int(self._pfns[1:][self._pfns[1:] == self._pfns[:-1]][0])
            raise CorruptDumpError(f"LKCD page {dup:#x} appears twice")
        self._offs = np.array(offs, dtype=np.uint64)[order]
        self._sizes = np.array(sizes, dtype=np.uint32)[order]
        self._flags = np.array(flags, dtype=np.uint32)[order]
        if len(self._pfns):
            p = self._pfns.astype(np.int64)
            cuts = np.flatnonzero(np.diff(p) != 1) + 1
            starts = np.concatenate(([0], cuts))
            ends = np.concatenate((cuts, [len(p)]))
            self._runs = [(int(p[s]), int(p[e - 1]) + 1) for s, e in zip(starts, ends, strict=True)]
        else:
            self._runs = []
        self._missing = subtract_runs(self._missing, self._runs)
        self._ram = merge_runs(self._runs + self._missing)
        self.max_pfn = self._ram[-1][1] if self._ram else 0
        self.incomplete = not self.ended or not getattr(src, "complete", True)

    # -- Dump primitives --------------------------------------------------------
    def ram_runs(self) -> list[tuple[int, int]]:
        return list(self._ram)

    def dumped_runs(self) -> list[tuple[int, int]]:
        return list(self._runs)

    def missing_runs(self) -> list[tuple[int, int]]:
        return list(self._missing)

    def _index(self, pfn: int) -> int | None:
        if pfn < 0:
            return None
        i = int(np.searchsorted(self._pfns, np.uint64(pfn)))
        return i if i < len(self._pfns) and int(self._pfns[i]) == pfn else None

    def page_state(self, pfn: int) -> PageState:
        if self._index(pfn) is not None:
            return PageState.DUMPED
        return PageState.MISSING if any(s <= pfn < e for s, e in self._missing) else PageState.NOT_RAM

    def _page(self, i: int) -> bytes:
        ps = self.page_size
        size = int(self._sizes[i])
        off = int(self._offs[i])
        if int(self._flags[i]) & DUMP_RAW or (size == ps and self.compression == COMPRESS_NONE):
            return self.src.read(off, ps) if size else bytes(ps)
        data = self.src.read(off, size)
        if self.compression == COMPRESS_RLE:
            page = rle_decode(data, ps)
        elif self.compression == COMPRESS_GZIP:
            try:
                d = zlib.decompressobj()
                page = d.decompress(data, ps + 1)
            except zlib.error as e:
                raise CorruptDumpError(f"LKCD page at offset {off}: zlib: {e}") from None
        else:
            raise CorruptDumpError(f"LKCD page at offset {off} is compressed in an uncompressed dump")
        if len(page) != ps:
            raise CorruptDumpError(f"LKCD page at offset {off} decompresses to {len(page)} bytes, not {ps}")
        return page

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        out = bytearray()
        for q in range(pfn, pfn + count):
            i = self._index(q)
            if i is None:
                raise CorruptDumpError(f"pfn {q:#x} has no data")
            out += self._page(i)
        return bytes(out)

    def notes(self) -> list[Note]:
        """LKCD has no notes; the arch header's per-CPU registers become NT_PRSTATUS (pid unknown: 0)."""
        return [x86_64_prstatus(r) for r in self.cpu_regs]

    def utsname(self) -> dict[str, str]:
        return dict(self.uts)

    def info(self) -> DumpInfo:
        h = self.header
        return DumpInfo("lkcd", {
            "lkcd_version": self.version,
            "compression": COMPRESS_NAMES[self.compression],
            "byteorder": self.byteorder,
            "live": self.live,
            "panic_string": cstr(h.panic_string),
            "dump_time": h.time_sec,
            "release": self.uts["release"],
            "current_task": hex(h.current_task),
            "dump_level": h.dump_level,
            "pages_in_header": h.num_pages,
            "pages_found": len(self._pfns),
            "end_record": self.ended,
            "registers": {k: hex(v) for k, v in self.asm_regs.items() if k in ("rip", "rsp")} or None,
        })

    def close(self) -> None:
        self.src.close()


def _prstatus_regs(source: Dump) -> list[bytes]:
    """Each CPU's pt_regs from its NT_PRSTATUS note (x86_64), in note order; one zeroed set if none."""
    end = PRSTATUS_REG_OFFSET_X86_64 + PT_REGS_SIZE
    regs = [n.desc[PRSTATUS_REG_OFFSET_X86_64:end] for n in source.notes()
            if n.type == NT_PRSTATUS and n.name == "CORE" and len(n.desc) >= end]
    return regs or [bytes(PT_REGS_SIZE)]


def x86_64_asm_header(regs: list[bytes], dumping_cpu: int = 0) -> bytes:
    """crash's x86_64 ``dump_header_asm_t`` (``lkcd_dump_v8.h``), sized for ``len(regs)`` CPUs.

    magic, version 2, header size, the dumping CPU's ``pt_regs``, the CPU
    count and the dumping CPU, then per CPU arrays: ``pt_regs``, current
    task, stack, stack pointer (the last three unknown to a kdump: 0).
    crash derives the CPU count from the header size, so it must be exact.
    """
    n = len(regs)
    tail = struct.pack(f"<Ii{n * 3}Q", n, dumping_cpu, *([0] * (n * 3)))
    body = regs[dumping_cpu] + tail[:8] + b"".join(regs) + tail[8:]
    return ASM_HEADER.pack(magic=DUMP_ASM_MAGIC, version=DUMP_ASM_VERSION_X86_64,
                           header_size=ASM_HEADER.size + len(body)) + body


def write_lkcd(source: Dump, sink: Sink, *, version: int = 8, compression: str = "gzip",
               exclude_zero: bool = False, utsname: dict[str, str] | None = None, panic_string: str = "",
               progress: Progress | None = None, batch: int = 256) -> WriteStats:
    """Write the dumped pages of ``source`` as an LKCD v8/v9 dump.

    Pages that do not shrink are stored RAW; with ``exclude_zero`` all-zero
    pages are left out (LKCD cannot mark them, so they read as not RAM).
    Notes are dropped, apart from the first CPU's registers, which go into the
    x86_64 arch header.  An incomplete source gets no END record, so readers
    see the dump as cut short rather than complete.
    """
    if version not in (8, 9):
        raise UsageError(f"LKCD version must be 8 or 9, not {version}")
    codes = {v: k for k, v in COMPRESS_NAMES.items()}
    if compression not in codes:
        raise UsageError(f"LKCD compression must be one of {', '.join(codes)}")
    if source.byteorder != "little":
        raise UnsupportedError("writing big-endian LKCD dumps")
    code = codes[compression]
    ps = source.page_size
    hs = HEADER_V9 if version == 9 else HEADER_V8
    ram = source.ram_runs()
    uts = {f: "" for f in UTS_FIELDS} | {"sysname": "Linux", "machine": source.arch} | dict(utsname or {})
    uts_raw = b"".join(uts.get(f, "").encode()[:64].ljust(65, b"\0") for f in UTS_FIELDS)
    if source.arch == "x86_64":
        asm = x86_64_asm_header(_prstatus_regs(source))
    else:
        asm = ASM_HEADER.pack(magic=DUMP_ASM_MAGIC, version=DUMP_ASM_VERSION, header_size=ASM_HEADER.size)
    if hs.size + len(asm) > OFFSET_TO_FIRST_PAGE:
        raise UnsupportedError(f"LKCD headers for {len(_prstatus_regs(source))} CPUs do not fit before the pages")
    zero = bytes(ps)
    off = OFFSET_TO_FIRST_PAGE
    written = zeros = done = 0
    total = sum(e - s for s, e in source.dumped_runs())
    for start, end in source.dumped_runs():
        for pfn in range(start, end, batch):
            n = min(batch, end - pfn)
            data = bytes(source._read_dumped(pfn, n))
            for i in range(n):
                page = data[i * ps:(i + 1) * ps]
                if page == zero:
                    zeros += 1
                    if exclude_zero:
                        continue
                if code == COMPRESS_GZIP:
                    packed = zlib.compress(page, 1)
                elif code == COMPRESS_RLE:
                    packed = rle_encode(page)
                else:
                    packed = page
                if len(packed) < ps:
                    rec = PAGE_REC.pack(address=(pfn + i) * ps, size=len(packed), flags=DUMP_COMPRESSED)
                else:
                    packed = page
                    rec = PAGE_REC.pack(address=(pfn + i) * ps, size=ps, flags=DUMP_RAW)
                sink.pwrite(off, rec + packed)
                off += len(rec) + len(packed)
                written += 1
            done += n
            if progress:
                progress(done, total)
    if not source.incomplete and not source.missing_runs():
        sink.pwrite(off, PAGE_REC.pack(address=0, size=0, flags=DUMP_END))
        off += PAGE_REC.size
    mem_start = ram[0][0] * ps if ram else 0
    mem_end = ram[-1][1] * ps if ram else 0
    now = time.time()
    header = hs.pack(magic=DUMP_MAGIC, version=version, header_size=hs.size, dump_level=DUMP_LEVEL_ALL,
                     page_size=ps, memory_size=sum(e - s for s, e in ram), memory_start=mem_start,
                     memory_end=mem_end, num_pages=written, panic_string=panic_string.encode()[:255],
                     time_sec=int(now), time_usec=int(now % 1 * 1e6), utsname=uts_raw, dump_compress=code,
                     dump_buffer_size=OFFSET_TO_FIRST_PAGE)
    sink.pwrite(0, header)
    sink.pwrite(hs.size, asm)
    extra: dict[str, object] = {"notes_dropped": len(source.notes())}
    hint = crash_options(source)
    if hint:
        extra["crash_options"] = hint
    return WriteStats("lkcd", pages_written=written, zero_pages=zeros if exclude_zero else 0,
                      excluded_pages=sum(e - s for s, e in ram) - total, bytes_written=off,
                      compression=compression, extra=extra)


def crash_options(source: Dump) -> str:
    """What crash needs to open the LKCD copy of ``source``: LKCD has no VMCOREINFO.

    Without it crash knows neither the KASLR offset nor x86_64's phys_base
    and says "cannot determine base kernel version"; both are in the
    source's VMCOREINFO, so the converter hands them on as options
    (``--kaslr=OFFSET -m phys_base=ADDR``).  Empty when the source has none.
    """
    from kdumpkit.dump.kdump import parse_vmcoreinfo_min

    info = parse_vmcoreinfo_min(source.vmcoreinfo_raw())
    opts = []
    if info.get("KERNELOFFSET"):
        opts.append(f"--kaslr=0x{info['KERNELOFFSET']}")
    phys_base = info.get("NUMBER(phys_base)")
    if phys_base and source.arch == "x86_64":
        opts.append(f"-m phys_base={int(phys_base, 0) & (2**64 - 1):#x}")
    return " ".join(opts)
