"""A ``/proc/kallsyms`` snapshot, packed into the capture initramfs at load time.

Why: the crashed kernel's symbols are needed to explain the crash, and the
dump alone does not always give them — 5.10 and 6.1 export no kallsyms
location in VMCOREINFO, and module symbols live in ``struct module``, which
is only readable with type information.  ``/proc/kallsyms`` of the running
boot has both, with the boot's KASLR addresses.  ``kdumpkit load`` takes it
(root only: other users see zeros), gzips it and appends it to the capture
initramfs as one more ``newc`` archive — the kernel unpacks concatenated
archives, compressed or not, in order — so no file has to survive on the
crashed system's disk.  ``kdumpkit capture`` copies it next to the dump as
``kallsyms.gz``, where ``report``/``symbols`` find it.

The appended initramfs lives in a memfd: nothing is written to disk and the
user's initramfs file is never modified.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

from kdumpkit.errors import KdumpkitError, KernelError
from kdumpkit.lab import cpio

__all__ = ["SNAPSHOT_PATH", "Snapshot", "take_snapshot", "snapshot_archive", "initrd_with_snapshot"]

#: Where the snapshot sits in the capture kernel's root file system.
SNAPSHOT_PATH = "/kdumpkit-load/kallsyms.gz"


@dataclass(frozen=True)
class Snapshot:
    """The gzipped text and what it holds (for ``load --dry-run`` and the load notes)."""

    data: bytes
    symbols: int
    module_symbols: int
    text_bytes: int


def take_snapshot(root: Path | str = "/") -> Snapshot:
    """Read and gzip ``/proc/kallsyms``; :class:`KernelError` when it is unreadable or its addresses are hidden."""
    path = Path(root) / "proc/kallsyms"
    try:
        text = path.read_bytes()
    except OSError as e:
        raise KernelError(f"cannot read {path}: {e.strerror}") from None
    lines = text.splitlines()
    if not lines:
        raise KernelError(f"{path} is empty")
    head = [ln.split(None, 1)[0] for ln in lines[:50] if ln.strip()]
    if all(int(a, 16) == 0 for a in head if all(c in b"0123456789abcdefABCDEF" for c in a)):
        raise KernelError(f"{path} shows zero addresses (kptr_restrict, or not root): no snapshot taken")
    modules = sum(1 for ln in lines if ln.endswith(b"]"))
    data = gzip.compress(text, compresslevel=6, mtime=0)
    return Snapshot(data, len(lines), modules, len(text))


def snapshot_archive(snap: Snapshot) -> bytes:
    """A ``newc`` archive holding only :data:`SNAPSHOT_PATH` (mode 0600: it reveals the KASLR layout)."""
    tree = cpio.Tree()
    tree.file(SNAPSHOT_PATH.lstrip("/"), snap.data, mode=0o600)
    return tree.archive()


def initrd_with_snapshot(initrd: Path | str, archive: bytes) -> int:
    """A memfd holding ``initrd`` + zero padding to 4 bytes + ``archive``; the caller closes it.

    The kernel's ``unpack_to_rootfs`` skips zero bytes between archives and
    wants each uncompressed ``newc`` header 4-byte aligned in the image.
    """
    try:
        src = os.open(initrd, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KdumpkitError(f"cannot open {initrd}: {e.strerror}") from None
    fd = os.memfd_create("kdumpkit-initrd", os.MFD_CLOEXEC)
    try:
        size = os.fstat(src).st_size
        done = 0
        while done < size:
            n = os.sendfile(fd, src, done, size - done)
            if n == 0:
                raise KdumpkitError(f"{initrd} shrank while being read")
            done += n
        view = memoryview(bytes(-size % 4) + archive)
        while len(view):
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        return fd
    except OSError as e:
        os.close(fd)
        raise KdumpkitError(f"cannot prepare the initramfs with the kallsyms snapshot: {e.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.close(src)
