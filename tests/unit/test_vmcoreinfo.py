"""VMCOREINFO parsing: key families, first-match, partial lines, constructors."""

from __future__ import annotations

import pytest

from kdumpkit.dump.base import Note
from kdumpkit.errors import KernelError, VmcoreinfoMissingError
from kdumpkit.kernel.testing import PhysMem, SparseDump
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo, parse_vmcoreinfo

TEXT = b"""OSRELEASE=6.1.0-18-amd64
BUILD-ID=0123456789ABCDEF0123456789abcdef01234567
PAGESIZE=4096
SYMBOL(init_uts_ns)=ffffffff8a613640
SYMBOL(swapper_pg_dir)=ffffffff8a40a000
OFFSET(uts_namespace.name)=0
SIZE(page)=64
LENGTH(mem_section)=2048
NUMBER(VMALLOC_START)=0xffffb2a680000000
NUMBER(phys_base)=-1073741824
NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129
NUMBER(pgtable_l5_enabled)=0
KERNELOFFSET=9000000
CONFIG_X86_PAE=y
SIZE(page)=128
CRASHTIME=1715000000
NUMBER(truncated)=12"""


def test_key_families() -> None:
    info = VmcoreInfo.from_text(TEXT)
    assert info.osrelease == "6.1.0-18-amd64"
    assert info.build_id == "0123456789abcdef0123456789abcdef01234567"
    assert info.page_size == 4096
    assert info.symbol("init_uts_ns") == 0xFFFFFFFF8A613640
    assert info.offset("uts_namespace.name") == 0
    assert info.length("mem_section") == 2048
    assert info.number("VMALLOC_START") == 0xFFFFB2A680000000
    assert info.number("phys_base") == -1073741824
    assert info.number("PAGE_BUDDY_MAPCOUNT_VALUE") == -129
    assert info.number("pgtable_l5_enabled") == 0
    assert info.kerneloffset == 0x9000000
    assert info.config("X86_PAE") == "y"
    assert info.config("CONFIG_X86_PAE") == "y"
    assert info.crashtime == 1715000000
    assert info.kernel_version() == (6, 1, 0)


def test_first_match_wins_like_makedumpfile() -> None:
    assert VmcoreInfo.from_text(TEXT).size("page") == 64


def test_partial_last_line_ignored() -> None:
    info = VmcoreInfo.from_text(TEXT)
    assert info.number("truncated") is None
    assert "NUMBER(truncated)" not in info.raw


def test_absent_keys_are_none() -> None:
    info = VmcoreInfo.from_text(b"OSRELEASE=x\n")
    for value in (info.symbol("prb"), info.size("x"), info.offset("a.b"), info.length("y"), info.number("z"),
                  info.config("FOO"), info.get("NOPE"), info.page_size, info.crashtime, info.kerneloffset,
                  info.build_id):
        assert value is None


def test_zero_is_a_value_not_absent() -> None:
    info = VmcoreInfo.from_text(b"NUMBER(phys_base)=0\n")
    assert info.number("phys_base") == 0


def test_nul_padding_and_garbage_lines() -> None:
    raw = parse_vmcoreinfo(b"no equals sign\n=novalue\nA=1\n\0\0\0B=2\n")
    assert raw == {"A": "1"}


def test_malformed_number_is_kernel_error() -> None:
    info = VmcoreInfo.from_text(b"SIZE(page)=zz\nSYMBOL(x)=nothex\n")
    with pytest.raises(KernelError):
        info.size("page")
    with pytest.raises(KernelError):
        info.symbol("x")


def test_decimal_with_trailing_chars_is_retried_as_hex() -> None:
    # makedumpfile: strtol(10) leaves trailing characters -> strtol(16)
    assert VmcoreInfo.from_text(b"NUMBER(x)=1f\n").number("x") == 0x1F


def test_kernel_version_variants() -> None:
    assert VmcoreInfo.from_text(b"OSRELEASE=5.10.0-28-amd64\n").kernel_version() == (5, 10, 0)
    assert VmcoreInfo.from_text(b"OSRELEASE=3.2.0-4\n").kernel_version() == (3, 2, 0)
    assert VmcoreInfo.from_text(b"OSRELEASE=2.6.32\n").kernel_version() == (2, 6, 32)
    assert VmcoreInfo.from_text(b"OSRELEASE=6.8\n").kernel_version() == (6, 8, 0)


def test_from_dump_and_missing() -> None:
    mem = PhysMem()
    dump = SparseDump(mem, notes=[Note("VMCOREINFO", 0, TEXT)])
    assert VmcoreInfo.from_dump(dump).osrelease == "6.1.0-18-amd64"
    with pytest.raises(VmcoreinfoMissingError):
        VmcoreInfo.from_dump(SparseDump(mem))
    with pytest.raises(VmcoreinfoMissingError):
        VmcoreInfo.from_dump(SparseDump(mem, notes=[Note("VMCOREINFO", 0, b"\0" * 64)]))


def test_from_file(tmp_path: object) -> None:
    import pathlib

    p = pathlib.Path(str(tmp_path)) / "vmcoreinfo"
    p.write_bytes(TEXT)
    assert VmcoreInfo.from_file(str(p)).page_size == 4096
    with pytest.raises(KernelError):
        VmcoreInfo.from_file(str(p) + ".missing")
    empty = pathlib.Path(str(tmp_path)) / "empty"
    empty.write_bytes(b"")
    with pytest.raises(VmcoreinfoMissingError):
        VmcoreInfo.from_file(str(empty))


def test_from_live_errors_are_clear(tmp_path: object) -> None:
    import pathlib

    d = pathlib.Path(str(tmp_path))
    with pytest.raises(VmcoreinfoMissingError):
        VmcoreInfo.from_live(sysfs=str(d / "nope"))
    (d / "vmcoreinfo").write_text("1d6e0e0 1024\n")
    with pytest.raises(KernelError, match="cannot open"):
        VmcoreInfo.from_live(sysfs=str(d / "vmcoreinfo"), kcore=str(d / "kcore"))


def test_from_live_reads_note_through_kcore(tmp_path: object) -> None:
    """A fake /proc/kcore: one RAM PT_LOAD whose p_paddr covers the note."""
    import pathlib
    import struct

    from kdumpkit.dump.elfnotes import build_notes

    d = pathlib.Path(str(tmp_path))
    note = build_notes([Note("VMCOREINFO", 0, TEXT)])
    paddr, seg_off, seg_len = 0x100000, 0x1000, 0x2000
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 4, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 7, seg_off, 0xFFFF888000100000, paddr, seg_len, seg_len, 0x1000)
    img = bytearray(seg_off + seg_len)
    img[:len(ehdr)] = ehdr
    img[64:64 + len(phdr)] = phdr
    img[seg_off + 0x80:seg_off + 0x80 + len(note)] = note
    (d / "kcore").write_bytes(bytes(img))
    (d / "vmcoreinfo").write_text(f"{paddr + 0x80:x} {len(note):x}\n")
    info = VmcoreInfo.from_live(sysfs=str(d / "vmcoreinfo"), kcore=str(d / "kcore"))
    assert info.osrelease == "6.1.0-18-amd64"
