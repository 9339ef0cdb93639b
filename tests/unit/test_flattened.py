"""Flattened streams: in-place reading equals reassembly; sink and reassembler agree with each other."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from kdumpkit.cli.main import main
from kdumpkit.dump.fileio import BytesSource, MappedFile
from kdumpkit.dump.flattened import (
    END_MARKER,
    FLAT_HEADER_SIZE,
    FLAT_RECORD,
    FlattenedFile,
    FlattenedSink,
    is_flattened,
    reassemble,
)
from kdumpkit.dump.kdump import KdumpFile, write_kdump
from kdumpkit.dump.sink import FileSink, MemorySink
from kdumpkit.dump.testing import assert_same_pages, synthetic_dump
from kdumpkit.errors import KdumpkitError, NotADumpError, OutputError


def _stream(records: list[tuple[int, bytes]], end: bool = True) -> bytes:
    buf = io.BytesIO()
    sink = FlattenedSink(buf)
    for off, data in records:
        sink.pwrite(off, data)
    if end:
        sink.close()
    else:
        sink.abort()
    return buf.getvalue()


def test_header_and_records_layout() -> None:
    data = _stream([(10, b"abc")])
    assert data[:16] == b"makedumpfile\0\0\0\0"
    assert data[16:32] == (1).to_bytes(8, "big") + (1).to_bytes(8, "big")
    assert data[32:FLAT_HEADER_SIZE] == bytes(FLAT_HEADER_SIZE - 32)
    assert data[FLAT_HEADER_SIZE:FLAT_HEADER_SIZE + 16] == (10).to_bytes(8, "big") + (3).to_bytes(8, "big")
    assert data.endswith(b"abc" + END_MARKER) and END_MARKER == b"\xff" * 16
    assert is_flattened(BytesSource(data))
    assert not is_flattened(BytesSource(b"KDUMP   " + bytes(100)))


def test_no_empty_records_and_abort_has_no_end_marker() -> None:
    data = _stream([(0, b""), (5, b"x")], end=False)
    assert len(data) == FLAT_HEADER_SIZE + 16 + 1
    ff = FlattenedFile(BytesSource(data))
    assert not ff.complete and ff.size == 6 and ff.read(0, 6) == bytes(5) + b"x"


def test_overlapping_records_later_wins_and_gaps_are_zero(tmp_path: Path) -> None:
    recs = [(0, b"A" * 100), (50, b"B" * 10), (200, b"C" * 5), (40, b"D" * 30), (95, b"E" * 10), (0, b"F")]
    data = _stream(recs)
    expect = bytearray(205)
    for off, d in recs:
        expect[off:off + len(d)] = d
    ff = FlattenedFile(BytesSource(data))
    assert ff.size == 205 and ff.read(0, 205) == bytes(expect)
    for a in range(0, 205, 7):
        for n in (1, 13, 60):
            if a + n <= 205:
                assert ff.read(a, n) == bytes(expect[a:a + n])
    src = tmp_path / "s.flat"
    src.write_bytes(data)
    assert reassemble(str(src), str(tmp_path / "out")) == 205
    assert (tmp_path / "out").read_bytes() == bytes(expect)


@pytest.mark.parametrize("codec", ["zlib", "lzo", None])
def test_kdump_through_flattened_in_place_equals_reassembled(codec: str | None, tmp_path: Path) -> None:
    src = synthetic_dump(ram=[(0, 300), (400, 900)], excluded=[(450, 470)])
    plain = MemorySink()
    write_kdump(src, plain, codec=codec, exclude_zero=True)
    flat = tmp_path / "d.flat"
    with open(flat, "wb") as f:
        sink = FlattenedSink(f)
        write_kdump(src, sink, codec=codec, exclude_zero=True)
        sink.close()
    ff = FlattenedFile(MappedFile(str(flat)))
    assert ff.complete and ff.read(0, ff.size) == bytes(plain.buf)
    k = KdumpFile(ff)
    assert_same_pages(src, k)
    assert k.notes() == src.notes()
    out = tmp_path / "d.kdump"
    assert main(["reassemble", str(flat), str(out)]) == 0
    assert out.read_bytes() == bytes(plain.buf)
    assert main(["reassemble", str(flat), str(out)]) != 0  # refuses to clobber
    assert main(["reassemble", "--force", str(flat), str(out)]) == 0


def test_sink_on_a_file_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "fd.flat"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    sink = FlattenedSink(fd, close_stream=True)
    sink.pwrite(4, b"data")
    sink.close()
    ff = FlattenedFile.open(str(path))
    assert ff.read(0, 8) == bytes(4) + b"data"
    with pytest.raises(OutputError):
        sink.pwrite(0, b"late")


def test_big_writes_are_split_into_records() -> None:
    from kdumpkit.dump import flattened

    old = flattened.MAX_RECORD
    flattened.MAX_RECORD = 1000
    try:
        data = _stream([(0, bytes(range(256)) * 10)])
    finally:
        flattened.MAX_RECORD = old
    ff = FlattenedFile(BytesSource(data))
    assert ff.records == 3 and ff.read(0, 2560) == bytes(range(256)) * 10


def test_bad_streams_raise_kdumpkit_errors(tmp_path: Path) -> None:
    good = _stream([(0, b"hello"), (100, b"world")])
    with pytest.raises(NotADumpError):
        FlattenedFile(BytesSource(b"makedumpfile" + bytes(100)))
    bad_rec = bytearray(good)
    bad_rec[FLAT_HEADER_SIZE:FLAT_HEADER_SIZE + 16] = FLAT_RECORD.pack(offset=0, buf_size=0)
    zero_size = bytes(bad_rec)
    cases = [good[:n] for n in range(FLAT_HEADER_SIZE - 1, len(good))] + [zero_size]
    for case in cases:
        try:
            ff = FlattenedFile(BytesSource(case))
            ff.read(0, ff.size)
        except KdumpkitError:
            pass
        p = tmp_path / "case"
        p.write_bytes(case)
        out = tmp_path / "out"
        try:
            reassemble(str(p), str(out), overwrite=True)
        except KdumpkitError:
            pass
    with pytest.raises(KdumpkitError):
        FlattenedFile(BytesSource(zero_size))


def test_flattened_elf_content_is_served_too() -> None:
    from kdumpkit.dump.elf import ElfDump, write_elf

    src = synthetic_dump(ram=[(0, 64)])
    buf = io.BytesIO()
    sink = FlattenedSink(buf)
    write_elf(src, sink)
    sink.close()
    assert_same_pages(src, ElfDump(FlattenedFile(BytesSource(buf.getvalue()))))


def test_file_sink_and_flattened_same_bytes(tmp_path: Path) -> None:
    src = synthetic_dump(ram=[(0, 128)])
    p = tmp_path / "plain"
    fs = FileSink(str(p))
    write_kdump(src, fs, codec="zstd")
    fs.close()
    buf = io.BytesIO()
    sink = FlattenedSink(buf)
    write_kdump(src, sink, codec="zstd")
    sink.close()
    assert FlattenedFile(BytesSource(buf.getvalue())).read(0, p.stat().st_size) == p.read_bytes()
