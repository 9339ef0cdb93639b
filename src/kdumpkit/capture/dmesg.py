"""The kernel log of a dump, extracted before anything else is written.

kdump-utils saves ``vmcore-dmesg.txt`` first and syncs it: if the vmcore
then fails (disk full, target gone, watchdog), the one thing admins read
first still survived.  The text is byte-for-byte ``makedumpfile
--dump-dmesg`` output so existing tooling and habits keep working.
"""

from __future__ import annotations

import os
import socket

from kdumpkit.capture.naming import safe_hostname
from kdumpkit.dump.base import Dump
from kdumpkit.errors import KdumpkitError, KernelError, OutputError

UTS_LEN = 65  # __NEW_UTS_LEN + 1


def dmesg_bytes(dump: Dump) -> bytes:
    """The log in makedumpfile's format; raises :class:`KernelError` when unreadable."""
    from kdumpkit.kernel.memory import kernel_memory
    from kdumpkit.kernel.printk import format_makedumpfile, get_printk_log
    from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

    try:
        info = VmcoreInfo.from_dump(dump)
        log = get_printk_log(kernel_memory(dump, info), info)
    except KernelError:
        raise
    except KdumpkitError as e:
        raise KernelError(f"cannot read the kernel log: {e}") from None
    return format_makedumpfile(log, dump.arch)


def write_synced(path: str, data: bytes, *, overwrite: bool = False) -> None:
    """Write a small file mode 0600 and fsync it and its directory (it must survive a reset)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise OutputError(f"{path} exists (will not overwrite)") from None
    except OSError as e:
        raise OutputError(f"cannot create {path}: {e.strerror}") from None
    try:
        view = memoryview(data)
        while len(view):
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as e:
        from kdumpkit.errors import NoSpaceError

        if e.errno in (28, 122):  # ENOSPC, EDQUOT
            raise NoSpaceError(path) from None
        raise OutputError(f"writing {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def dump_hostname(dump: Dump) -> str | None:
    """The crashed machine's nodename: the kdump header, else ``init_uts_ns`` in memory.

    ELF vmcores carry no utsname, but VMCOREINFO exports ``SYMBOL(init_uts_ns)``
    (and on recent kernels ``OFFSET(uts_namespace.name)``); the nodename is
    the second 65-byte field of ``struct new_utsname``.
    """
    uts = getattr(dump, "utsname", None)
    if callable(uts):
        try:
            name = uts().get("nodename", "")
            if isinstance(name, str) and name:
                return name
        except KdumpkitError:
            pass
    try:
        from kdumpkit.kernel.memory import kernel_memory
        from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

        info = VmcoreInfo.from_dump(dump)
        sym = info.symbol("init_uts_ns")
        if sym is None:
            return None
        mem = kernel_memory(dump, info)
        off = info.offset("uts_namespace.name")
        if off is None:
            head = mem.read_virt(sym, 64)
            found = head.find(b"Linux\0")
            if found < 0:
                return None
            off = found
        raw = mem.read_virt(sym + off + UTS_LEN, UTS_LEN)
    except (KdumpkitError, ValueError):
        return None
    name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    return name if name and name.isprintable() else None


UNSET_HOSTNAME = "(none)"


def crash_hostname(dump: Dump) -> str:
    """Hostname for folder names: the dump's own, else this host's, made one ``kdumpkit receive`` accepts.

    The kernel's "(none)" (no hostname was ever set: initramfs-only systems,
    the lab) becomes "localhost".  Anything else goes through
    :func:`~kdumpkit.capture.naming.safe_hostname`, the rule the receiver
    checks with: a name with ``..`` or non-ASCII letters used to pass here and
    be refused there, so such a host could never dump over ssh.
    """
    name = dump_hostname(dump) or socket.gethostname()
    return safe_hostname("" if name == UNSET_HOSTNAME else name) or "localhost"
