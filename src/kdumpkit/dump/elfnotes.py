"""ELF note records, as found in PT_NOTE segments and the kdump sub-header.

Linux pads note names and descriptors to 4 bytes even in ELF64 cores, so one
parser serves ELF32, ELF64 and the note copy inside kdump-compressed files.
"""

from __future__ import annotations

import struct

from kdumpkit.dump.base import NT_PRSTATUS, Buffer, Note
from kdumpkit.errors import CorruptDumpError
from kdumpkit.structs import Struct

NHDR = Struct("Elf_Nhdr", [("n_namesz", "I"), ("n_descsz", "I"), ("n_type", "I")])


def _align4(n: int) -> int:
    return (n + 3) & ~3


def parse_notes(buf: Buffer, byteorder: str = "little", *, strict: bool = False) -> list[Note]:
    """Parse note records until the buffer ends or a terminating empty header.

    A note running past the buffer is dropped (``strict`` raises instead), as
    the kernel itself drops a PT_NOTE that exceeds ``p_memsz``.
    """
    hdr = NHDR if byteorder == "little" else NHDR.with_byteorder(">")
    data = bytes(buf)
    notes: list[Note] = []
    off = 0
    while off + hdr.size <= len(data):
        h = hdr.unpack(data, off)
        if h.n_namesz == 0 and h.n_descsz == 0 and h.n_type == 0:
            break
        name_off = off + hdr.size
        desc_off = name_off + _align4(h.n_namesz)
        end = desc_off + _align4(h.n_descsz)
        if desc_off + h.n_descsz > len(data):
            if strict:
                raise CorruptDumpError(f"note at offset {off} runs past its segment")
            break
        # latin-1 maps every byte to one character: any name survives a round trip and prints.
        name = data[name_off:name_off + h.n_namesz].split(b"\0", 1)[0].decode("latin-1")
        notes.append(Note(name, h.n_type, data[desc_off:desc_off + h.n_descsz]))
        off = end
    return notes


def note_name_bytes(name: str) -> bytes:
    """The on-disk bytes of a note name: what :func:`parse_notes` read (latin-1), else UTF-8."""
    try:
        return name.encode("latin-1")
    except UnicodeEncodeError:
        return name.encode("utf-8")


def build_notes(notes: list[Note], byteorder: str = "little") -> bytes:
    """Encode notes back to the on-disk record form (no terminator)."""
    hdr = NHDR if byteorder == "little" else NHDR.with_byteorder(">")
    out = bytearray()
    for n in notes:
        name = note_name_bytes(n.name) + b"\0"
        out += hdr.pack(n_namesz=len(name), n_descsz=len(n.desc), n_type=n.type)
        out += name + bytes(_align4(len(name)) - len(name))
        out += n.desc + bytes(_align4(len(n.desc)) - len(n.desc))
    return bytes(out)


# -- x86_64 NT_PRSTATUS ------------------------------------------------------------
#: ``struct user_regs_struct`` order (``pr_reg``); its first 21 are ``struct pt_regs``.
X86_64_USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
                    "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs",
                    "gs")
ELF_PRSTATUS_SIZE_X86_64 = 336  # sizeof(struct elf_prstatus)
PRSTATUS_PID_OFFSET = 32  # pr_pid
PRSTATUS_REG_OFFSET_X86_64 = 112  # pr_reg


def x86_64_prstatus(regs: dict[str, int], pid: int = 0) -> Note:
    """An x86_64 NT_PRSTATUS note for formats that keep CPU registers elsewhere (VMware, LKCD).

    Registers not in ``regs`` are 0; the analysis reads only ``pr_pid`` and ``pr_reg``.
    """
    desc = bytearray(ELF_PRSTATUS_SIZE_X86_64)
    struct.pack_into("<i", desc, PRSTATUS_PID_OFFSET, pid)
    struct.pack_into(f"<{len(X86_64_USER_REGS)}Q", desc, PRSTATUS_REG_OFFSET_X86_64,
                     *(regs.get(n, 0) & 0xFFFFFFFFFFFFFFFF for n in X86_64_USER_REGS))
    return Note("CORE", NT_PRSTATUS, bytes(desc))
