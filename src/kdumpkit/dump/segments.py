"""Dumps whose file is a list of physical segments: ELF, LiME, raw images.

Such a format only has to say, for each segment, at which physical address it
starts, where its bytes are in the file, how many bytes are stored and how
much memory it covers.  This module turns that into the page-level view of
:class:`kdumpkit.dump.base.Dump`: overlapping segments (the kernel text in a
vmcore), excluded tails (``p_filesz < p_memsz``) and a file cut short (pages
past its end are MISSING, and so are all pages of a segment whose data would
start past the end: that is how a writer records pages it never had).  A
flattened stream that lost its end marker (``FlattenedFile.complete``) makes
the dump truncated too, whatever its pages say.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from kdumpkit.dump.base import Buffer, Dump, PageState, merge_runs, subtract_runs
from kdumpkit.dump.fileio import ByteSource
from kdumpkit.errors import CorruptDumpError


@dataclass(frozen=True)
class Segment:
    """``memsz`` bytes of memory at ``paddr``; the first ``filesz`` are stored at ``offset``."""

    paddr: int
    offset: int
    filesz: int
    memsz: int
    vaddr: int = 0


@dataclass(frozen=True)
class _Piece:
    start: int
    end: int
    file_off: int


class SegmentDump(Dump):
    """Page view over segments; subclasses parse their headers and call :meth:`_map_segments`."""

    src: ByteSource
    truncated: bool = False

    def _map_segments(self, segments: list[Segment], missing_pfns: list[tuple[int, int]] | None = None) -> None:
        """Build the page view; ``missing_pfns`` are extra MISSING runs a format records on its own."""
        ps = self.page_size
        ram: list[tuple[int, int]] = []
        raw_pieces: list[_Piece] = []
        missing: list[tuple[int, int]] = list(missing_pfns or [])
        if not getattr(self.src, "complete", True):
            self.truncated = True
        for seg in segments:
            start = seg.paddr // ps
            ram.append((start, (seg.paddr + seg.memsz) // ps))
            end = (seg.paddr + seg.filesz) // ps
            if end <= start:
                continue
            file_off = seg.offset - (seg.paddr - start * ps)
            avail_end = start + max((self.src.size - file_off) // ps, 0)
            if avail_end < end:
                self.truncated = True
                missing.append((max(avail_end, start), end))
                end = max(avail_end, start)
            if end > start:
                raw_pieces.append(_Piece(start, end, file_off))
        raw_pieces.sort(key=lambda p: (p.start, -p.end))
        pieces: list[_Piece] = []
        covered = -1
        for p in raw_pieces:
            s = max(p.start, covered)
            if s >= p.end:
                continue
            pieces.append(_Piece(s, p.end, p.file_off + (s - p.start) * ps))
            covered = max(covered, p.end)
        self._pieces = pieces
        self._starts = [p.start for p in pieces]
        self._dumped = merge_runs((p.start, p.end) for p in pieces)
        self._missing = subtract_runs(merge_runs(missing), self._dumped)  # another segment may hold the page
        self._ram = merge_runs(ram + self._missing)
        self._ram_starts = [s for s, _ in self._ram]
        self.max_pfn = max((e for _, e in self._ram), default=0)

    def ram_runs(self) -> list[tuple[int, int]]:
        return list(self._ram)

    def dumped_runs(self) -> list[tuple[int, int]]:
        return list(self._dumped)

    def missing_runs(self) -> list[tuple[int, int]]:
        return list(self._missing)

    def _piece(self, pfn: int) -> _Piece | None:
        i = bisect.bisect_right(self._starts, pfn) - 1
        if i >= 0 and pfn < self._pieces[i].end:
            return self._pieces[i]
        return None

    def page_state(self, pfn: int) -> PageState:
        if self._piece(pfn) is not None:
            return PageState.DUMPED
        i = bisect.bisect_right(self._missing, (pfn, 1 << 62)) - 1
        if i >= 0 and pfn < self._missing[i][1]:
            return PageState.MISSING
        i = bisect.bisect_right(self._ram_starts, pfn) - 1
        if i >= 0 and pfn < self._ram[i][1]:
            return PageState.EXCLUDED
        return PageState.NOT_RAM

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        ps = self.page_size
        p = self._piece(pfn)
        if p is not None and pfn + count <= p.end and p.file_off >= 0:
            return self.src.view(p.file_off + (pfn - p.start) * ps, count * ps)
        out = bytearray()
        for q in range(pfn, pfn + count):
            piece = self._piece(q)
            if piece is None:
                raise CorruptDumpError(f"pfn {q:#x} has no data")
            off = piece.file_off + (q - piece.start) * ps
            if off < 0:  # page begins before its segment's data (unaligned start)
                out += bytes(-off) + self.src.read(0, ps + off)
            else:
                out += self.src.view(off, ps)
        return bytes(out)

    def file_extent(self, pfn: int, count: int) -> tuple[int, int] | None:
        p = self._piece(pfn)
        fd = self.src.fileno()
        if p is None or fd is None or pfn + count > p.end or p.file_off < 0:
            return None
        return fd, p.file_off + (pfn - p.start) * self.page_size

    def close(self) -> None:
        self.src.close()
