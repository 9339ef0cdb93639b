"""ELF note records, as found in PT_NOTE segments and the kdump sub-header.

Linux pads note names and descriptors to 4 bytes even in ELF64 cores, so one
parser serves ELF32, ELF64 and the note copy inside kdump-compressed files.
"""

from __future__ import annotations

from kdumpkit.dump.base import Buffer, Note
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
        name = data[name_off:name_off + h.n_namesz].split(b"\0", 1)[0].decode("ascii", "replace")
        notes.append(Note(name, h.n_type, data[desc_off:desc_off + h.n_descsz]))
        off = end
    return notes


def build_notes(notes: list[Note], byteorder: str = "little") -> bytes:
    """Encode notes back to the on-disk record form (no terminator)."""
    hdr = NHDR if byteorder == "little" else NHDR.with_byteorder(">")
    out = bytearray()
    for n in notes:
        name = n.name.encode("ascii") + b"\0"
        out += hdr.pack(n_namesz=len(name), n_descsz=len(n.desc), n_type=n.type)
        out += name + bytes(_align4(len(name)) - len(name))
        out += n.desc + bytes(_align4(len(n.desc)) - len(n.desc))
    return bytes(out)
