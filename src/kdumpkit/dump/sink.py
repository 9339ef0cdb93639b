"""Where writers put bytes: positioned writes onto a file or a stream.

Writers of seekable formats (kdump-compressed, ELF) write their headers after
the pages they describe.  They do so through :class:`Sink.pwrite`, so the same
writer can target a regular file (:class:`FileSink`) or a pipe, socket or raw
device through makedumpfile's flattened stream (``kdumpkit.dump.flattened``).
"""

from __future__ import annotations

import errno
import os
import stat
from abc import ABC, abstractmethod

from kdumpkit.dump.base import Buffer
from kdumpkit.errors import NoSpaceError, OutputError

DUMP_FILE_MODE = 0o600  # a dump holds every secret the machine had
#: errnos that mean "this output cannot grow": a full disk, a quota, or a file-size
#: limit (EFBIG under ``ulimit -f``; Python ignores SIGXFSZ) — all retried at the next level
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class Sink(ABC):
    """A byte destination written at explicit offsets."""

    @abstractmethod
    def pwrite(self, offset: int, data: Buffer) -> None: ...

    def copy_from(self, fd: int, src_offset: int, offset: int, length: int) -> bool:
        """Copy ``length`` bytes of file ``fd`` to ``offset`` in the kernel, if this sink can.

        False means "not done, write the bytes yourself" (the default, and any
        failure short of a full disk); a partial copy is simply overwritten.
        """
        return False

    def close(self) -> None:
        """Finish the output (flush, end marker …)."""

    def abort(self) -> None:
        """Stop without finishing; whatever was written stays."""
        self.close()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_dump_output(path: str, *, overwrite: bool = False) -> int:
    """Create ``path`` for a new dump: ``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600.

    Never writes through a symlink and never inherits an old file's mode or
    owner: with ``overwrite`` an existing file or symlink is unlinked (the
    link itself, not its target) and a new file created in its place; callers
    that need the old contents to survive until the end write ``PATH.part``
    and rename it.  Without ``overwrite`` an existing name is refused.  A
    device node (a raw-device target) is opened as it is: there is nothing to
    create.
    """
    if overwrite:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise OutputError(f"cannot create {path}: {e.strerror}") from None
        if st is not None and (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            try:
                return os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                raise OutputError(f"cannot open {path}: {e.strerror}") from None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            try:
                os.unlink(path)
            except OSError as e:
                raise OutputError(f"cannot replace {path}: {e.strerror}") from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, DUMP_FILE_MODE)
    except FileExistsError:
        raise OutputError(f"{path} exists (will not overwrite a dump; use --force)") from None
    except OSError as e:
        raise OutputError(f"cannot create {path}: {e.strerror}") from None
    os.fchmod(fd, DUMP_FILE_MODE)  # the umask may have taken bits away, never added: make it exact
    return fd


class FileSink(Sink):
    """A regular file (or a seekable device) written with ``pwrite``."""

    def __init__(self, path: str, *, overwrite: bool = False, fd: int | None = None) -> None:
        self.path = path
        self.fd = fd if fd is not None else open_dump_output(path, overwrite=overwrite)
        self._closed = False
        self._can_copy = hasattr(os, "copy_file_range")

    def copy_from(self, fd: int, src_offset: int, offset: int, length: int) -> bool:
        while length > 0 and self._can_copy:
            try:
                n = os.copy_file_range(fd, self.fd, length, src_offset, offset)
            except OSError as e:
                if e.errno in NO_SPACE_ERRNOS:
                    raise NoSpaceError(f"{self.path} at offset {offset}") from None
                if e.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                    self._can_copy = False  # this pair of files cannot: stop asking
                return False  # EIO and friends: the caller's read path records them
            if n <= 0:
                return False
            src_offset += n
            offset += n
            length -= n
        return length <= 0

    def pwrite(self, offset: int, data: Buffer) -> None:
        view = memoryview(data)
        while len(view):
            try:
                n = os.pwrite(self.fd, view, offset)
            except OSError as e:
                if e.errno in NO_SPACE_ERRNOS:
                    raise NoSpaceError(f"{self.path} at offset {offset}") from None
                raise OutputError(f"writing {self.path}: {e.strerror}") from None
            view = view[n:]
            offset += n

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)


class MemorySink(Sink):
    """An in-memory buffer; for tests and small outputs."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def pwrite(self, offset: int, data: Buffer) -> None:
        end = offset + len(data)
        if end > len(self.buf):
            self.buf += bytes(end - len(self.buf))
        self.buf[offset:end] = data
