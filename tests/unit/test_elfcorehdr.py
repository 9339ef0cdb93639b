"""elfcorehdr: the bytes we build, read back independently, and replayed into what /proc/vmcore shows."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.dump.base import Note
from kdumpkit.dump.elf import PHDR64
from kdumpkit.dump.elfnotes import build_notes, parse_notes
from kdumpkit.errors import ConfigError, CorruptDumpError
from kdumpkit.kexec.elfcorehdr import (
    KernelText,
    NoteRegion,
    build_elfcorehdr,
    read_cpu_notes,
    read_elfcorehdr,
    read_kallsyms,
    read_vmcoreinfo_region,
    vmcore_view,
)
from kdumpkit.kexec.iomem import crash_memory_ranges, e820_from_console, from_e820, parse_iomem

M = 1 << 20
PAGE_OFFSET = 0xFFFF888000000000


def _small_reader(buf: bytes) -> tuple[tuple[Any, ...], list[tuple[int, ...]]]:
    """An ELF64 reader written with struct formats, independent of kdumpkit.dump.elf's declarations."""
    eh = struct.unpack_from("<16sHHIQQQIHHHHHH", buf, 0)
    phoff, phentsize, phnum = eh[5], eh[9], eh[10]
    return eh, [struct.unpack_from("<IIQQQQQQ", buf, phoff + i * phentsize) for i in range(phnum)]


def test_header_reads_back() -> None:
    notes = [NoteRegion(0x7FC1E000 + i * 0x1000, 368) for i in range(4)]
    ram = [(0x100000, 0x6F000000), (0x7F000000, 0xBFFDF000)]
    hdr = build_elfcorehdr(notes, NoteRegion(0x3C2E000, 0x1024), KernelText(0xFFFFFFFF81000000, 0x1000000, 0x2C00000),
                           ram, page_offset=PAGE_OFFSET)
    assert len(hdr) == 4096
    eh, ph = _small_reader(hdr)
    ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, ehsize, phentsize, phnum = eh[:11]
    assert ident[:7] == b"\x7fELF\x02\x01\x01" and ident[7:] == bytes(9)
    assert (e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags) == (4, 62, 1, 0, 64, 0, 0)
    assert (ehsize, phentsize, phnum) == (64, 56, 4 + 1 + 1 + 2)
    # (p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align)
    assert ph[0] == (4, 0, 0x7FC1E000, 0, 0x7FC1E000, 368, 368, 0)
    assert ph[3] == (4, 0, 0x7FC21000, 0, 0x7FC21000, 368, 368, 0)
    assert ph[4] == (4, 0, 0x3C2E000, 0, 0x3C2E000, 0x1024, 0x1024, 0)
    assert ph[5] == (1, 7, 0x1000000, 0xFFFFFFFF81000000, 0x1000000, 0x2C00000, 0x2C00000, 0)
    assert ph[6] == (1, 7, 0x100000, PAGE_OFFSET + 0x100000, 0x100000, 0x6EF00000, 0x6EF00000, 0)
    assert ph[7] == (1, 7, 0x7F000000, PAGE_OFFSET + 0x7F000000, 0x7F000000, 0x40FDF000, 0x40FDF000, 0)
    # and kdumpkit's own reader agrees
    _, phdrs = read_elfcorehdr(hdr)
    assert [tuple(p.values()) for p in phdrs] == ph


def test_optional_parts_and_errors() -> None:
    hdr = build_elfcorehdr([], None, None, [(0x100000, 0x200000)])
    _, ph = _small_reader(hdr)
    assert ph == [(1, 7, 0x100000, 0, 0x100000, 0x100000, 0x100000, 0)]
    with pytest.raises(ConfigError):
        build_elfcorehdr([], None, None, [(0x200000, 0x100000)])
    with pytest.raises(CorruptDumpError):
        read_elfcorehdr(b"not an elf" * 10)


def test_vmcore_view_merges_notes_and_places_loads() -> None:
    cpu0 = build_notes([Note("CORE", 1, b"\x11" * 336)]) + bytes(12)       # terminator
    cpu1 = bytes(368)                                                        # a CPU that never saved its state
    vmci = build_notes([Note("VMCOREINFO", 0, b"OSRELEASE=6.1.0\nPAGESIZE=4096\n")]) + bytes(12)
    memory = {0x5000: cpu0, 0x6000: cpu1, 0x7000: vmci}

    def read_phys(addr: int, size: int) -> bytes:
        return (memory[addr] + bytes(size))[:size]

    hdr = build_elfcorehdr([NoteRegion(0x5000, 368), NoteRegion(0x6000, 368)], NoteRegion(0x7000, 0x1024), None,
                           [(0x100000, 0x180800), (0x200000, 0x300000)])
    phdrs, notes = vmcore_view(hdr, read_phys)
    assert [n.name for n in parse_notes(notes)] == ["CORE", "VMCOREINFO"]
    assert phdrs[0].p_type == 4 and phdrs[0].p_offset == 4096 and phdrs[0].p_filesz == len(notes)
    assert phdrs[1].p_offset == 8192 and phdrs[1].p_memsz == 0x80800
    assert phdrs[2].p_offset == 8192 + 0x81000  # page-rounded region of the previous segment


