"""ELF core reading and writing on synthetic dumps."""

from __future__ import annotations

import struct

import pytest

from kdumpkit.dump.base import PageState
from kdumpkit.dump.elf import ElfDump, write_elf
from kdumpkit.dump.fileio import BytesSource
from kdumpkit.dump.sink import MemorySink
from kdumpkit.dump.testing import assert_same_pages, synthetic_dump
from kdumpkit.errors import KdumpkitError, NotADumpError, UsageError


def _elf_bytes(src, **kw) -> bytes:
    sink = MemorySink()
    write_elf(src, sink, **kw)
    return bytes(sink.buf)


def test_round_trip_keeps_ram_excluded_holes_and_notes() -> None:
    src = synthetic_dump(ram=[(0, 100), (160, 400)], excluded=[(0, 3), (20, 30), (390, 400)])
    data = _elf_bytes(src)
    back = ElfDump(BytesSource(data))
    assert back.ram_runs() == src.ram_runs()
    assert back.dumped_runs() == src.dumped_runs()
    assert back.notes() == src.notes()
    assert_same_pages(src, back)
    assert back.page_state(25) is PageState.EXCLUDED
    assert back.page_state(120) is PageState.NOT_RAM
    assert back.page_state(0) is PageState.EXCLUDED
    assert not back.incomplete
    assert back.arch == "x86_64"


def test_crash_conventions_note_first_and_p_align_zero() -> None:
    data = _elf_bytes(synthetic_dump(ram=[(0, 64)]))
    phoff = struct.unpack_from("<Q", data, 32)[0]
    phnum = struct.unpack_from("<H", data, 56)[0]
    types = [struct.unpack_from("<I", data, phoff + i * 56)[0] for i in range(phnum)]
    assert types[0] == 4 and all(t == 1 for t in types[1:])
    aligns = [struct.unpack_from("<Q", data, phoff + i * 56 + 48)[0] for i in range(phnum)]
    assert set(aligns) == {0}


def test_exclude_zero_drops_zero_pages() -> None:
    src = synthetic_dump(ram=[(0, 512)], zero_fraction=0.3)
    back = ElfDump(BytesSource(_elf_bytes(src, exclude_zero=True)))
    for pfn in range(512):
        zero = not any(bytes(src.read_page(pfn)))
        assert (back.page_state(pfn) is PageState.EXCLUDED) == zero
        if not zero:
            assert bytes(back.read_page(pfn)) == bytes(src.read_page(pfn))


def test_elf32_round_trip_and_refusal_above_4g() -> None:
    src = synthetic_dump(ram=[(0, 64)])
    back = ElfDump(BytesSource(_elf_bytes(src, elf_class=32)))
    assert back.elf_class == 32
    assert_same_pages(src, back)
    with pytest.raises(UsageError):
        _elf_bytes(synthetic_dump(ram=[(0x100000, 0x100010)]), elf_class=32)


def test_pn_xnum_many_segments() -> None:
    # 70,000 one-page runs separated by holes: more phdrs than e_phnum can hold.
    ram = [(2 * i, 2 * i + 1) for i in range(66_000)]
    src = synthetic_dump(ram=ram, zero_fraction=0, random_fraction=0)
    src._read_dumped = lambda pfn, n: bytes(4096 * n)  # type: ignore[method-assign]  # contents don't matter here
    data = _elf_bytes(src)
    assert struct.unpack_from("<H", data, 56)[0] == 0xFFFF
    back = ElfDump(BytesSource(data))
    assert back.ram_runs() == src.ram_runs()


def test_truncated_file_is_incomplete_with_missing_pages() -> None:
    src = synthetic_dump(ram=[(0, 256)])
    data = _elf_bytes(src)
    cut = ElfDump(BytesSource(data[: len(data) - 10 * 4096 - 100]))
    assert cut.incomplete
    assert cut.page_state(255) is PageState.MISSING
    assert cut.page_state(200) is PageState.DUMPED


def test_proc_vmcore_layout_overlapping_text_segment() -> None:
    """Build what /proc/vmcore looks like: notes, a text PT_LOAD overlapping RAM."""
    ps = 4096
    ram_pages = 64
    phnum = 3
    ehdr_size, phdr_size = 64, 56
    notes = b""
    hdr_end = ps
    data_off = hdr_end
    text_off = data_off
    ram_off = text_off + 16 * ps
    body = bytes(range(256)) * (ram_pages * ps // 256)
    out = bytearray(ram_off + ram_pages * ps)
    out[0:4] = b"\x7fELF"
    out[4:7] = bytes([2, 1, 1])
    struct.pack_into("<HHIQQQIHHHHHH", out, 16, 4, 62, 1, 0, ehdr_size, 0, 0, ehdr_size, phdr_size, phnum, 0, 0, 0)
    ph = ehdr_size
    struct.pack_into("<IIQQQQQQ", out, ph, 4, 0, hdr_end, 0, 0, len(notes), len(notes), 0)
    struct.pack_into("<IIQQQQQQ", out, ph + 56, 1, 7, text_off, 0xFFFFFFFF81000000, 0x1000000 - 0xFF0000 + 0x20000,
                     16 * ps, 16 * ps, 0)
    struct.pack_into("<IIQQQQQQ", out, ph + 112, 1, 7, ram_off, 0xFFFF888000000000, 0, ram_pages * ps, ram_pages * ps, 0)
    out[ram_off:] = body
    out[text_off:text_off + 16 * ps] = body[0x30000:0x30000 + 16 * ps]
    d = ElfDump(BytesSource(bytes(out)))
    assert d.ram_runs() == [(0, 64)]
    assert d.direct_map_base() == 0xFFFF888000000000
    for pfn in range(64):
        assert bytes(d.read_page(pfn)) == body[pfn * ps:(pfn + 1) * ps]


@pytest.mark.parametrize("blob", [b"", b"\x7fELF", b"\x7fELF\x02\x01\x01" + bytes(9), b"\x7fELF\x09\x01" + bytes(60)])
def test_garbage_raises_only_kdumpkit_errors(blob: bytes) -> None:
    with pytest.raises(KdumpkitError):
        ElfDump(BytesSource(blob))


def test_not_a_core() -> None:
    data = bytearray(_elf_bytes(synthetic_dump(ram=[(0, 4)])))
    data[16] = 2  # ET_EXEC
    with pytest.raises(NotADumpError):
        ElfDump(BytesSource(bytes(data)))
