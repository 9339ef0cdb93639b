"""LKCD v8/v9: the reader against hand-built files (layout from crash lkcd_dump_v8.h and
libkdumpfile src/kdumpfile/lkcd.c ``struct dump_header_v8`` / ``struct dump_page``), and
round trips through our writer."""

from __future__ import annotations

import struct
import zlib

import pytest

from kdumpkit.cli.main import main
from kdumpkit.dump import open_dump
from kdumpkit.dump.base import PageState
from kdumpkit.dump.elf import write_elf
from kdumpkit.dump.fileio import BytesSource
from kdumpkit.dump.lkcd import (
    DUMP_COMPRESSED,
    DUMP_END,
    DUMP_MAGIC,
    DUMP_RAW,
    LkcdDump,
    rle_decode,
    rle_encode,
    write_lkcd,
)
from kdumpkit.dump.sink import FileSink, MemorySink
from kdumpkit.dump.testing import assert_kept_pages_equal, assert_same_pages, synthetic_dump
from kdumpkit.errors import CorruptDumpError, KdumpkitError, UnsupportedError


def _hand_built(byteorder: str = "<", compress: int = 2, version: int = 8, end: bool = True) -> bytes:
    """A v8 (or v9) dump built field by field from the published packed layout: 2 pages."""
    ps = 4096
    uts = b"".join(s.ljust(65, b"\0") for s in (b"Linux", b"host", b"2.6.5-lkcd", b"#1", b"x86_64", b""))
    hdr = struct.pack(f"{byteorder}QIIIIQQQI256sQQ390sQIII", DUMP_MAGIC, version, 742 if version == 9 else 734,
                      0x10, ps, 16, 0, 16 * ps, 2, b"Kernel panic - test", 1_000_000, 5, uts, 0xffff8880000c0000,
                      compress, 0, 0)
    if version == 9:
        hdr += struct.pack(f"{byteorder}Q", 65536)
    assert len(hdr) == (742 if version == 9 else 734)  # offsets per formats.md §8.2
    body = bytearray(hdr.ljust(65536, b"\0"))
    page1 = bytes(range(256)) * 16
    page3 = b"\x07" * ps
    comp = zlib.compress(page3)
    body += struct.pack(f"{byteorder}QII", 1 * ps, ps, DUMP_RAW) + page1
    body += struct.pack(f"{byteorder}QII", 3 * ps, len(comp), DUMP_COMPRESSED) + comp
    if end:
        body += struct.pack(f"{byteorder}QII", 0, 0, DUMP_END)
    return bytes(body)


@pytest.mark.parametrize("bo", ["<", ">"])
def test_hand_built_v8(bo: str) -> None:
    d = LkcdDump(BytesSource(_hand_built(bo)))
    assert d.byteorder == ("little" if bo == "<" else "big")
    assert d.version == 8 and d.page_size == 4096 and d.arch == "x86_64"
    assert d.dumped_runs() == [(1, 2), (3, 4)]
    assert bytes(d.read_page(1)) == bytes(range(256)) * 16
    assert bytes(d.read_page(3)) == b"\x07" * 4096
    assert d.page_state(2) is PageState.NOT_RAM
    info = d.info().details
    assert info["panic_string"] == "Kernel panic - test" and info["release"] == "2.6.5-lkcd"
    assert not d.incomplete


def test_hand_built_v9_and_no_end_record() -> None:
    d = LkcdDump(BytesSource(_hand_built(version=9, end=False)))
    assert d.version == 9 and d.incomplete and d.dumped_runs() == [(1, 2), (3, 4)]


def test_rle_codec() -> None:
    # crash lkcd_uncompress_RLE: 00 00 -> one zero, 00 n v -> n+1 copies of v
    assert rle_decode(b"\x00\x00a\x00\x03bc", 100) == b"\x00abbbbc"
    for page in (bytes(4096), b"ab" * 2048, bytes(range(256)) * 16, b"\x00\x01" * 2048, b"x" * 1000 + bytes(3096)):
        assert rle_decode(rle_encode(page), 4096) == page
    with pytest.raises(CorruptDumpError):
        rle_decode(b"\x00", 10)


