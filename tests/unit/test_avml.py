"""AVML: plain (LiME v1, zero blocks skipped) and compressed (magic "AVML", version 2,
Snappy framing stream + u64 length trailer), per microsoft/avml src/image.rs."""

from __future__ import annotations

import struct

import cramjam
import pytest

from kdumpkit.dump import open_dump
from kdumpkit.dump.avml import AvmlDump, write_avml
from kdumpkit.dump.fileio import BytesSource
from kdumpkit.dump.lime import LimeDump
from kdumpkit.dump.sink import MemorySink
from kdumpkit.dump.testing import assert_kept_pages_equal, synthetic_dump
from kdumpkit.errors import CorruptDumpError, KdumpkitError


def test_header_bytes_match_avml() -> None:
    # AVML's own unit test (image.rs make_header): lime_header(0x1000, 0x20000, 2)
    expected = (b"\x41\x56\x4d\x4c\x02\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00"
                b"\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")
    src = synthetic_dump(ram=[(1, 0x20)], zero_fraction=0)
    sink = MemorySink()
    write_avml(src, sink)
    assert bytes(sink.buf[:32]) == expected[:16] + struct.pack("<Q", 0x20000 - 1) + bytes(8)


def _hand_built_block(pages: bytes, start: int) -> bytes:
    stream = bytes(cramjam.snappy.compress(pages))
    hdr = struct.pack("<IIQQ8s", 0x4C4D5641, 2, start, start + len(pages) - 1, b"")
    return hdr + stream + struct.pack("<Q", len(stream))


def test_hand_built_compressed() -> None:
    a = bytes(range(256)) * 16 * 2
    b = b"\x55" * 4096
    d = AvmlDump(BytesSource(_hand_built_block(a, 0x2000) + _hand_built_block(b, 0x10000)))
    assert d.dumped_runs() == [(2, 4), (16, 17)]
    assert bytes(d.read_pages(2, 2)) == a and bytes(d.read_page(16)) == b
    assert d.notes() == []


def test_round_trip_and_zero_blocks_skipped() -> None:
    pages = {p: bytes(4096) for p in range(4096, 8192)}  # one all-zero 16 MiB block
    src = synthetic_dump(ram=[(0, 100), (4096, 8192), (9000, 9100)], pages=pages, zero_fraction=0.2)
    for compress in (True, False):
        sink = MemorySink()
        st = write_avml(src, sink, compress=compress)
        assert st.zero_pages == 4096
        d = AvmlDump(BytesSource(bytes(sink.buf))) if compress else LimeDump(BytesSource(bytes(sink.buf)))
        assert d.dumped_runs() == [(0, 100), (9000, 9100)]
        assert assert_kept_pages_equal(src, d) == 200


def test_detected_by_open_dump(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "mem.avml"
    p.write_bytes(_hand_built_block(b"\x01" * 4096, 0))
    with open_dump(str(p)) as d:
        assert d.format_name == "avml"


def test_corrupt_and_truncated() -> None:
    good = _hand_built_block(bytes(range(256)) * 16 * 4, 0) * 1
    bad_trailer = good[:-8] + struct.pack("<Q", 5)
    with pytest.raises(CorruptDumpError):
        AvmlDump(BytesSource(bad_trailer))
    for cut in range(1, len(good), max(len(good) // 40, 1)):
        try:
            d = AvmlDump(BytesSource(good[:cut]))
            for s, e in d.dumped_runs():
                d.read_pages(s, e - s)
        except KdumpkitError:
            pass
    flipped = bytearray(good)
    flipped[60] ^= 0xFF
    try:
        d = AvmlDump(BytesSource(bytes(flipped)))
        d.read_pages(0, 4)
    except KdumpkitError:
        pass
