"""Split kdump sets (``makedumpfile --split``): read as one dump, and write.

Each piece is a complete kdump-compressed file with ``split = 1`` and its own
``[start_pfn, end_pfn)``; the pieces together cover the pfn range.  Splitting
exists so several writers (or disks) share the work, so the writer balances
*dumped pages*, not pfns.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from kdumpkit.dump.base import Buffer, Dump, DumpInfo, Note, PageState, merge_runs
from kdumpkit.dump.fileio import MappedFile
from kdumpkit.dump.kdump import KdumpFile, write_kdump_piece
from kdumpkit.dump.sink import Sink
from kdumpkit.dump.writer import WriteStats
from kdumpkit.errors import CorruptDumpError, UsageError


class SplitDump(Dump):
    """Several split KdumpFile pieces seen as one dump (pieces may come in any order)."""

    format_name = "kdump-split"

    def __init__(self, pieces: Sequence[KdumpFile]) -> None:
        if not pieces:
            raise UsageError("a split set needs at least one piece")
        self.pieces = sorted(pieces, key=lambda p: p.start_pfn)
        first = self.pieces[0]
        for p in self.pieces:
            if not p.split:
                raise CorruptDumpError(f"{p.path} is not a split dump piece (split=0); cannot mix with split pieces")
            if p.block_size != first.block_size or p.max_mapnr != first.max_mapnr:
                raise CorruptDumpError(
                    f"{p.path}: block size {p.block_size} / max_mapnr {p.max_mapnr} differ from "
                    f"{first.path} ({first.block_size} / {first.max_mapnr})"
                )
        for a, b in zip(self.pieces, self.pieces[1:], strict=False):
            if a.end_pfn != b.start_pfn:
                kind = "overlap" if a.end_pfn > b.start_pfn else "gap"
                raise CorruptDumpError(f"split pieces {a.path} [{a.start_pfn}, {a.end_pfn}) and {b.path} "
                                       f"[{b.start_pfn}, {b.end_pfn}): {kind}")
        self._starts = [p.start_pfn for p in self.pieces]
        self.path = first.path
        self.page_size = first.page_size
        self.arch = first.arch
        self.byteorder = first.byteorder
        self.max_pfn = first.max_pfn
        self.incomplete = any(p.incomplete for p in self.pieces)

    @classmethod
    def open(cls, paths: Sequence[str]) -> SplitDump:
        """Open every path as a KdumpFile (flattened pieces are read in place)."""
        from kdumpkit.dump.flattened import FlattenedFile, is_flattened

        pieces: list[KdumpFile] = []
        try:
            for path in paths:
                src = MappedFile(path)
                if is_flattened(src):
                    pieces.append(KdumpFile(FlattenedFile(src)))
                else:
                    pieces.append(KdumpFile(src))
            return cls(pieces)
        except BaseException:
            for p in pieces:
                p.close()
            raise

    def _piece(self, pfn: int) -> KdumpFile | None:
        i = bisect.bisect_right(self._starts, pfn) - 1
        if i < 0:
            return None
        p = self.pieces[i]
        return p if pfn < p.end_pfn else None

    def ram_runs(self) -> list[tuple[int, int]]:
        return self.pieces[0].ram_runs()

    def dumped_runs(self) -> list[tuple[int, int]]:
        return merge_runs(r for p in self.pieces for r in p.dumped_runs())

    def page_state(self, pfn: int) -> PageState:
        p = self._piece(pfn)
        return (p or self.pieces[0]).page_state(pfn)

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        out = bytearray()
        end = pfn + count
        while pfn < end:
            p = self._piece(pfn)
            if p is None:
                p = self.pieces[0]  # raises the right PageError
                p.read_page(pfn)
            n = min(end, p.end_pfn) - pfn
            out += p._read_dumped(pfn, n)
            pfn += n
        return bytes(out)

    def notes(self) -> list[Note]:
        return self.pieces[0].notes()

    def info(self) -> DumpInfo:
        d: dict[str, Any] = dict(self.pieces[0].info().details)
        d["pieces"] = [{"path": p.path, "start_pfn": p.start_pfn, "end_pfn": p.end_pfn} for p in self.pieces]
        d["incomplete"] = self.incomplete
        return DumpInfo(self.format_name, d)

    def close(self) -> None:
        for p in self.pieces:
            p.close()


def split_ranges(dumped: list[tuple[int, int]], max_pfn: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous pfn ranges covering ``[0, max_pfn)`` with balanced dumped pages."""
    if parts < 1:
        raise UsageError("need at least one split piece")
    total = sum(e - s for s, e in dumped)
    bounds = [0]
    acc = 0
    k = 1
    for s, e in dumped:
        while k < parts and acc + (e - s) >= total * k / parts:
            need = int(-(-(total * k) // parts)) - acc
            bounds.append(max(bounds[-1], s + max(need, 0)))
            k += 1
        acc += e - s
    while len(bounds) < parts:
        bounds.append(max(bounds[-1], max_pfn))
    bounds.append(max_pfn)
    return [(bounds[i], max(bounds[i], bounds[i + 1])) for i in range(parts)]


def write_kdump_split(source: Dump, sinks: Sequence[Sink], **kw: Any) -> list[WriteStats]:
    """Write ``source`` as ``len(sinks)`` split pieces (``makedumpfile --split``).

    Keyword arguments are :func:`kdumpkit.dump.kdump.write_kdump`'s (not
    ``pfn_range``).  Pieces are written one after the other; each sink is
    left open for the caller to close.
    """
    if "pfn_range" in kw:
        raise UsageError("pfn_range does not combine with a split dump")
    dumped = source.dumped_runs()
    max_pfn = max([source.max_pfn] + [e for _, e in source.ram_runs()[-1:]] + [e for _, e in dumped[-1:]])
    missing = source.missing_runs()  # recorded as missing in their piece, never as excluded
    stats = []
    for sink, piece in zip(sinks, split_ranges(dumped, max_pfn, len(sinks)), strict=True):
        stats.append(write_kdump_piece(source, sink, dumped=dumped, piece=piece, missing=missing, **kw))
    return stats
