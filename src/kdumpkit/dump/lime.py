"""LiME memory images (``format=lime``): a 32-byte header before each RAM range.

Layout (LiME ``src/lime.h``): magic 0x4C694D45, version 1, ``s_addr``,
``e_addr`` (**inclusive** end), 8 reserved bytes, then the range's bytes.
LiME carries no notes and cannot say "excluded": writing one zero-fills
excluded pages and drops notes, and the writer's stats say so.  Nor can it
say "missing" or "incomplete", so an incomplete source is refused
(:mod:`kdumpkit.dump.missing`), and so is one without RAM: a LiME file with no
range is not a LiME file.
"""

from __future__ import annotations

from kdumpkit.dump.base import Dump, DumpInfo, Note, PageState
from kdumpkit.dump.fileio import ByteSource
from kdumpkit.dump.segments import Segment, SegmentDump
from kdumpkit.dump.sink import Sink
from kdumpkit.dump.writer import Progress, WriteStats
from kdumpkit.errors import CorruptDumpError, DumpError, NotADumpError
from kdumpkit.structs import Struct

LIME_MAGIC = 0x4C694D45
LIME_HEADER = Struct("lime_mem_range_header", [("magic", "I"), ("version", "I"), ("s_addr", "Q"), ("e_addr", "Q"),
                                               ("reserved", "8s")])


class LimeDump(SegmentDump):
    format_name = "lime"

    @classmethod
    def probe(cls, src: ByteSource) -> bool:
        return src.size >= LIME_HEADER.size and int.from_bytes(src.read(0, 4), "little") == LIME_MAGIC

    def __init__(self, src: ByteSource, *, page_size: int = 4096, arch: str = "x86_64") -> None:
        self.src = src
        self.path = src.name
        self.page_size = page_size
        self.arch = arch
        self.byteorder = "little"
        if not self.probe(src):
            raise NotADumpError(f"{src.name}: no LiME header")
        segs: list[Segment] = []
        off = 0
        while off < src.size:
            if src.size - off < LIME_HEADER.size:
                self.truncated = True
                break
            h = LIME_HEADER.unpack(src.read(off, LIME_HEADER.size), file_offset=off)
            if h.magic != LIME_MAGIC or h.version != 1:
                raise CorruptDumpError(f"bad LiME header at offset {off} (magic {h.magic:#x}, version {h.version})")
            if h.e_addr < h.s_addr:
                raise CorruptDumpError(f"LiME range at offset {off} ends before it starts")
            length = h.e_addr - h.s_addr + 1
            segs.append(Segment(h.s_addr, off + LIME_HEADER.size, length, length))
            off += LIME_HEADER.size + length
        self.segments = segs
        self._map_segments(segs)
        self.incomplete = self.truncated

    def notes(self) -> list[Note]:
        return []

    def info(self) -> DumpInfo:
        return DumpInfo("lime", {"ranges": len(self.segments), "truncated": self.truncated})


def write_lime(source: Dump, sink: Sink, *, progress: Progress | None = None, batch: int = 1024) -> WriteStats:
    """One LiME range per RAM run; excluded pages become zeros, an incomplete source is refused."""
    from kdumpkit.dump.missing import check_recordable

    check_recordable(source, "lime")
    ps = source.page_size
    ram = source.ram_runs()
    if not ram:
        raise DumpError("the input has no RAM pages: a LiME file needs at least one range")
    total = sum(e - s for s, e in ram)
    off = done = zero_filled = 0
    zero = bytes(ps * batch)
    for start, end in ram:
        sink.pwrite(off, LIME_HEADER.pack(magic=LIME_MAGIC, version=1, s_addr=start * ps, e_addr=end * ps - 1))
        off += LIME_HEADER.size
        for pfn in range(start, end, batch):
            n = min(batch, end - pfn)
            states = [source.page_state(q) for q in range(pfn, pfn + n)]
            if all(s is PageState.DUMPED for s in states):
                sink.pwrite(off, source._read_dumped(pfn, n))
            else:
                for i, st in enumerate(states):
                    if st is PageState.DUMPED:
                        sink.pwrite(off + i * ps, source._read_dumped(pfn + i, 1))
                    else:
                        sink.pwrite(off + i * ps, zero[:ps])
                        zero_filled += 1
            off += n * ps
            done += n
            if progress:
                progress(done, total)
    return WriteStats("lime", pages_written=total - zero_filled, excluded_pages=zero_filled, bytes_written=off,
                      extra={"notes_dropped": len(source.notes()), "zero_filled_pages": zero_filled})
