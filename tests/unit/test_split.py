"""Split kdump sets: written balanced, read back as one dump equal to the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpkit.dump.base import PageState
from kdumpkit.dump.fileio import BytesSource
from kdumpkit.dump.kdump import KdumpFile, write_kdump
from kdumpkit.dump.sink import FileSink, MemorySink
from kdumpkit.dump.split import SplitDump, split_ranges, write_kdump_split
from kdumpkit.dump.testing import assert_same_pages, synthetic_dump
from kdumpkit.errors import CorruptDumpError, PageMissingError, UsageError


def _pieces(src, n: int, **kw: object) -> list[KdumpFile]:  # type: ignore[no-untyped-def]
    sinks = [MemorySink() for _ in range(n)]
    write_kdump_split(src, sinks, **kw)
    return [KdumpFile(BytesSource(bytes(s.buf), name=f"piece{i}")) for i, s in enumerate(sinks)]


def test_split_ranges_balance_dumped_pages() -> None:
    assert split_ranges([(0, 100)], 100, 2) == [(0, 50), (50, 100)]
    r = split_ranges([(0, 10), (1000, 1090)], 2000, 2)
    assert r == [(0, 1040), (1040, 2000)]
    r = split_ranges([(5, 6)], 10, 3)
    assert r[0][0] == 0 and r[-1][1] == 10 and all(a[1] == b[0] for a, b in zip(r, r[1:], strict=False))
    with pytest.raises(UsageError):
        split_ranges([], 10, 0)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("codec", ["zlib", None])
def test_split_reads_equal_to_unsplit(n: int, codec: str | None) -> None:
    src = synthetic_dump(ram=[(0, 256), (512, 1024)], excluded=[(600, 620)])
    pieces = _pieces(src, n, codec=codec, exclude_zero=True)
    counts = [sum(e - s for s, e in p.dumped_runs()) for p in pieces]
    assert max(counts) - min(counts) <= 1
    assert all(p.split for p in pieces)
    sd = SplitDump(list(reversed(pieces)))
    assert_same_pages(src, sd)
    assert sd.notes() == src.notes()
    whole = MemorySink()
    write_kdump(src, whole, codec=codec, exclude_zero=True)
    assert_same_pages(KdumpFile(BytesSource(bytes(whole.buf))), sd)
    assert sd.info().details["pieces"][0]["start_pfn"] == 0
    # one piece alone: the other pieces' pages are missing, not excluded
    if n > 1:
        p0 = pieces[0]
        other = pieces[1].start_pfn
        while src.page_state(other) is not PageState.DUMPED:
            other += 1
        assert p0.page_state(other) is PageState.MISSING
        with pytest.raises(PageMissingError):
            p0.read_page(other)


def test_split_set_validation() -> None:
    src = synthetic_dump(ram=[(0, 256)])
    a, b, c = _pieces(src, 3, codec="zlib")
    with pytest.raises(CorruptDumpError):
        SplitDump([a, c])  # gap
    with pytest.raises(CorruptDumpError):
        SplitDump([a, a, b, c])  # overlap
    whole = MemorySink()
    write_kdump(src, whole)
    with pytest.raises(CorruptDumpError):
        SplitDump([a, KdumpFile(BytesSource(bytes(whole.buf)))])
    other = _pieces(synthetic_dump(ram=[(0, 300)]), 3)
    with pytest.raises(CorruptDumpError):
        SplitDump([a, b, other[2]])
    with pytest.raises(UsageError):
        write_kdump_split(src, [MemorySink()], pfn_range=(0, 1))


def test_split_open_paths_and_open_dump(tmp_path: Path) -> None:
    src = synthetic_dump(ram=[(0, 200)])
    paths = [str(tmp_path / f"p{i}") for i in range(2)]
    sinks = [FileSink(p) for p in paths]
    write_kdump_split(src, sinks, codec="lzo")
    for s in sinks:
        s.close()
    with SplitDump.open(paths) as sd:
        assert_same_pages(src, sd)
    from kdumpkit.dump import open_dump

    with open_dump(paths) as d:
        assert_same_pages(src, d)
