"""LiME and raw-image round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpkit.dump import open_dump
from kdumpkit.dump.base import PageState
from kdumpkit.dump.fileio import BytesSource
from kdumpkit.dump.lime import LimeDump, write_lime
from kdumpkit.dump.raw import parse_memmap, write_raw
from kdumpkit.dump.sink import FileSink, MemorySink
from kdumpkit.dump.testing import assert_same_pages, synthetic_dump
from kdumpkit.errors import CorruptDumpError, KdumpkitError


def test_lime_round_trip_zero_fills_excluded() -> None:
    src = synthetic_dump(ram=[(0, 64), (100, 164)], excluded=[(10, 12)])
    sink = MemorySink()
    stats = write_lime(src, sink)
    assert stats.extra["zero_filled_pages"] == 2
    back = LimeDump(BytesSource(bytes(sink.buf)))
    assert back.ram_runs() == src.ram_runs()
    assert bytes(back.read_page(11)) == bytes(4096)
    for pfn in (0, 9, 12, 63, 100, 163):
        assert bytes(back.read_page(pfn)) == bytes(src.read_page(pfn))
    assert back.page_state(80) is PageState.NOT_RAM


def test_lime_truncated_and_corrupt() -> None:
    src = synthetic_dump(ram=[(0, 16)])
    sink = MemorySink()
    write_lime(src, sink)
    data = bytes(sink.buf)
    cut = LimeDump(BytesSource(data[:-4096]))
    assert cut.incomplete and cut.page_state(15) is PageState.MISSING
    bad = bytearray(data)
    bad[4] = 7
    with pytest.raises(CorruptDumpError):
        LimeDump(BytesSource(bytes(bad)))


def test_raw_round_trip_with_memmap_and_notes(tmp_path: Path) -> None:
    src = synthetic_dump(ram=[(0, 32), (64, 96)], excluded=[(70, 72)])
    out = tmp_path / "mem.raw"
    with FileSink(str(out)) as sink:
        write_raw(src, sink, str(out))
    assert (out.stat().st_mode & 0o777) == 0o600
    with open_dump(str(out)) as back:
        assert back.format_name == "raw"
        assert back.ram_runs() == src.ram_runs()
        assert_same_pages(src, back)
        assert back.notes() == src.notes()
        assert back.page_state(71) is PageState.EXCLUDED


def test_memmap_parse_errors() -> None:
    assert parse_memmap("00001000-00001fff : System RAM\n") == [(0x1000, 0x2000, "System RAM")]
    with pytest.raises(KdumpkitError):
        parse_memmap("nonsense\n")
