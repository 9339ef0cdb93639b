"""Reading the running kernel's VMCOREINFO through ``/proc/kcore``.

Kept apart from :mod:`vmcoreinfo` because it touches live-system files and
ELF program headers; nothing else in ``kernel/`` does.
"""

from __future__ import annotations

import os
import struct

from kdumpkit.dump.elfnotes import parse_notes
from kdumpkit.errors import KernelError, VmcoreinfoMissingError

_EHDR64 = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR64 = struct.Struct("<IIQQQQQQ")
PT_LOAD = 1
PT_NOTE = 4


def _phdrs(fd: int) -> list[tuple[int, int, int, int, int, int]]:
    """``(p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz)`` of an ELF64 LE file."""
    head = os.pread(fd, _EHDR64.size, 0)
    if len(head) < _EHDR64.size or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise KernelError("/proc/kcore is not a little-endian ELF64 file")
    e = _EHDR64.unpack(head)
    phoff, phentsize, phnum = e[5], e[9], e[10]
    table = os.pread(fd, phentsize * phnum, phoff)
    out = []
    for i in range(phnum):
        p = _PHDR64.unpack_from(table, i * phentsize)
        out.append((p[0], p[2], p[3], p[4], p[5], p[6]))
    return out


def read_live_vmcoreinfo(sysfs: str = "/sys/kernel/vmcoreinfo", kcore: str = "/proc/kcore") -> bytes:
    """The VMCOREINFO text of the running kernel (needs root for kcore)."""
    try:
        with open(sysfs) as f:
            addr_s, size_s = f.read().split()[:2]
        paddr, size = int(addr_s, 16), int(size_s, 16)
    except (OSError, ValueError) as e:
        raise VmcoreinfoMissingError(f"cannot read {sysfs}: {e}") from None
    try:
        fd = os.open(kcore, os.O_RDONLY)
    except OSError as e:
        hint = " (needs root)" if isinstance(e, PermissionError) else ""
        raise KernelError(f"cannot open {kcore} to read VMCOREINFO at {paddr:#x}: {e.strerror}{hint}") from None
    try:
        phdrs = _phdrs(fd)
        for p_type, off, _vaddr, p_paddr, filesz, _memsz in phdrs:
            if p_type == PT_LOAD and p_paddr != 0xFFFFFFFFFFFFFFFF and p_paddr <= paddr and paddr + size <= p_paddr + filesz:
                data = os.pread(fd, size, off + paddr - p_paddr)
                for note in parse_notes(data):
                    if note.name == "VMCOREINFO":
                        return note.desc
        for p_type, off, _vaddr, _paddr, filesz, _memsz in phdrs:  # 4.19+: kcore's own note
            if p_type == PT_NOTE:
                for note in parse_notes(os.pread(fd, filesz, off)):
                    if note.name == "VMCOREINFO":
                        return note.desc
    except OSError as e:
        raise KernelError(f"reading {kcore}: {e.strerror}") from None
    finally:
        os.close(fd)
    raise VmcoreinfoMissingError(f"no VMCOREINFO note at physical {paddr:#x} in {kcore}")