@pytest.mark.parametrize("compression", ["gzip", "rle", "none"])
@pytest.mark.parametrize("version", [8, 9])
def test_round_trip(compression: str, version: int) -> None:
    src = synthetic_dump(ram=[(0, 64), (100, 180)], excluded=[(10, 20)], zero_fraction=0.3)
    sink = MemorySink()
    st = write_lkcd(src, sink, compression=compression, version=version)
    d = LkcdDump(BytesSource(bytes(sink.buf)))
    assert d.version == version and not d.incomplete
    assert_same_pages(src, d, check_ram=False)
    assert st.extra["notes_dropped"] == len(src.notes())


def test_any_to_lkcd_and_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = synthetic_dump(ram=[(0, 48), (64, 96)])
    elf = tmp_path / "in.elf"
    with FileSink(str(elf)) as s:
        write_elf(src, s)
    assert main(["convert", str(elf), str(tmp_path / "x.lkcd"), "--format", "lkcd"]) == 0
    with open_dump(str(tmp_path / "x.lkcd")) as d:
        assert d.format_name == "lkcd"
        assert_same_pages(src, d, check_ram=False)
    assert main(["convert", str(tmp_path / "x.lkcd"), str(tmp_path / "back.kdump"), "--format", "kdump"]) == 0
    with open_dump(str(tmp_path / "back.kdump")) as back:
        assert assert_kept_pages_equal(src, back) == 80


def test_incomplete_source_has_no_end_record() -> None:
    src = synthetic_dump(ram=[(0, 32)], missing=[(30, 32)])
    sink = MemorySink()
    write_lkcd(src, sink)
    assert LkcdDump(BytesSource(bytes(sink.buf))).incomplete


def test_corrupt_and_truncated() -> None:
    good = _hand_built()
    with pytest.raises(UnsupportedError):
        LkcdDump(BytesSource(good[:8] + struct.pack("<I", 3) + good[12:]))
    for cut in (8, 100, 65536 + 10, 65536 + 16 + 4096 + 20, len(good) - 4):
        try:
            d = LkcdDump(BytesSource(good[:cut]))
            for s, e in d.dumped_runs():
                d.read_pages(s, e - s)
            assert d.incomplete
        except KdumpkitError:
            pass
    bad = bytearray(good)
    bad[65536 + 12] = 0x40  # unknown flags on the first record
    with pytest.raises(CorruptDumpError):
        LkcdDump(BytesSource(bytes(bad)))


def test_x86_64_arch_header_is_crashs_layout_and_carries_every_cpu() -> None:
    """crash (lkcd_v8.c) derives the CPU count from dha_header_size: 16 + pt_regs + 8 + n × 192 bytes."""
    from kdumpkit.dump.elfnotes import x86_64_prstatus
    from kdumpkit.dump.lkcd import DUMP_ASM_MAGIC, HEADER_V8

    cpus = [x86_64_prstatus({"rip": 0xFFFFFFFF81000000 + i, "rsp": 0xFFFFC90000000000 + 8 * i}, pid=i + 1)
            for i in range(3)]
    src = synthetic_dump(ram=[(0, 16)], ncpus=0, extra_notes=cpus)
    sink = MemorySink()
    write_lkcd(src, sink)
    data = bytes(sink.buf)
    magic, _version, size = struct.unpack_from("<QII", data, HEADER_V8.size)
    assert magic == DUMP_ASM_MAGIC and size == 16 + 168 + 8 + 3 * 192
    ncpus, dumping = struct.unpack_from("<Ii", data, HEADER_V8.size + 16 + 168)
    assert (ncpus, dumping) == (3, 0)
    d = LkcdDump(BytesSource(data))
    notes = d.prstatus_notes()
    assert len(notes) == 3
    for i, n in enumerate(notes):
        rip = struct.unpack_from("<Q", n.desc, 112 + 16 * 8)[0]
        assert rip == 0xFFFFFFFF81000000 + i
    assert d.asm_regs["rip"] == 0xFFFFFFFF81000000
