"""Raw linear memory images with a memory map (what mkdump's mini kernel wrote).

The image holds physical memory from address 0 (holes are zeros, ideally
sparse).  Which parts are RAM comes from a memory map beside it,
``IMAGE.memmap``: one ``start-end : type`` line per range in ``/proc/iomem``
style (hex, inclusive ends); "System RAM" lines are RAM and "Excluded" lines
are RAM whose pages were not kept.  Without a memory map the whole image is
RAM.  Notes, which a raw image cannot hold, travel in ``IMAGE.notes`` (ELF
note records) so VMCOREINFO survives a round trip.
"""

from __future__ import annotations

import os
import re

from kdumpkit.dump.base import Dump, DumpInfo, Note, PageState
from kdumpkit.dump.elfnotes import build_notes, parse_notes
from kdumpkit.dump.fileio import ByteSource
from kdumpkit.dump.segments import Segment, SegmentDump
from kdumpkit.dump.sink import DUMP_FILE_MODE, Sink
from kdumpkit.dump.writer import Progress, WriteStats
from kdumpkit.errors import CorruptDumpError, DumpError

_LINE = re.compile(r"^\s*([0-9a-fA-F]+)-([0-9a-fA-F]+)\s*:\s*(.+?)\s*$")


def parse_memmap(text: str) -> list[tuple[int, int, str]]:
    """``(start, end_exclusive, type)`` for each line of an iomem-style map."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise CorruptDumpError(f"memory map line {n}: {line.strip()!r}")
        start, end = int(m.group(1), 16), int(m.group(2), 16) + 1
        if end <= start:
            raise CorruptDumpError(f"memory map line {n}: empty range")
        out.append((start, end, m.group(3)))
    return out


class RawDump(SegmentDump):
    format_name = "raw"

    @classmethod
    def probe(cls, src: ByteSource) -> bool:
        return os.path.exists(src.name + ".memmap")

    def __init__(self, src: ByteSource, *, memmap: str | None = None, page_size: int = 4096,
                 arch: str = "x86_64") -> None:
        self.src = src
        self.path = src.name
        self.page_size = page_size
        self.arch = arch
        self.byteorder = "little"
        mm_path = memmap if memmap is not None else src.name + ".memmap"
        if os.path.exists(mm_path):
            try:
                with open(mm_path) as f:
                    ranges = parse_memmap(f.read())
            except OSError as e:
                raise DumpError(f"cannot read memory map {mm_path}: {e.strerror}") from None
            self.memmap_path: str | None = mm_path
        else:
            ranges = [(0, src.size, "System RAM")]
            self.memmap_path = None
        segs = []
        for start, end, kind in ranges:
            if kind == "System RAM":
                segs.append(Segment(start, start, end - start, end - start))
            elif kind == "Excluded":
                segs.append(Segment(start, start, 0, end - start))
        self._map_segments(segs)
        self.incomplete = self.truncated
        self._notes: list[Note] = []
        notes_path = src.name + ".notes"
        if os.path.exists(notes_path):
            with open(notes_path, "rb") as f:
                self._notes = parse_notes(f.read())
            for n in self._notes:
                if n.name == "VMCOREINFO":
                    for line in n.desc.splitlines():
                        if line.startswith(b"PAGESIZE=") and line[9:].isdigit() and int(line[9:]) != page_size:
                            self.page_size = int(line[9:])
                            self._map_segments(segs)

    def notes(self) -> list[Note]:
        return list(self._notes)

    def info(self) -> DumpInfo:
        return DumpInfo("raw", {"memmap": self.memmap_path, "truncated": self.truncated})


def _write_side_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, DUMP_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_raw(source: Dump, sink: Sink, path: str, *, progress: Progress | None = None, batch: int = 1024) -> WriteStats:
    """Write the linear image to ``sink`` and ``path``.memmap / ``path``.notes beside it.

    Only dumped pages are written (holes and excluded pages stay sparse zeros);
    the memory map keeps RAM and excluded ranges apart.
    """
    ps = source.page_size
    lines = []
    for start, end in source.ram_runs():
        pos = start
        while pos < end:
            st = source.page_state(pos)
            q = pos + 1
            while q < end and source.page_state(q) is st:
                q += 1
            kind = "System RAM" if st is PageState.DUMPED else "Excluded"
            lines.append(f"{pos * ps:016x}-{q * ps - 1:016x} : {kind}")
            pos = q
    _write_side_file(path + ".memmap", ("\n".join(lines) + "\n").encode())
    _write_side_file(path + ".notes", build_notes(source.notes()))
    dumped = source.dumped_runs()
    total = sum(e - s for s, e in dumped)
    done = 0
    for start, end in dumped:
        for pfn in range(start, end, batch):
            n = min(batch, end - pfn)
            sink.pwrite(pfn * ps, source._read_dumped(pfn, n))
            done += n
            if progress:
                progress(done, total)
    size = source.max_pfn * ps
    if size:
        last = source.page_state(source.max_pfn - 1)
        if last is not PageState.DUMPED:
            sink.pwrite(size - 1, b"\0")
    return WriteStats("raw", pages_written=total, excluded_pages=sum(e - s for s, e in source.ram_runs()) - total,
                      bytes_written=size)
