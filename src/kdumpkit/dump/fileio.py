"""File access, kept apart from formats (libkdumpfile's split).

A format reader reads bytes through a :class:`ByteSource`; it never opens a
path itself.  A regular file is a :class:`MappedFile` (mmap, so reading a
page is a slice and memory stays bounded by what the kernel caches); a
makedumpfile flattened stream is another ByteSource (``kdumpkit.dump.flattened``)
that maps positions to records, so every format reads flattened files in place.
"""

from __future__ import annotations

import mmap
import os
import stat
from abc import ABC, abstractmethod

from kdumpkit.dump.base import Buffer
from kdumpkit.errors import DumpError, TruncatedDumpError


class ByteSource(ABC):
    """Random access to the bytes of a (logical) dump file."""

    name: str
    size: int

    @abstractmethod
    def view(self, offset: int, length: int) -> Buffer:
        """``length`` bytes at ``offset`` (zero-copy where possible); short reads raise."""

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.view(offset, length))

    def close(self) -> None:
        pass

    def fileno(self) -> int | None:
        """The file descriptor holding these bytes at these offsets, or None (not a plain file)."""
        return None

    def _check(self, offset: int, length: int, what: str = "data") -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedDumpError(f"{what} of {length} bytes at {offset} in {self.name}", min(max(offset, 0), self.size))


TRIM_BYTES = 8 << 20  # drop mapped pages after this much has been read


class MappedFile(ByteSource):
    """A regular file read through mmap (empty files are allowed, size 0).

    Mapped file pages count in the process's RSS, so streaming a 1 TiB vmcore
    through one mapping would make RSS grow with the dump.  Every
    ``TRIM_BYTES`` read, the range touched since the last trim is released
    with ``MADV_DONTNEED``: for a read-only shared file mapping that only
    unmaps the pages (the page cache keeps them, a later access faults them
    back in), so memory stays bounded and views already handed out stay valid.
    """

    def __init__(self, path: str, *, use_mmap: bool = True) -> None:
        self.name = path
        try:
            # O_NONBLOCK: opening a FIFO would otherwise wait for a writer before it can be refused.
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise DumpError(f"cannot open {path}: {e.strerror}") from None
        try:
            self.size = _file_size(path, self._fd)
            os.set_blocking(self._fd, True)
        except BaseException:
            os.close(self._fd)
            raise
        self._mm: mmap.mmap | None = None
        self._lo = self._hi = self._since_trim = 0
        if self.size and use_mmap:
            try:
                self._mm = mmap.mmap(self._fd, 0, prot=mmap.PROT_READ)
            except (OSError, ValueError):
                self._mm = None  # e.g. /proc/vmcore without mmap support: fall back to pread

    def view(self, offset: int, length: int) -> Buffer:
        self._check(offset, length)
        if self._mm is not None:
            self._touch(offset, length)
            return memoryview(self._mm)[offset:offset + length]
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as e:  # EIO on a failing disk, a device that went away
            raise DumpError(f"cannot read {self.name} at offset {offset}: {e.strerror}") from None
        if len(data) != length:
            raise TruncatedDumpError(f"short read of {length} bytes at {offset} in {self.name}", offset + len(data))
        return data

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        if self._mm is not None:
            self._touch(offset, length)
            return self._mm[offset:offset + length]
        return bytes(self.view(offset, length))

    def fileno(self) -> int | None:
        return self._fd if self._fd >= 0 else None

    def _touch(self, offset: int, length: int) -> None:
        # Release what earlier requests touched (their pages are faulted in by
        # now); the current request is added after, so it is never cut short.
        if self._since_trim >= TRIM_BYTES and self._mm is not None:
            lo = self._lo & ~(mmap.PAGESIZE - 1)
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, lo, self._hi - lo)
            except (OSError, ValueError):
                pass  # only a memory optimisation
            self._since_trim = 0
        if self._since_trim == 0:
            self._lo, self._hi = offset, offset + length
        else:
            self._lo, self._hi = min(self._lo, offset), max(self._hi, offset + length)
        self._since_trim += length

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # a caller still holds a view; the OS unmaps at exit
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _file_size(path: str, fd: int) -> int:
    """Size of what ``fd`` reads; refuses what is not a file of bytes at fixed offsets.

    A directory opens read-only like a file and fails only at the first read;
    a FIFO or socket cannot be read at an offset.  A block device reports
    ``st_size`` 0: its size is where it ends.
    """
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise DumpError(f"{path} is a directory, not a dump file")
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISCHR(st.st_mode):
        raise DumpError(f"{path} is not a regular file (a FIFO or socket cannot be read at offsets)")
    return st.st_size


class BytesSource(ByteSource):
    """An in-memory file, for tests and small conversions."""

    def __init__(self, data: bytes, name: str = "<memory>") -> None:
        self._data = data
        self.name = name
        self.size = len(data)

    def view(self, offset: int, length: int) -> Buffer:
        self._check(offset, length)
        return memoryview(self._data)[offset:offset + length]
