"""ELF core dumps: ``/proc/vmcore``, ``makedumpfile -E``, QEMU ``dump-guest-memory``.

Reading follows what the kernel and crash do: PT_NOTE segments carry the
notes, PT_LOAD segments map physical addresses (``p_paddr``) to file offsets.
Pages in ``[p_filesz, p_memsz)`` are RAM that was excluded; segments may
overlap (the kernel text appears twice in a vmcore); a file cut short leaves
its last pages MISSING and the dump flagged incomplete, never silently
shorter.

Writing produces what crash recognises as a kdump ELF (PT_NOTE first, then
PT_LOADs with ``p_align = 0``): one PT_LOAD per run of dumped pages, whose
``p_memsz`` extends over the excluded pages that follow it, so RAM, excluded
pages and holes all survive a round trip.
"""

from __future__ import annotations

import numpy as np

from kdumpkit.dump.base import Dump, DumpInfo, Note, merge_runs, subtract_runs
from kdumpkit.dump.elfnotes import build_notes, parse_notes
from kdumpkit.dump.fileio import ByteSource
from kdumpkit.dump.segments import Segment, SegmentDump
from kdumpkit.dump.sink import Sink
from kdumpkit.dump.writer import Progress, WriteStats
from kdumpkit.errors import CorruptDumpError, NotADumpError, UnsupportedError, UsageError
from kdumpkit.structs import Struct

ELFMAG = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
ET_CORE = 4
EV_CURRENT = 1
PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
DUMP_ELF_INCOMPLETE = 0x1  # makedumpfile's e_flags bit
PF_RWX = 7

EM_ARCH = {3: "i686", 62: "x86_64", 183: "aarch64", 21: "ppc64", 22: "s390x", 243: "riscv64", 40: "arm", 8: "mips"}
ARCH_EM = {v: k for k, v in EM_ARCH.items()} | {"i386": 3, "x86": 3, "ppc64le": 21}
DEFAULT_PAGE_SIZE = {"ppc64": 65536}
#: Physical address bits (MAXPHYSADDR): x86_64 and arm64 (LPA) reach 52, RISC-V Sv57 56; the
#: others less.  A RAM map above this is a corrupt header, whatever its segments say.
MAX_PHYS_BITS = {"riscv64": 56}
DEFAULT_MAX_PHYS_BITS = 52


def max_phys_addr(arch: str) -> int:
    """The end of the physical address space of ``arch``: no RAM lies at or above it."""
    return 1 << MAX_PHYS_BITS.get(arch, DEFAULT_MAX_PHYS_BITS)

# -- declared structures (one declaration for reading and writing) ---------------
EHDR_IDENT = Struct("e_ident", [("magic", "4s"), ("ei_class", "B"), ("ei_data", "B"), ("ei_version", "B"),
                                ("ei_osabi", "B"), ("ei_abiversion", "B"), ("_pad", "7x")])
_EHDR_TAIL = [("e_type", "H"), ("e_machine", "H"), ("e_version", "I")]
_EHDR_TAIL2 = [("e_flags", "I"), ("e_ehsize", "H"), ("e_phentsize", "H"), ("e_phnum", "H"),
               ("e_shentsize", "H"), ("e_shnum", "H"), ("e_shstrndx", "H")]
EHDR64 = Struct("Elf64_Ehdr", [("ident", "16s"), *_EHDR_TAIL, ("e_entry", "Q"), ("e_phoff", "Q"), ("e_shoff", "Q"), *_EHDR_TAIL2])
EHDR32 = Struct("Elf32_Ehdr", [("ident", "16s"), *_EHDR_TAIL, ("e_entry", "I"), ("e_phoff", "I"), ("e_shoff", "I"), *_EHDR_TAIL2])
PHDR64 = Struct("Elf64_Phdr", [("p_type", "I"), ("p_flags", "I"), ("p_offset", "Q"), ("p_vaddr", "Q"), ("p_paddr", "Q"),
                               ("p_filesz", "Q"), ("p_memsz", "Q"), ("p_align", "Q")])
PHDR32 = Struct("Elf32_Phdr", [("p_type", "I"), ("p_offset", "I"), ("p_vaddr", "I"), ("p_paddr", "I"),
                               ("p_filesz", "I"), ("p_memsz", "I"), ("p_flags", "I"), ("p_align", "I")])
SHDR64 = Struct("Elf64_Shdr", [("sh_name", "I"), ("sh_type", "I"), ("sh_flags", "Q"), ("sh_addr", "Q"), ("sh_offset", "Q"),
                               ("sh_size", "Q"), ("sh_link", "I"), ("sh_info", "I"), ("sh_addralign", "Q"), ("sh_entsize", "Q")])
