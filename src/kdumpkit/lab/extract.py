"""Getting the dumps off the guest's raw disks, exactly.

A disk is bigger than what was written to it, so the length of each dump is
computed from the dump itself, never guessed: an ELF vmcore ends at the
largest ``p_offset + p_filesz`` of its program headers; a makedumpfile
flattened stream ends with a record header whose offset and size are both -1.
Copies are sparse (all-zero blocks become holes) to keep the cache small.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from kdumpkit.errors import LabError

FLAT_SIGNATURE = b"makedumpfile\0\0\0\0"
FLAT_HEADER_SIZE = 4096
_FLAT_REC = struct.Struct(">qq")


def elf_size(head: bytes) -> int:
    """Total length of an ELF64 little-endian file from its headers.

    ``head`` must hold the ELF header and all program headers.
    """
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise LabError("raw dump disk does not start with an ELF64 little-endian header")
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    end = phoff + phnum * phentsize
    if phnum == 0 or end > len(head):
        raise LabError(f"ELF program headers ({phnum} at {phoff}) do not fit in the header block")
    size: int = end
    for i in range(phnum):
        _type, _flags, off, _va, _pa, filesz = struct.unpack_from("<IIQQQQ", head, phoff + i * phentsize)
        size = max(size, int(off) + int(filesz))
    return size


def flat_size(f: os.PathLike[str] | str) -> int:
    """Length of a makedumpfile flattened stream at the start of file ``f``.

    Walks the record headers (seeking over the data) up to the end marker.
    """
    with open(f, "rb") as fh:
        head = fh.read(FLAT_HEADER_SIZE)
        if not head.startswith(FLAT_SIGNATURE):
            raise LabError("flat dump disk does not start with a makedumpfile flattened header")
        disk = os.fstat(fh.fileno()).st_size
        pos = FLAT_HEADER_SIZE
        while True:
            fh.seek(pos)
            rec = fh.read(_FLAT_REC.size)
            if len(rec) < _FLAT_REC.size:
                raise LabError(f"flattened stream has no end marker (disk ends at {pos})")
            offset, size = _FLAT_REC.unpack(rec)
            pos += _FLAT_REC.size
            if offset == -1 and size == -1:
                return pos
            if offset < 0 or size < 0 or pos + size > disk:
                raise LabError(f"flattened stream corrupt at {pos - _FLAT_REC.size} (offset {offset}, size {size})")
            pos += size


def sparse_copy(src: Path, dst: Path, length: int, block: int = 1 << 20) -> None:
    """Copy the first ``length`` bytes of ``src`` to ``dst`` (mode 0600: a dump), holes for zero blocks."""
    zero = bytes(block)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(src, "rb") as fi, open(fd, "wb") as fo:
        left = length
        while left:
            buf = fi.read(min(block, left))
            if not buf:
                raise LabError(f"{src} ends {left} bytes early")
            if buf == zero[:len(buf)]:
                fo.seek(len(buf), os.SEEK_CUR)
            else:
                fo.write(buf)
            left -= len(buf)
        fo.truncate(length)


def extract_elf(disk: Path, dst: Path, expected: int | None = None) -> int:
    """Copy the ELF vmcore from ``disk`` to ``dst``; its size (checked against ``expected``)."""
    with open(disk, "rb") as f:
        head = f.read(1 << 20)
    size = elf_size(head)
    if expected is not None and expected != size:
        raise LabError(f"ELF size from headers ({size}) differs from the guest's /proc/vmcore size ({expected})")
    sparse_copy(disk, dst, size)
    return size


def extract_flat(disk: Path, dst: Path) -> int:
    size = flat_size(disk)
    sparse_copy(disk, dst, size)
    return size
