"""kdump-compressed reader and writer: round trips from synthetic dumps, and hostile input."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kdumpkit.dump.base import Note, PageState
from kdumpkit.dump.codecs import FLAG_INCOMPLETE, FLAG_ZLIB
from kdumpkit.dump.fileio import BytesSource
from kdumpkit.dump.kdump import (
    DISK_DUMP_HEADER_32,
    DISK_DUMP_HEADER_64,
    KDUMP_SUB_HEADER_32_PACKED,
    KDUMP_SUB_HEADER_32_PADDED,
    KDUMP_SUB_HEADER_64,
    PAGE_DESC,
    KdumpFile,
    bitmap_runs,
    header_layout,
    set_bitmap_runs,
    write_kdump,
)
from kdumpkit.dump.sink import MemorySink, Sink
from kdumpkit.dump.testing import assert_same_pages, synthetic_dump
from kdumpkit.errors import KdumpkitError, NotADumpError, PageExcludedError, PageMissingError, PageNotInRAMError

CODECS = ["zlib", "lzo", "snappy", "zstd", None]


def _src(**kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {"ram": [(0, 256), (512, 1024), (1030, 1100)], "excluded": [(600, 620), (1031, 1033)]}
    args.update(kw)
    return synthetic_dump(**args)  # type: ignore[arg-type]


def _write(src, **kw: object) -> bytes:  # type: ignore[no-untyped-def]
    sink = MemorySink()
    write_kdump(src, sink, **kw)  # type: ignore[arg-type]
    return bytes(sink.buf)


def test_struct_sizes_match_the_c_layouts() -> None:
    assert DISK_DUMP_HEADER_64.size == 464 and DISK_DUMP_HEADER_64.offsetof("tv_sec") == 408
    assert DISK_DUMP_HEADER_64.offsetof("status") == 424 and DISK_DUMP_HEADER_64.offsetof("nr_cpus") == 460
    assert DISK_DUMP_HEADER_32.size == 452 and DISK_DUMP_HEADER_32.offsetof("status") == 412
    assert KDUMP_SUB_HEADER_64.size == 104 and KDUMP_SUB_HEADER_64.offsetof("max_mapnr_64") == 96
    assert KDUMP_SUB_HEADER_32_PACKED.size == 80 and KDUMP_SUB_HEADER_32_PACKED.offsetof("offset_vmcoreinfo") == 20
    assert KDUMP_SUB_HEADER_32_PADDED.size == 96 and KDUMP_SUB_HEADER_32_PADDED.offsetof("offset_note") == 40
    assert PAGE_DESC.size == 24
    assert header_layout("i686", "little")[1].name == KDUMP_SUB_HEADER_32_PACKED.name
    assert header_layout("armv7l", "little")[1].name == KDUMP_SUB_HEADER_32_PADDED.name
    assert header_layout("aarch64", "little")[0].size == 464


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("exclude_zero", [False, True])
def test_round_trip_every_codec(codec: str | None, exclude_zero: bool) -> None:
    src = _src()
    data = _write(src, codec=codec, exclude_zero=exclude_zero)
    k = KdumpFile(BytesSource(data))
    assert_same_pages(src, k)
    assert k.notes() == src.notes()
    assert len(k.prstatus_notes()) == 2
    assert k.vmcoreinfo_raw() == src.vmcoreinfo_raw()
    info = k.info().details
    assert info["compression"] == (codec or "none")
    assert info["nr_cpus"] == 2 and info["header_version"] == 6 and not info["incomplete"]
    assert info["utsname.release"] == "6.1.0-synthetic" and info["utsname.machine"] == "x86_64"
    assert info["timestamp"] == 1_700_000_000
    assert k.page_state(300) is PageState.NOT_RAM
    assert k.page_state(605) is PageState.EXCLUDED
    assert k.page_state(1032) is PageState.EXCLUDED
    assert k.page_state(5000) is PageState.NOT_RAM
    with pytest.raises(PageExcludedError):
        k.read_page(605)
    with pytest.raises(PageNotInRAMError):
        k.read_page(300)
    assert k.read(605 * 4096, 8, zero_excluded=True) == bytes(8)


def test_shared_zero_page_and_raw_fallback() -> None:
    src = _src(zero_fraction=0.3, random_fraction=0.3)
    k = KdumpFile(BytesSource(_write(src, codec="zlib", exclude_zero=True)))
    zero_off = k.zero_page_offset()
    assert zero_off is not None
    kinds = src.page_kinds(0, 256)
    descs = dict(k.iter_descs())
    for pfn in range(256):
        d = descs[pfn]
        if kinds[pfn] == 0:  # zero page: the one shared descriptor
            assert (d.offset, d.size, d.flags) == (zero_off, 4096, 0)
        elif kinds[pfn] == 2:  # random: not compressible, stored raw
            assert (d.size, d.flags) == (4096, 0)
        else:
            assert d.size < 4096 and d.flags == FLAG_ZLIB
    assert k.info().details["dump_level"] & 1


def test_without_exclude_zero_zero_pages_are_compressed_each() -> None:
    src = _src(zero_fraction=0.5)
    k = KdumpFile(BytesSource(_write(src, codec="zlib")))
    assert k.zero_page_offset() is None
    offs = [d.offset for _, d in k.iter_descs()]
    assert len(set(offs)) == len(offs)


def test_header_fields_like_makedumpfile() -> None:
    vmci = "OSRELEASE=5.10.0-x\nPAGESIZE=4096\nNUMBER(phys_base)=16777216\nCRASHTIME=1234\n"
    src = _src(vmcoreinfo=vmci, ncpus=3)
    data = _write(src, codec="lzo", utsname={"nodename": "box", "version": "#1 SMP"})
    h = DISK_DUMP_HEADER_64.unpack(data)
    assert h.signature == b"KDUMP   " and h.header_version == 6 and h.block_size == 4096
    assert h.status == 0x02 and h.nr_cpus == 3 and h.tv_sec == 1234 and h.max_mapnr == 1100
    sub = KDUMP_SUB_HEADER_64.unpack(data, 4096)
    assert sub.offset_note == 4096 + 104 and sub.phys_base == 16777216 and sub.max_mapnr_64 == 1100
    assert data[sub.offset_vmcoreinfo:sub.offset_vmcoreinfo + sub.size_vmcoreinfo] == vmci.encode()
    assert h.sub_hdr_size == -(-(104 + sub.size_note) // 4096)
    assert h.bitmap_blocks == 2  # 1100 bits fit one block per bitmap
    k = KdumpFile(BytesSource(data))
    assert k.utsname()["nodename"] == "box" and k.utsname()["version"] == "#1 SMP"
    assert k.info().details["phys_base"] == 16777216


def test_pfn_range_restricts_dumped_pages() -> None:
    src = _src()
    k = KdumpFile(BytesSource(_write(src, codec="zstd", pfn_range=(100, 700))))
    assert k.dumped_runs() == [(100, 256), (512, 600), (620, 700)]
    assert k.ram_runs() == src.ram_runs()
    assert k.page_state(50) is PageState.EXCLUDED


@pytest.mark.parametrize("page_size,arch", [(16384, "aarch64"), (4096, "i686"), (4096, "armv7l")])
def test_other_page_sizes_and_32bit_layouts(page_size: int, arch: str) -> None:
    src = synthetic_dump(ram=[(0, 40), (64, 100)], excluded=[(70, 72)], page_size=page_size, arch=arch)
    data = _write(src, codec="zlib", exclude_zero=True)
    k = KdumpFile(BytesSource(data))
    assert k.page_size == page_size and k.arch == arch
    assert_same_pages(src, k)
    assert k.notes() == src.notes()


def test_large_sparse_bitmap_runs_are_vectorised() -> None:
    nbits = 1 << 26  # 256 GiB of 4 KiB pages
    bm = np.zeros(nbits // 8, dtype=np.uint8)
    runs = [(0, 3), (5, 8 << 20), ((8 << 20) + 1, (8 << 20) + 2), (40_000_000, nbits - 7)]
    set_bitmap_runs(bm, runs)
    assert bitmap_runs(bm, nbits) == runs
    assert bitmap_runs(bm, 40_000_010) == runs[:3] + [(40_000_000, 40_000_010)]


class _Abort(Exception):
    pass


class _DyingSink(Sink):
    """Forwards writes until ``limit`` page-data writes, then fails (a killed writer)."""

    def __init__(self, inner: MemorySink, data_from: int, limit: int) -> None:
        self.inner, self.data_from, self.limit = inner, data_from, limit

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if offset >= self.data_from:
            if self.limit == 0:
                raise _Abort()
            self.limit -= 1
        self.inner.pwrite(offset, data)


@pytest.mark.parametrize("exclude_zero", [False, True])
def test_killed_writer_leaves_incomplete_dump_with_missing_pages(exclude_zero: bool) -> None:
    src = synthetic_dump(ram=[(0, 2000)])
    full = KdumpFile(BytesSource(_write(src, codec="zlib", exclude_zero=exclude_zero)))
    data_from = full._desc_off + 2000 * 24
    inner = MemorySink()
    with pytest.raises(_Abort):
        write_kdump(src, _DyingSink(inner, data_from, 3 + int(exclude_zero)), codec="zlib", exclude_zero=exclude_zero)
    k = KdumpFile(BytesSource(bytes(inner.buf)))
    assert k.incomplete and k.info().details["incomplete"]
    assert k.status & FLAG_INCOMPLETE
    assert k.dumped_runs() == [(0, 768)]  # three 256-page batches made it
    assert k.page_state(767) is PageState.DUMPED and k.page_state(768) is PageState.MISSING
    with pytest.raises(PageMissingError):
        k.read_page(1999)
    assert k.read(1999 * 4096, 4, zero_excluded=True) == bytes(4)
    assert bytes(k.read_pages(0, 768)) == src.page_contents(0, 768)


def test_killed_before_any_page() -> None:
    src = synthetic_dump(ram=[(0, 300)])
    inner = MemorySink()
    with pytest.raises(_Abort):
        write_kdump(src, _DyingSink(inner, 3 * 4096 + 1, 0), codec="zlib")
    k = KdumpFile(BytesSource(bytes(inner.buf)))
    assert k.incomplete and k.dumped_runs() == []
    assert k.page_state(10) is PageState.MISSING


def test_diskdump_single_bitmap_and_old_header_version() -> None:
    src = synthetic_dump(ram=[(0, 64)], zero_fraction=0)
    data = bytearray(_write(src, codec=None))
    h = DISK_DUMP_HEADER_64.unpack(data)
    # rewrite as header_version 2 (no notes, 32-bit pfn fields) ...
    old = bytearray(data)
    struct.pack_into("<i", old, 8, 2)
    struct.pack_into("<Q", old, 4096 + 16, 0)
    k = KdumpFile(BytesSource(bytes(old)))
    assert k.header_version == 2 and k.notes() == [] and k.max_mapnr == 64
    assert_same_pages(src, k)
    # ... and as a DISKDUMP with one bitmap: drop the 2nd bitmap block
    bs = 4096
    bm_off = (1 + h.sub_hdr_size) * bs
    dd = bytearray(data[:bm_off + bs]) + data[bm_off + 2 * bs:]
    dd[0:8] = b"DISKDUMP"
    struct.pack_into("<I", dd, DISK_DUMP_HEADER_64.offsetof("bitmap_blocks"), 1)
    # descriptors moved one block down: fix their data offsets
    desc_off = bm_off + bs
    for i in range(64):
        o = desc_off + i * 24
        (off,) = struct.unpack_from("<q", dd, o)
        struct.pack_into("<q", dd, o, off - bs)
    k2 = KdumpFile(BytesSource(bytes(dd)))
    assert k2.bitmap_count == 1 and k2.is_diskdump
    assert_same_pages(src, k2)


def test_big_endian_dump_round_trips() -> None:
    src = synthetic_dump(ram=[(0, 64)], arch="s390x")
    src.byteorder = "big"
    data = _write(src, codec="zlib")
    assert data[8:12] == b"\0\0\0\x06"
    k = KdumpFile(BytesSource(data))
    assert k.byteorder == "big"
    assert_same_pages(src, k)


def test_notes_without_vmcoreinfo() -> None:
    src = synthetic_dump(ram=[(0, 16)], vmcoreinfo="", extra_notes=[Note("CORE", 3, b"x" * 10)])
    k = KdumpFile(BytesSource(_write(src)))
    assert k.vmcoreinfo_raw() is None and k.notes() == src.notes()
    assert k.utsname()["release"] == ""


def test_probe_and_not_a_dump() -> None:
    assert not KdumpFile.probe(BytesSource(b"KDUMP"))
    assert KdumpFile.probe(BytesSource(b"KDUMP   " + bytes(100)))
    with pytest.raises(NotADumpError):
        KdumpFile(BytesSource(b"\x7fELF" + bytes(1000)))


def _corruptions(data: bytes) -> list[bytes]:
    hs = DISK_DUMP_HEADER_64
    out = [data[:n] for n in (8, 100, 463, 464, 4096, 4200, 8192, 8192 + 4096, len(data) - 1, len(data) // 2)]
    for field, value in [("block_size", 0), ("block_size", 4095), ("block_size", -4096), ("sub_hdr_size", -1),
                         ("sub_hdr_size", 1 << 30), ("bitmap_blocks", 0), ("bitmap_blocks", 0xFFFFFFFF),
                         ("max_mapnr", 0xFFFFFFFF), ("header_version", 0x7FFFFFFF)]:
        b = bytearray(data)
        fmt = "<" + dict(hs.fields)[field]
        struct.pack_into(fmt, b, hs.offsetof(field), value)
        out.append(bytes(b))
    for off, fmt, value in [(4096 + 96, "<Q", 1 << 60), (4096 + 48, "<q", -5), (4096 + 56, "<Q", 1 << 40),
                            (4096 + 32, "<q", 1 << 50), (4096 + 12, "<i", 1), (4096 + 80, "<Q", 1 << 40)]:
        b = bytearray(data)
        struct.pack_into(fmt, b, off, value)
        out.append(bytes(b))
    k = KdumpFile(BytesSource(data))
    for value in [0, -1, 1 << 62, len(data) - 10]:
        b = bytearray(data)
        struct.pack_into("<q", b, k._desc_off + 5 * 24, value)
        out.append(bytes(b))
    for value in [0, 4097, 0xFFFFFFFF, 7]:
        b = bytearray(data)
        struct.pack_into("<I", b, k._desc_off + 6 * 24 + 8, value)
        out.append(bytes(b))
    b = bytearray(data)
    struct.pack_into("<I", b, k._desc_off + 7 * 24 + 12, 0x40)
    out.append(bytes(b))
    return out


@pytest.mark.parametrize("codec", ["zlib", None])
def test_corrupt_and_truncated_raise_only_kdumpkit_errors(codec: str | None) -> None:
    src = synthetic_dump(ram=[(0, 64)], zero_fraction=0.1, random_fraction=0.2)
    data = _write(src, codec=codec, exclude_zero=True)
    for bad in _corruptions(data):
        try:
            k = KdumpFile(BytesSource(bad))
            k.info()
            k.notes()
            for s, e in k.dumped_runs():
                for pfn in range(s, e):
                    k.read_page(pfn)
            for pfn in range(0, 70):
                k.page_state(pfn)
        except KdumpkitError:
            pass


def test_workers_give_identical_output_and_progress() -> None:
    src = synthetic_dump(ram=[(0, 1500)], excluded=[(700, 710)])
    seen: list[tuple[int, int]] = []
    one = _write(src, codec="zlib", exclude_zero=True, progress=lambda d, t: seen.append((d, t)))
    two = _write(src, codec="zlib", exclude_zero=True, workers=2)
    assert one == two
    assert seen[-1] == (1490, 1490) and all(a[0] < b[0] for a, b in zip(seen, seen[1:], strict=False))
    assert _write(src, codec="lzo", workers=2) == _write(src, codec="lzo")
