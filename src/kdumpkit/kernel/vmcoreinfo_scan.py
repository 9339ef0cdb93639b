"""Finding the kernel's own VMCOREINFO note in physical memory.

A dump taken from outside the guest (QEMU without ``-device vmcoreinfo``,
VMware, LiME, AVML) has no VMCOREINFO note, but the kernel keeps one in
memory: ``vmcoreinfo_note`` (kernel/vmcore_info.c, formerly crash_core.c) is an
ELF note — ``Elf_Nhdr {n_namesz = 11, n_descsz, n_type = 0}``, the name
``"VMCOREINFO\\0"`` padded to 12 bytes, then the text, which always starts
with ``OSRELEASE=`` (the first line ``crash_save_vmcoreinfo_init`` appends).

The note is 4-byte aligned (a u32 array), so the search views each block of
memory as little-endian u32 words and asks NumPy for the words equal to
``"VMCO"``; only those few candidates are checked byte by byte.  Blocks are
large (64 MiB by default) and overlap by one note header so a note across a
block boundary is still found; the scan stops at the first hit and reads at
most ``limit_bytes``.
"""

from __future__ import annotations

import struct

import numpy as np

from kdumpkit.dump.base import Dump
from kdumpkit.errors import KdumpkitError

NOTE_NAME = b"VMCOREINFO\0\0"
FIRST_KEY = b"OSRELEASE="
_WORD = np.frombuffer(b"VMCO", dtype="<u4")[0]
_HDR = 12  # Elf_Nhdr: namesz, descsz, type
MAX_DESC = 1 << 20  # QEMU also refuses VMCOREINFO notes above 1 MiB


def _check(dump: Dump, buf: bytes, name_at: int, base: int) -> tuple[bytes, int] | None:
    """The note whose name starts at ``name_at`` in ``buf`` (physical ``base``), if it is one."""
    if name_at < _HDR or buf[name_at:name_at + len(NOTE_NAME) + len(FIRST_KEY)] != NOTE_NAME + FIRST_KEY:
        return None
    namesz, descsz, ntype = struct.unpack_from("<III", buf, name_at - _HDR)
    if namesz != 11 or ntype != 0 or not len(FIRST_KEY) <= descsz <= MAX_DESC:
        return None
    desc_at = name_at + len(NOTE_NAME)
    if desc_at + descsz <= len(buf):
        desc = buf[desc_at:desc_at + descsz]
    else:
        try:
            desc = dump.read(base + desc_at, descsz, zero_excluded=True)
        except KdumpkitError:  # a page hole after the note: not the real one
            return None
    text = desc.split(b"\0", 1)[0]
    if b"\nPAGESIZE=" not in text and b"\nSYMBOL(" not in text:
        return None  # a stray "OSRELEASE=" string, not the kernel's note
    return text, base + name_at - _HDR


def scan_vmcoreinfo(dump: Dump, *, limit_bytes: int | None = None,
                    block_bytes: int = 64 << 20) -> tuple[bytes, int] | None:
    """``(text, physical address of the note)`` of the first VMCOREINFO note in memory, or None."""
    ps = dump.page_size
    block_pages = max(block_bytes // ps, 1)
    overlap = _HDR + len(NOTE_NAME) + len(FIRST_KEY)
    budget = limit_bytes
    for start, end in dump.dumped_runs():
        tail = b""
        for pfn in range(start, end, block_pages):
            n = min(block_pages, end - pfn)
            if budget is not None:
                if budget <= 0:
                    return None
                n = min(n, max(budget // ps, 1))
                budget -= n * ps
            data = bytes(dump._read_dumped(pfn, n))
            buf = tail + data
            base = pfn * ps - len(tail)
            words = np.frombuffer(buf, dtype="<u4", count=len(buf) // 4)
            for idx in np.flatnonzero(words == _WORD).tolist():
                hit = _check(dump, buf, idx * 4, base)
                if hit is not None:
                    return hit
            tail = buf[-overlap:] if len(buf) >= overlap else buf
            tail = tail[len(tail) % 4:]  # keep word alignment relative to the physical address
    return None
