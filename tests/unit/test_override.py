"""--vmcoreinfo FILE and the memory scan for the kernel's own VMCOREINFO note."""

from __future__ import annotations

import pytest

from kdumpkit.cli.main import main
from kdumpkit.dump.base import Note
from kdumpkit.dump.elfnotes import build_notes
from kdumpkit.dump.lime import write_lime
from kdumpkit.dump.override import VmcoreinfoOverride, load_vmcoreinfo_file, with_vmcoreinfo
from kdumpkit.dump.sink import FileSink
from kdumpkit.dump.testing import default_vmcoreinfo, synthetic_dump
from kdumpkit.errors import UsageError
from kdumpkit.kernel.vmcoreinfo_scan import scan_vmcoreinfo

TEXT = default_vmcoreinfo(osrelease="6.1.0-scanned").encode()


def _page_with_note(offset: int, text: bytes = TEXT) -> dict[int, bytes]:
    """The kernel's vmcoreinfo_note (Elf_Nhdr, "VMCOREINFO\\0" padded, text) at ``offset`` in RAM."""
    note = build_notes([Note("VMCOREINFO", 0, text)])
    buf = bytearray(4096 * 4)
    buf[offset % 4096:offset % 4096 + len(note)] = note
    base = offset // 4096
    return {base + i: bytes(buf[i * 4096:(i + 1) * 4096]) for i in range(4)}


@pytest.mark.parametrize("offset", [0x5000 + 0x100, 0x9000 + 4096 - 20])  # inside a page; across pages
def test_scan_finds_note(offset: int) -> None:
    src = synthetic_dump(ram=[(0, 64)], vmcoreinfo="", pages=_page_with_note(offset), random_fraction=0.5)
    hit = scan_vmcoreinfo(src, block_bytes=4096 * 8)  # small blocks: notes cross block boundaries too
    assert hit is not None and hit[0] == TEXT and hit[1] == offset


def test_scan_rejects_stray_strings_and_respects_limit() -> None:
    stray = bytearray(4096)
    stray[100:100 + 22] = b"VMCOREINFO\0\0OSRELEASE="  # no note header
    src = synthetic_dump(ram=[(0, 64)], vmcoreinfo="", pages={3: bytes(stray)} | _page_with_note(0x30000))
    assert scan_vmcoreinfo(src, limit_bytes=0x20000) is None
    assert scan_vmcoreinfo(src) == (TEXT, 0x30000)


def test_with_vmcoreinfo_sources(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = synthetic_dump(ram=[(0, 64)], vmcoreinfo="", pages=_page_with_note(0x8000))
    scanned = with_vmcoreinfo(src)
    assert isinstance(scanned, VmcoreinfoOverride) and scanned.vmcoreinfo_raw() == TEXT
    assert "memory scan" in scanned.info().details["vmcoreinfo_source"]
    assert with_vmcoreinfo(src, "none") is src
    f = tmp_path / "vmcoreinfo.txt"
    f.write_bytes(b"OSRELEASE=9.9.9-file\nPAGESIZE=4096\n")
    over = with_vmcoreinfo(synthetic_dump(ram=[(0, 8)]), str(f))
    vm = [n for n in over.notes() if n.name == "VMCOREINFO"]
    assert len(vm) == 1 and vm[0].desc.startswith(b"OSRELEASE=9.9.9-file")
    assert len(over.prstatus_notes()) == 2  # other notes pass through


def test_load_file_forms(tmp_path) -> None:  # type: ignore[no-untyped-def]
    note = tmp_path / "note.bin"
    note.write_bytes(build_notes([Note("VMCOREINFO", 0, TEXT)]))
    assert load_vmcoreinfo_file(str(note)) == TEXT
    bad = tmp_path / "bad"
    bad.write_bytes(b"hello")
    with pytest.raises(UsageError):
        load_vmcoreinfo_file(str(bad))
    with pytest.raises(UsageError):
        load_vmcoreinfo_file(str(tmp_path / "missing"))


def test_cli_info_and_convert(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    src = synthetic_dump(ram=[(0, 64)], pages=_page_with_note(0x8000))
    lime = tmp_path / "mem.lime"
    with FileSink(str(lime)) as s:
        write_lime(src, s)  # LiME drops the notes; the kernel's copy is still in memory
    assert main(["info", "--json", str(lime)]) == 0
    out = capsys.readouterr().out
    assert "6.1.0-scanned" in out and "memory scan" in out
    f = tmp_path / "vmci"
    f.write_bytes(default_vmcoreinfo(osrelease="6.1.0-given").encode())
    assert main(["convert", str(lime), str(tmp_path / "out.elf"), "-f", "elf", "--vmcoreinfo", str(f)]) == 0
    from kdumpkit.dump import open_dump

    with open_dump(str(tmp_path / "out.elf")) as d:
        raw = d.vmcoreinfo_raw()
        assert raw is not None and b"6.1.0-given" in raw