SHDR32 = Struct("Elf32_Shdr", [("sh_name", "I"), ("sh_type", "I"), ("sh_flags", "I"), ("sh_addr", "I"), ("sh_offset", "I"),
                               ("sh_size", "I"), ("sh_link", "I"), ("sh_info", "I"), ("sh_addralign", "I"), ("sh_entsize", "I")])


def _layouts(ei_class: int, byteorder: str) -> tuple[Struct, Struct, Struct]:
    bo = "<" if byteorder == "little" else ">"
    if ei_class == ELFCLASS64:
        return EHDR64.with_byteorder(bo), PHDR64.with_byteorder(bo), SHDR64.with_byteorder(bo)
    return EHDR32.with_byteorder(bo), PHDR32.with_byteorder(bo), SHDR32.with_byteorder(bo)


def _vmcoreinfo_page_size(notes: list[Note]) -> int | None:
    """PAGESIZE of the first VMCOREINFO note (validated there), or None."""
    from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

    for n in notes:
        if n.name == "VMCOREINFO":
            return VmcoreInfo.from_text(n.desc).page_size
    return None


class ElfDump(SegmentDump):
    """An ELF core file seen as physical memory."""

    format_name = "elf"

    @classmethod
    def probe(cls, src: ByteSource) -> bool:
        if src.size < 20:
            return False
        head = src.read(0, 18)
        return head[:4] == ELFMAG and int.from_bytes(head[16:18], "little" if head[5] == 1 else "big") == ET_CORE

    def __init__(self, src: ByteSource, *, page_size: int | None = None) -> None:
        self.src = src
        self.path = src.name
        if src.size < 16 or src.read(0, 4) != ELFMAG:
            raise NotADumpError(f"{src.name}: no ELF magic")
        ident = EHDR_IDENT.unpack(src.read(0, 16))
        if ident.ei_class not in (ELFCLASS32, ELFCLASS64) or ident.ei_data not in (ELFDATA2LSB, ELFDATA2MSB):
            raise CorruptDumpError(f"{src.name}: bad ELF class/data ({ident.ei_class}/{ident.ei_data})")
        self.elf_class = 64 if ident.ei_class == ELFCLASS64 else 32
        self.byteorder = "little" if ident.ei_data == ELFDATA2LSB else "big"
        ehdr_s, phdr_s, shdr_s = _layouts(ident.ei_class, self.byteorder)
        eh = ehdr_s.unpack(src.read(0, min(ehdr_s.size, src.size)), file_offset=0)
        if eh.e_type != ET_CORE:
            raise NotADumpError(f"{src.name}: ELF but not a core file (e_type {eh.e_type})")
        self.e_flags = eh.e_flags
        self.machine = eh.e_machine
        self.arch = EM_ARCH.get(eh.e_machine, f"em{eh.e_machine}")
        phnum = eh.e_phnum
        if phnum == PN_XNUM:
            if not eh.e_shoff:
                raise CorruptDumpError("PN_XNUM without a section header")
            phnum = shdr_s.unpack(src.read(eh.e_shoff, shdr_s.size) if eh.e_shoff + shdr_s.size <= src.size else b"",
                                  file_offset=eh.e_shoff).sh_info
        if eh.e_phentsize != phdr_s.size and phnum:
            raise CorruptDumpError(f"e_phentsize {eh.e_phentsize}, expected {phdr_s.size}")
        table = src.view(eh.e_phoff, phnum * phdr_s.size)
        self.loads: list[Segment] = []
        note_bytes: list[Note] = []
        for i in range(phnum):
            ph = phdr_s.unpack(table, i * phdr_s.size)
            if ph.p_type == PT_NOTE:
                if ph.p_offset + ph.p_filesz > src.size:
                    self.truncated = True
                    avail = max(src.size - ph.p_offset, 0)
                    note_bytes += parse_notes(src.read(ph.p_offset, avail), self.byteorder) if avail else []
                else:
                    note_bytes += parse_notes(src.view(ph.p_offset, ph.p_filesz), self.byteorder)
            elif ph.p_type == PT_LOAD:
                if ph.p_filesz > ph.p_memsz:
                    raise CorruptDumpError(f"PT_LOAD {i}: p_filesz {ph.p_filesz:#x} > p_memsz {ph.p_memsz:#x}")
                if ph.p_paddr == (1 << self.elf_class) - 1:
                    continue  # /proc/kcore: vmalloc/module memory, no physical address
                filesz = 0 if ph.p_offset == (1 << self.elf_class) - 1 else ph.p_filesz  # QEMU: not stored
                self._check_phys(i, ph.p_paddr, ph.p_memsz)
                self.loads.append(Segment(ph.p_paddr, ph.p_offset, filesz, ph.p_memsz, ph.p_vaddr))
        self._notes = note_bytes
        ps = page_size or _vmcoreinfo_page_size(note_bytes) or DEFAULT_PAGE_SIZE.get(self.arch, 4096)
        self.page_size = ps
        self._map_segments(self.loads)
        self.incomplete = bool(self.e_flags & DUMP_ELF_INCOMPLETE) or self.truncated

    def _check_phys(self, index: int, paddr: int, memsz: int) -> None:
        """A segment beyond the physical address space is a lie that would size every map and output."""
        limit = max_phys_addr(self.arch)
        if paddr + memsz > limit:
            raise CorruptDumpError(f"{self.src.name}: PT_LOAD {index} claims memory [{paddr:#x}, {paddr + memsz:#x}) "
                                   f"beyond the {limit.bit_length() - 1}-bit physical address space of {self.arch}")

    def notes(self) -> list[Note]:
        return list(self._notes)

    def direct_map_base(self) -> int | None:
        """``p_vaddr - p_paddr`` of a RAM segment, i.e. x86_64 ``page_offset_base``."""
        for seg in self.loads:
            if self.arch == "x86_64" and seg.vaddr and seg.vaddr < 0xFFFFFFFF80000000 and seg.vaddr >= 0xFF00000000000000:
                return seg.vaddr - seg.paddr
        return None

    def info(self) -> DumpInfo:
        return DumpInfo("elf", {
            "elf_class": self.elf_class,
            "byteorder": self.byteorder,
            "machine": self.machine,
            "pt_load": len(self.loads),
            "e_flags": self.e_flags,
            "incomplete": self.incomplete,
            "truncated": self.truncated,
            "direct_map_base": hex(b) if (b := self.direct_map_base()) is not None else None,
        })



