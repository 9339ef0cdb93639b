"""QEMU ``dump-guest-memory`` ELF cores: the per-vCPU "QEMU" notes and prstatus variants.

A QEMU ELF dump is an ordinary ELF core (read by :class:`ElfDump`), plus
what QEMU knows about each vCPU that a kernel's NT_PRSTATUS cannot say:
one note named ``"QEMU"``, type 0, whose descriptor is a ``QEMUCPUState``
(QEMU ``target/i386/arch_dump.c``; version 1: version u32, size u32, 18 u64
GPRs rax…r15/rip/rflags, 10 segments {selector, limit, flags, pad u32; base
u64}, ``cr[5]``; 432 bytes, 440 with ``kernel_gs_base`` in later QEMUs).
``cr3`` there is what lets a hypervisor dump be translated without trusting
the guest.

QEMU writes its NT_PRSTATUS notes in one of two layouts: the x86_64
``elf_prstatus`` (336 bytes, registers at 112, ``pr_pid`` at 32) when the
first vCPU is in long mode, else the i386 one (144 bytes, registers at 72,
``pr_pid`` at 24) — even inside an ELF64 note.  Both are decoded here.

The helpers take a plain note list so kdump-compressed files that QEMU wrote
(``kdump-zlib`` …, which copy the same notes) can use them too.
"""

from __future__ import annotations

import struct
from typing import Any

from kdumpkit.dump.base import NT_PRSTATUS, DumpInfo, Note
from kdumpkit.dump.elf import ElfDump
from kdumpkit.dump.elfnotes import (
    ELF_PRSTATUS_SIZE_X86_64,
    PRSTATUS_PID_OFFSET,
    PRSTATUS_REG_OFFSET_X86_64,
    X86_64_USER_REGS,
)
from kdumpkit.dump.fileio import ByteSource
from kdumpkit.errors import DumpError

QEMU_NOTE = "QEMU"
QEMUCPUSTATE_SIZE_V1 = 432
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
        "r15", "rip", "rflags")
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")
_SEG = struct.Struct("<IIIIQ")

# QEMU arch_dump.c writes the kernel's user_regs_struct (elfnotes.X86_64_USER_REGS)
X86_64_PRSTATUS_SIZE, X86_64_PID_OFF, X86_64_REGS_OFF = (ELF_PRSTATUS_SIZE_X86_64, PRSTATUS_PID_OFFSET,
                                                         PRSTATUS_REG_OFFSET_X86_64)
I386_PRSTATUS_SIZE, I386_PID_OFF, I386_REGS_OFF = 144, 24, 72
# x86_user_regs_struct: u32 ebx…eax, u16 pairs for ds/es/fs/gs, orig_eax, eip, cs pair, eflags, esp, ss pair
_I386_REGS = struct.Struct("<7I8H2I2H2I2H")
_I386_NAMES = ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "_ds", "es", "_es", "fs", "_fs", "gs", "_gs",
               "orig_eax", "eip", "cs", "_cs", "eflags", "esp", "ss", "_ss")


def parse_qemu_cpu_state(desc: bytes) -> dict[str, Any]:
    """One ``QEMUCPUState``: GPRs, segments (selector/limit/flags/base), cr0–cr4, kernel_gs_base if present."""
    if len(desc) < 8:
        raise DumpError(f"QEMU CPU note of {len(desc)} bytes")
    version, size = struct.unpack_from("<II", desc, 0)
    if version != 1 or size < QEMUCPUSTATE_SIZE_V1 or len(desc) < QEMUCPUSTATE_SIZE_V1:
        raise DumpError(f"QEMUCPUState version {version}, size {size} (have {len(desc)} bytes)")
    gprs = struct.unpack_from("<18Q", desc, 8)
    state: dict[str, Any] = {"version": version, "size": size}
    state.update(zip(GPRS, gprs, strict=True))
    segs: dict[str, dict[str, int]] = {}
    for i, name in enumerate(SEGMENTS):
        sel, limit, flags, _pad, base = _SEG.unpack_from(desc, 152 + i * _SEG.size)
        segs[name] = {"selector": sel, "limit": limit, "flags": flags, "base": base}
    state["segments"] = segs
    for i, cr in enumerate(struct.unpack_from("<5Q", desc, 392)):
        state[f"cr{i}"] = cr
    if size >= 440 and len(desc) >= 440:
        state["kernel_gs_base"] = struct.unpack_from("<Q", desc, 432)[0]
    return state


