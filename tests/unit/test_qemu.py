"""QEMU dump-guest-memory ELF: "QEMU" QEMUCPUState notes and both prstatus layouts
(QEMU target/i386/arch_dump.c: x86_64_elf_prstatus 336 bytes, x86_elf_prstatus 144 bytes,
QEMUCPUState version 1, 432 bytes)."""

from __future__ import annotations

import struct

from kdumpkit.dump import open_dump
from kdumpkit.dump.base import NT_PRSTATUS, Note
from kdumpkit.dump.elf import write_elf
from kdumpkit.dump.qemu import GPRS, QemuElfDump, cpu_registers, parse_prstatus, parse_qemu_cpu_state, qemu_cpu_states
from kdumpkit.dump.sink import FileSink
from kdumpkit.dump.testing import synthetic_dump


def qemu_cpu_note(rip: int, cr3: int, *, size: int = 432) -> Note:
    d = bytearray(size)
    struct.pack_into("<II", d, 0, 1, size)
    vals = {name: 0x1000 + i for i, name in enumerate(GPRS)} | {"rip": rip, "rsp": 0xFFFFC90000003F00}
    struct.pack_into("<18Q", d, 8, *(vals[n] for n in GPRS))
    struct.pack_into("<IIIIQ", d, 152, 0x10, 0xFFFFFFFF, 0xA09B00, 0, 0)  # cs
    struct.pack_into("<IIIIQ", d, 152 + 4 * 24, 0, 0, 0, 0, 0xFFFF888007C00000)  # gs base
    struct.pack_into("<5Q", d, 392, 0x80050033, 0, 0, cr3, 0x3606F0)
    return Note("QEMU", 0, bytes(d))


def x86_64_prstatus(pid: int, rip: int) -> Note:
    d = bytearray(336)
    struct.pack_into("<I", d, 32, pid)
    struct.pack_into("<Q", d, 112 + 16 * 8, rip)  # regs.rip is the 17th user_regs_struct field
    return Note("CORE", NT_PRSTATUS, bytes(d))


def i386_prstatus(pid: int, eip: int, esp: int) -> Note:
    d = bytearray(144)
    struct.pack_into("<I", d, 24, pid)
    struct.pack_into("<I", d, 72 + 48, eip)  # after 7 u32, 8 u16, orig_eax
    struct.pack_into("<I", d, 72 + 60, esp)
    return Note("CORE", NT_PRSTATUS, bytes(d))


def _qemu_elf(tmp_path, notes: list[Note], vmcoreinfo: str | None = None):  # type: ignore[no-untyped-def]
    src = synthetic_dump(ram=[(0, 64)], ncpus=0, extra_notes=notes, vmcoreinfo=vmcoreinfo)
    path = tmp_path / "guest.elf"
    with FileSink(str(path)) as s:
        write_elf(src, s)
    return str(path)


def test_qemu_state_parse() -> None:
    st = parse_qemu_cpu_state(qemu_cpu_note(0xFFFFFFFF81000000, 0x1234000).desc)
    assert st["rip"] == 0xFFFFFFFF81000000 and st["cr3"] == 0x1234000 and st["cr4"] == 0x3606F0
    assert st["segments"]["cs"]["selector"] == 0x10
    assert st["segments"]["gs"]["base"] == 0xFFFF888007C00000
    assert "kernel_gs_base" not in st
    assert "kernel_gs_base" in parse_qemu_cpu_state(qemu_cpu_note(0, 0, size=440).desc)


def test_prstatus_layouts() -> None:
    r64 = parse_prstatus(x86_64_prstatus(1, 0xFFFFFFFF81234567).desc)
    assert r64 is not None and r64["layout"] == "x86_64" and r64["rip"] == 0xFFFFFFFF81234567 and r64["pid"] == 1
    r32 = parse_prstatus(i386_prstatus(2, 0xC1000000, 0xC2000000).desc)
    assert r32 is not None and r32["layout"] == "i386" and r32["eip"] == 0xC1000000 and r32["esp"] == 0xC2000000
    assert parse_prstatus(b"x" * 10) is None


def test_detected_and_info(tmp_path) -> None:  # type: ignore[no-untyped-def]
    notes = [x86_64_prstatus(1, 0xFFFFFFFF81000010), x86_64_prstatus(2, 0xFFFFFFFF81000020),
             qemu_cpu_note(0xFFFFFFFF81000010, 0x2000000), qemu_cpu_note(0xFFFFFFFF81000020, 0x2000000)]
    with open_dump(_qemu_elf(tmp_path, notes, vmcoreinfo="")) as d:
        assert isinstance(d, QemuElfDump) and d.format_name == "qemu"
        regs = d.registers()
        assert [r["cr3"] for r in regs] == [0x2000000, 0x2000000]
        assert regs[1]["rip"] == 0xFFFFFFFF81000020 and regs[1]["pid"] == 2
        info = d.info().details
        assert info["vcpus"] == 2 and info["prstatus_layout"] == "x86_64"
        assert "absent" in info["vmcoreinfo"]


def test_plain_elf_is_not_qemu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with open_dump(_qemu_elf(tmp_path, [x86_64_prstatus(1, 0)])) as d:
        assert d.format_name == "elf"


def test_helpers_on_bad_notes() -> None:
    notes = [Note("QEMU", 0, b"\x02\x00\x00\x00" + bytes(500)), Note("QEMU", 0, b"short"),
             i386_prstatus(1, 1, 2)]
    assert qemu_cpu_states(notes) == []
    regs = cpu_registers(notes)
    assert regs[0]["source"] == "NT_PRSTATUS" and regs[0]["eip"] == 1