# -- sysfs readers on a fixture tree ---------------------------------------------------
def test_read_inputs_from_sysfs(tmp_path: Path) -> None:
    cpu = tmp_path / "sys/devices/system/cpu"
    for n, (addr, size) in enumerate([("7fc1e000", "368"), ("7fc2e000", None)]):
        (cpu / f"cpu{n}").mkdir(parents=True)
        (cpu / f"cpu{n}/crash_notes").write_text(addr + "\n")
        if size:
            (cpu / f"cpu{n}/crash_notes_size").write_text(size + "\n")
    (cpu / "cpu10").mkdir()     # no crash_notes: skipped
    (cpu / "cpufreq").mkdir()
    assert read_cpu_notes(tmp_path) == [NoteRegion(0x7FC1E000, 368), NoteRegion(0x7FC2E000, 1024)]
    (tmp_path / "sys/kernel").mkdir(parents=True)
    assert read_vmcoreinfo_region(tmp_path) is None
    (tmp_path / "sys/kernel/vmcoreinfo").write_text("0x0000000100c66000 1024\n")
    assert read_vmcoreinfo_region(tmp_path) == NoteRegion(0x100C66000, 0x1024)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/kallsyms").write_text("0000000000000000 T _text\nffffffff81000000 T _text\n"
                                            "ffffffff83c00000 B _end\n")
    assert read_kallsyms(tmp_path, ["_text", "_end"]) == {"_text": 0xFFFFFFFF81000000, "_end": 0xFFFFFFFF83C00000}


# -- against the real lab vmcore ---------------------------------------------------------
def _vmcoreinfo(text: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.decode().splitlines() if "=" in line)


def test_against_the_lab_vmcore(ref_bookworm: Any) -> None:
    """Rebuild the bookworm guest's elfcorehdr from its boot log and replay it: /proc/vmcore must match.

    The guest does not print /proc/iomem, so the map comes from the console's
    BIOS-e820 lines and "Reserving 256MB of memory at 624MB"; the lab loads
    with kexec_file, so the kernel dropped [0, 1 MiB) -- mode="file".  CPU
    note buffers get made-up addresses holding the notes the vmcore shows.
    """
    from kdumpkit.dump import open_dump

    entries, crash = e820_from_console(Path(ref_bookworm.console).read_text(errors="replace"))
    iomem = parse_iomem(from_e820(entries, crash))
    ram = crash_memory_ranges(iomem, mode="file")
    raw = Path(ref_bookworm.vmcore).open("rb").read(1 << 16)
    real_ph = [PHDR64.unpack(raw, 64 + i * 56) for i in range(struct.unpack_from("<H", raw, 56)[0])]
    with open_dump(str(ref_bookworm.vmcore)) as dump:
        notes = dump.notes()
        page_offset = dump.direct_map_base()  # type: ignore[attr-defined]
    info = _vmcoreinfo(next(n.desc for n in notes if n.name == "VMCOREINFO"))
    stext = int(info["SYMBOL(_stext)"], 16)
    text_paddr = int(info["NUMBER(phys_base)"]) + stext - 0xFFFFFFFF80000000
    text_size = real_ph[1].p_memsz  # _end - _text is in no note: taken from the vmcore itself
    prstatus = [n for n in notes if n.name == "CORE"]
    memory: dict[int, bytes] = {}
    cpu_regions = []
    for i, n in enumerate(prstatus):
        addr = 0x3FF00000 + i * 0x1000
        memory[addr] = build_notes([n]) + bytes(12)
        cpu_regions.append(NoteRegion(addr, 368))
    vmci = next(n for n in notes if n.name == "VMCOREINFO")
    memory[0x3FFD0000] = build_notes([vmci]) + bytes(12)
    hdr = build_elfcorehdr(cpu_regions, NoteRegion(0x3FFD0000, 0x1024), KernelText(stext, text_paddr, text_size),
                           ram, page_offset=page_offset)

    def read_phys(addr: int, size: int) -> bytes:
        return (memory[addr] + bytes(size))[:size]

    phdrs, merged = vmcore_view(hdr, read_phys)
    assert len(phdrs) == len(real_ph) == 4
    assert [dict(p) for p in phdrs] == [dict(p) for p in real_ph]
    assert merged == raw[real_ph[0].p_offset:real_ph[0].p_offset + real_ph[0].p_filesz]


def test_elfcorehdr_for_a_fixture_system(tmp_path: Path) -> None:
    from kdumpkit.kexec.elfcorehdr import elfcorehdr_for_system

    cpu = tmp_path / "sys/devices/system/cpu/cpu0"
    cpu.mkdir(parents=True)
    (cpu / "crash_notes").write_text("3fc1e000\n")
    (cpu / "crash_notes_size").write_text("368\n")
    (tmp_path / "sys/kernel/vmcoreinfo").parent.mkdir(parents=True)
    (tmp_path / "sys/kernel/vmcoreinfo").write_text("0x0000000003c2e000 1024\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/iomem").write_text("00001000-0009fbff : System RAM\n00100000-3ffd6fff : System RAM\n"
                                         "  01000000-01ffffff : Kernel code\n  27000000-36ffffff : Crash kernel\n")
    (tmp_path / "proc/kallsyms").write_text("ffffffff81000000 T _text\nffffffff83c00000 B _end\n")
    _, ph = _small_reader(elfcorehdr_for_system(tmp_path, mode="file"))
    assert ph == [(4, 0, 0x3FC1E000, 0, 0x3FC1E000, 368, 368, 0), (4, 0, 0x3C2E000, 0, 0x3C2E000, 0x1024, 0x1024, 0),
                  (1, 7, 0x1000000, 0xFFFFFFFF81000000, 0x1000000, 0x2C00000, 0x2C00000, 0),
                  (1, 7, 0x100000, 0, 0x100000, 0x26F00000, 0x26F00000, 0),   # no /proc/kcore: p_vaddr 0
                  (1, 7, 0x37000000, 0, 0x37000000, 0x8FD7000, 0x8FD7000, 0)]
    _, ph = _small_reader(elfcorehdr_for_system(tmp_path, mode="classic"))
    assert ph[3][2] == 0x1000  # kexec-tools keeps the first 640 KiB