def qemu_cpu_states(notes: list[Note]) -> list[dict[str, Any]]:
    """Every decodable "QEMU" note, in vCPU order (undecodable ones are skipped)."""
    out = []
    for n in notes:
        if n.name == QEMU_NOTE and n.type == 0:
            try:
                out.append(parse_qemu_cpu_state(n.desc))
            except DumpError:
                continue
    return out


def parse_prstatus(desc: bytes) -> dict[str, Any] | None:
    """Registers of an x86_64 or i386 NT_PRSTATUS (QEMU writes either), keyed by name, plus ``pid``."""
    if len(desc) == X86_64_PRSTATUS_SIZE:
        regs = struct.unpack_from("<27Q", desc, X86_64_REGS_OFF)
        out: dict[str, Any] = dict(zip(X86_64_USER_REGS, regs, strict=True))
        out["pid"] = struct.unpack_from("<i", desc, X86_64_PID_OFF)[0]
        out["layout"] = "x86_64"
        return out
    if len(desc) == I386_PRSTATUS_SIZE:
        vals = _I386_REGS.unpack_from(desc, I386_REGS_OFF)
        out = {k: v for k, v in zip(_I386_NAMES, vals, strict=True) if not k.startswith("_")}
        out["pid"] = struct.unpack_from("<i", desc, I386_PID_OFF)[0]
        out["layout"] = "i386"
        return out
    return None


def cpu_registers(notes: list[Note]) -> list[dict[str, Any]]:
    """Per-CPU registers: the QEMU state where there is one (it has cr3), else the NT_PRSTATUS registers."""
    qemu = qemu_cpu_states(notes)
    prs = [p for n in notes if n.type == NT_PRSTATUS and n.name == "CORE" if (p := parse_prstatus(n.desc))]
    out: list[dict[str, Any]] = []
    for i in range(max(len(qemu), len(prs))):
        regs: dict[str, Any] = {"cpu": i}
        if i < len(prs):
            regs.update(prs[i])
        if i < len(qemu):
            regs.update({k: v for k, v in qemu[i].items() if k not in ("version", "size")})
            regs["source"] = "QEMUCPUState"
        else:
            regs["source"] = "NT_PRSTATUS"
        out.append(regs)
    return out


def _has_qemu_note(src: ByteSource) -> bool:
    """Whether the ELF core's PT_NOTE segments hold a "QEMU" note (cheap: headers and notes only)."""
    try:
        dump = ElfDump.__new__(ElfDump)
        ElfDump.__init__(dump, src)
    except DumpError:
        return False
    return any(n.name == QEMU_NOTE for n in dump.notes())


class QemuElfDump(ElfDump):
    """An ELF core written by QEMU's ``dump-guest-memory`` (it carries "QEMU" notes)."""

    format_name = "qemu"

    @classmethod
    def probe(cls, src: ByteSource) -> bool:
        return ElfDump.probe(src) and _has_qemu_note(src)

    def registers(self) -> list[dict[str, Any]]:
        return cpu_registers(self.notes())

    def info(self) -> DumpInfo:
        base = super().info()
        regs = self.registers()
        details = dict(base.details)
        details["producer"] = "QEMU dump-guest-memory"
        details["vcpus"] = len(qemu_cpu_states(self.notes()))
        prs = self.prstatus_notes()
        details["prstatus_layout"] = (parse_prstatus(prs[0].desc) or {}).get("layout") if prs else None
        details["cpu_registers"] = [
            {k: hex(r[k]) for k in ("rip", "rsp", "cr3") if isinstance(r.get(k), int)} for r in regs
        ]
        details["vmcoreinfo"] = "present" if self.vmcoreinfo_raw() is not None else \
            "absent (start QEMU with -device vmcoreinfo, or pass --vmcoreinfo FILE)"
        return DumpInfo("qemu-elf", details)


__all__ = ["QemuElfDump", "cpu_registers", "parse_prstatus", "parse_qemu_cpu_state",
           "qemu_cpu_states"]
