"""The cpio "newc" format (what the kernel unpacks as an initramfs), written here.

Writing it ourselves keeps the image deterministic (fixed mtimes, owners and
inode numbers, sorted entries) and avoids depending on the host's ``cpio``.
Format: a 110-byte ASCII header ``070701`` + 13 eight-digit hex fields, the
NUL-terminated name padded to 4 bytes, the data padded to 4 bytes; the archive
ends with an entry named ``TRAILER!!!``.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member; ``data`` is file content or a symlink's target."""

    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    nlink: int = 1
    rdevmajor: int = 0
    rdevminor: int = 0


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def header(entry: Entry, ino: int) -> bytes:
    """The header plus padded name of ``entry`` with inode number ``ino``."""
    name = entry.name.encode() + b"\0"
    fields = (ino, entry.mode, entry.uid, entry.gid, entry.nlink, entry.mtime, len(entry.data),
              0, 0, entry.rdevmajor, entry.rdevminor, len(name), 0)
    head = MAGIC + b"".join(b"%08X" % f for f in fields) + name
    return head + b"\0" * _pad4(len(head))


def write(entries: list[Entry]) -> bytes:
    """An uncompressed newc archive of ``entries`` (in the given order) plus trailer."""
    out = bytearray()
    for ino, e in enumerate(entries, start=1):
        out += header(e, ino)
        out += e.data
        out += b"\0" * _pad4(len(e.data))
    out += header(Entry(TRAILER, 0, nlink=1), 0)
    return bytes(out)


def read(data: bytes) -> list[Entry]:
    """Parse a newc archive (used by the tests and for inspecting images)."""
    out: list[Entry] = []
    pos = 0
    while True:
        if data[pos:pos + 6] != MAGIC:
            raise ValueError(f"bad cpio magic at {pos}")
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name_end = pos + 110 + namesize
        name = data[pos + 110:name_end - 1].decode()
        pos = name_end + _pad4(name_end)
        body = data[pos:pos + filesize]
        pos += filesize + _pad4(filesize)
        if name == TRAILER:
            return out
        out.append(Entry(name, f[1], body, f[2], f[3], f[5], f[4], f[9], f[10]))


class Tree:
    """An in-memory directory tree that becomes a newc archive.

    Parent directories are created implicitly, so callers just add files.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self._entries:
                self._entries[d] = Entry(d, stat.S_IFDIR | 0o755, nlink=2)

    def dir(self, path: str, mode: int = 0o755) -> None:
        path = path.strip("/")
        self._parents(path)
        self._entries[path] = Entry(path, stat.S_IFDIR | mode, nlink=2)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        self._parents(path)
        self._entries[path] = Entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        self._parents(path)
        self._entries[path] = Entry(path, stat.S_IFLNK | 0o777, target.encode())

    def node(self, path: str, kind: int, major: int, minor: int, mode: int = 0o600) -> None:
        """A device node (``kind`` is ``stat.S_IFCHR`` or ``stat.S_IFBLK``)."""
        path = path.strip("/")
        self._parents(path)
        self._entries[path] = Entry(path, kind | mode, rdevmajor=major, rdevminor=minor)

    def __contains__(self, path: str) -> bool:
        return path.strip("/") in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def archive(self) -> bytes:
        """Entries sorted by name, so directories precede their contents."""
        return write([self._entries[n] for n in sorted(self._entries)])