# -- writing -------------------------------------------------------------------
def _segments_for(ram: list[tuple[int, int]], dumped: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """``(start_pfn, file_pages, mem_pages)`` per PT_LOAD.

    Each run of dumped pages opens a segment whose memory extends over the
    excluded pages after it, up to the next dumped run or the end of its RAM
    run; excluded pages at the start of a RAM run get a segment without data.
    """
    segs: list[tuple[int, int, int]] = []
    di = 0
    for rs, re_ in ram:
        while di < len(dumped) and dumped[di][1] <= rs:
            di += 1
        inside: list[tuple[int, int]] = []
        j = di
        while j < len(dumped) and dumped[j][0] < re_:
            inside.append((max(dumped[j][0], rs), min(dumped[j][1], re_)))
            j += 1
        if not inside or inside[0][0] > rs:
            segs.append((rs, 0, (inside[0][0] if inside else re_) - rs))
        for k, (ds, de) in enumerate(inside):
            mem_end = inside[k + 1][0] if k + 1 < len(inside) else re_
            segs.append((ds, de - ds, mem_end - ds))
    return segs


def nonzero_runs(source: Dump, runs: list[tuple[int, int]], batch: int = 4096) -> list[tuple[int, int]]:
    """``runs`` minus pages that are entirely zero (dump level bit 1)."""
    ps = source.page_size
    keep: list[tuple[int, int]] = []
    for start, end in runs:
        for pfn in range(start, end, batch):
            n = min(batch, end - pfn)
            arr = np.frombuffer(source._read_dumped(pfn, n), dtype=np.uint64).reshape(n, ps // 8)
            nz = arr.any(axis=1)
            idx = np.flatnonzero(np.diff(np.concatenate(([0], nz.view(np.int8), [0]))))
            keep.extend((pfn + int(a), pfn + int(b)) for a, b in zip(idx[::2], idx[1::2], strict=True))
    return merge_runs(keep)


def write_elf(source: Dump, sink: Sink, *, elf_class: int = 64, exclude_zero: bool = False,
              progress: Progress | None = None, batch: int = 1024) -> WriteStats:
    """Write ``source`` as a kdump ELF core (``makedumpfile -E`` compatible)."""
    if elf_class not in (32, 64):
        raise UsageError(f"ELF class must be 32 or 64, not {elf_class}")
    ps = source.page_size
    if source.byteorder != "little":
        raise UnsupportedError("writing big-endian ELF dumps")
    ram = source.ram_runs()
    dumped = source.dumped_runs()
    if exclude_zero:
        dumped = nonzero_runs(source, dumped)
    zero_pages = sum(e - s for s, e in source.dumped_runs()) - sum(e - s for s, e in dumped)
    missing = source.missing_runs()
    segs = _segments_for(subtract_runs(ram, missing), dumped)
    limit = 1 << elf_class
    if segs and (segs[-1][0] + segs[-1][2]) * ps > limit:
        raise UsageError("memory above 4 GiB needs an ELF64 dump")
    ei_class = ELFCLASS64 if elf_class == 64 else ELFCLASS32
    ehdr_s, phdr_s, shdr_s = _layouts(ei_class, "little")
    note_blob = build_notes(source.notes())
    phnum = 1 + len(segs) + len(missing)
    xnum = phnum >= PN_XNUM
    phoff = ehdr_s.size
    shoff = phoff + phnum * phdr_s.size if xnum else 0
    note_off = (shoff + shdr_s.size) if xnum else phoff + phnum * phdr_s.size
    data_off = -(-(note_off + len(note_blob)) // ps) * ps
    ident = EHDR_IDENT.pack(magic=ELFMAG, ei_class=ei_class, ei_data=ELFDATA2LSB, ei_version=EV_CURRENT)
    machine = ARCH_EM.get(source.arch, 0)
    ehdr = ehdr_s.pack(ident=ident, e_type=ET_CORE, e_machine=machine, e_version=EV_CURRENT, e_phoff=phoff,
                       e_shoff=shoff, e_flags=DUMP_ELF_INCOMPLETE, e_ehsize=ehdr_s.size, e_phentsize=phdr_s.size,
                       e_phnum=PN_XNUM if xnum else phnum, e_shentsize=shdr_s.size if xnum else 0,
                       e_shnum=1 if xnum else 0)
    direct = getattr(source, "direct_map_base", lambda: None)()
    phdrs = [phdr_s.pack(p_type=PT_NOTE, p_offset=note_off, p_filesz=len(note_blob), p_memsz=len(note_blob))]
    off = data_off
    for start, fpages, mpages in segs:
        paddr = start * ps
        # p_offset is the running offset even without file data: crash sizes its
        # header buffer from the first PT_LOAD's p_offset.
        phdrs.append(phdr_s.pack(p_type=PT_LOAD, p_flags=PF_RWX, p_offset=off,
                                 p_vaddr=(direct + paddr) & (limit - 1) if direct is not None else 0, p_paddr=paddr,
                                 p_filesz=fpages * ps, p_memsz=mpages * ps, p_align=0))
        off += fpages * ps
    # Missing pages: PT_LOADs whose data would start at the end of the file, as in a copy cut short.
    phdrs += [phdr_s.pack(p_type=PT_LOAD, p_flags=PF_RWX, p_offset=off, p_paddr=s * ps, p_filesz=(e - s) * ps,
                          p_memsz=(e - s) * ps) for s, e in missing]
    # Headers first, marked incomplete; the flag is cleared once every page is down.
    sink.pwrite(0, ehdr)
    sink.pwrite(phoff, b"".join(phdrs))
    if xnum:
        sink.pwrite(shoff, shdr_s.pack(sh_info=phnum))
    sink.pwrite(note_off, note_blob)
    total = sum(f for _, f, _ in segs)
    done = 0
    off = data_off
    for start, fpages, _ in segs:
        for pfn in range(start, start + fpages, batch):
            n = min(batch, start + fpages - pfn)
            ext = source.file_extent(pfn, n)
            if ext is None or not sink.copy_from(ext[0], ext[1], off, n * ps):
                sink.pwrite(off, source._read_dumped(pfn, n))
            off += n * ps
            done += n
            if progress:
                progress(done, total)
    if total == 0 and data_off > note_off + len(note_blob):
        sink.pwrite(data_off - 1, b"\0")
    # A source that lacks pages stays flagged: its missing pages are not "excluded".
    sink.pwrite(0, ehdr_s.pack(ehdr_s.unpack(ehdr), e_flags=DUMP_ELF_INCOMPLETE if source.incomplete or missing else 0))
    return WriteStats("elf", pages_written=total, zero_pages=zero_pages,
                      excluded_pages=sum(e - s for s, e in ram) - total - sum(e - s for s, e in missing),
                      bytes_written=off, extra={"missing_pages": sum(e - s for s, e in missing)})
