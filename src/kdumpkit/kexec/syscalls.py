"""``kexec_file_load`` and ``kexec_load`` through ctypes, with errno turned into kdumpkit errors.

kdumpkit loads the capture kernel itself instead of running ``kexec``: the
argument marshalling lives here, and the raw ``syscall(2)`` entry is
*injectable* (``syscall=``) so unit tests check exactly what would be passed
without ever loading a crash kernel into the machine running the tests.  The
real calls are exercised inside the QEMU lab guest.

Syscall numbers are x86_64's (``kexec_load`` 246, ``kexec_file_load`` 320);
other architectures raise :class:`~kdumpkit.errors.UnsupportedError` until
their numbers are added.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kdumpkit.errors import ConfigError, KdumpkitError, UnsupportedError

SYS_NUMBERS = {"x86_64": {"kexec_load": 246, "kexec_file_load": 320}}

KEXEC_FILE_UNLOAD = 0x1
KEXEC_FILE_ON_CRASH = 0x2
KEXEC_FILE_NO_INITRAMFS = 0x4
KEXEC_ON_CRASH = 0x1
KEXEC_PRESERVE_CONTEXT = 0x2
KEXEC_ARCH_DEFAULT = 0
KEXEC_ARCH_X86_64 = 62 << 16
KEXEC_SEGMENT_MAX = 16


class KexecError(KdumpkitError):
    """A kexec syscall failed; ``errno`` is kept for callers that branch on it."""

    def __init__(self, call: str, err: int, hint: str) -> None:
        super().__init__(call, err, hint)
        self.call = call
        self.errno = err
        self.hint = hint

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno, str(self.errno))
        return f"{self.call} failed: {name} ({os.strerror(self.errno)}): {self.hint}"


_HINTS = {
    errno.EPERM: "needs root with CAP_SYS_BOOT; kernel.kexec_load_disabled=1 or a lockdown/Secure Boot policy "
                 "also refuse it (under lockdown only a signed kernel through kexec_file_load is accepted)",
    errno.EBUSY: "a kexec image is being loaded or is executing; retry, or unload first",
    errno.ENOMEM: "the crash kernel reservation is too small for kernel + initramfs + headers "
                  "(check 'kdumpkit status' and 'kdumpkit crashkernel plan'), or no crashkernel= was reserved",
    errno.EINVAL: "the kernel rejected the image or the arguments (wrong flags, a segment outside the "
                  "reservation, a kernel image this architecture cannot boot, or no crashkernel= reserved)",
    errno.ENOEXEC: "the file is not a kernel image this kernel can kexec (bzImage with a 64-bit entry expected)",
    errno.EKEYREJECTED: "signature verification rejected the kernel image (KEXEC_SIG / lockdown)",
    errno.EBADMSG: "the kernel image's signature is malformed (KEXEC_SIG)",
    errno.ENOKEY: "no key in the kernel's keyrings signed this kernel image (KEXEC_SIG)",
    errno.ENOSYS: "the running kernel was built without CONFIG_KEXEC / CONFIG_KEXEC_FILE",
    errno.ENOENT: "the kernel has no kexec_file support for this image type, or nothing is loaded",
    errno.EOVERFLOW: "the command line is too long for the capture kernel",
    errno.E2BIG: "the command line is too long for the capture kernel",
}


def hint_for(err: int) -> str:
    return _HINTS.get(err, "unexpected error")


SyscallFn = Callable[..., int]


@dataclass
class _Libc:
    fn: Any = None


_libc = _Libc()


def _real_syscall(*args: Any) -> int:
    """libc ``syscall(2)``; returns -errno style via ctypes' saved errno (raised by the caller)."""
    if _libc.fn is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = lib.syscall
        fn.restype = ctypes.c_long
        _libc.fn = fn
    ret = int(_libc.fn(*args))
    if ret == -1:
        return -ctypes.get_errno()
    return ret


def syscall_number(name: str, arch: str | None = None) -> int:
    a = arch or platform.machine()
    try:
        return SYS_NUMBERS[a][name]
    except KeyError:
        raise UnsupportedError(f"{name} on {a} (known: {', '.join(SYS_NUMBERS)})") from None


def _check(call: str, ret: int) -> None:
    if ret < 0:
        raise KexecError(call, -ret, hint_for(-ret))


def kexec_file_load(kernel_fd: int, initrd_fd: int | None, cmdline: str, flags: int, *,
                    syscall: SyscallFn | None = None, arch: str | None = None) -> None:
    """``kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags)``.

    ``cmdline_len`` counts the terminating NUL, as the kernel requires.
    Without an initrd pass ``initrd_fd=None``: -1 is sent and
    ``KEXEC_FILE_NO_INITRAMFS`` is set.  With ``KEXEC_FILE_UNLOAD`` the other
    arguments are ignored by the kernel (sent as -1, -1, 0, NULL).
    """
    nr = syscall_number("kexec_file_load", arch)
    fn = syscall or _real_syscall
    if flags & KEXEC_FILE_UNLOAD:
        _check("kexec_file_load(unload)", fn(ctypes.c_long(nr), ctypes.c_int(-1), ctypes.c_int(-1),
                                             ctypes.c_ulong(0), ctypes.c_char_p(None), ctypes.c_ulong(flags)))
        return
    raw = cmdline.encode()
    if b"\0" in raw:
        raise ConfigError("the capture command line contains a NUL byte")
    buf = ctypes.create_string_buffer(raw)  # NUL-terminated; len(raw) + 1 bytes
    if initrd_fd is None:
        flags |= KEXEC_FILE_NO_INITRAMFS
    ret = fn(ctypes.c_long(nr), ctypes.c_int(kernel_fd), ctypes.c_int(-1 if initrd_fd is None else initrd_fd),
             ctypes.c_ulong(len(raw) + 1), buf, ctypes.c_ulong(flags))
    _check("kexec_file_load", ret)


def kexec_file_unload(*, on_crash: bool = True, syscall: SyscallFn | None = None, arch: str | None = None) -> None:
    """Unload the crash (or the normal) kexec image."""
    kexec_file_load(-1, None, "", KEXEC_FILE_UNLOAD | (KEXEC_FILE_ON_CRASH if on_crash else 0),
                    syscall=syscall, arch=arch)


class KexecSegment(ctypes.Structure):
    """``struct kexec_segment { const void *buf; size_t bufsz; const void *mem; size_t memsz; }``."""

    _fields_ = [("buf", ctypes.c_void_p), ("bufsz", ctypes.c_size_t),
                ("mem", ctypes.c_void_p), ("memsz", ctypes.c_size_t)]


@dataclass(frozen=True)
class Segment:
    """One piece of the image: ``data`` copied to physical ``mem``, zero-filled up to ``memsz``."""

    data: bytes
    mem: int
    memsz: int


def kexec_load(entry: int, segments: Sequence[Segment], flags: int, *, syscall: SyscallFn | None = None,
               arch: str | None = None, page_size: int = 4096) -> None:
    """``kexec_load(entry, nr_segments, segments, flags)``; flags should include the arch (``KEXEC_ARCH_X86_64``).

    The kernel requires ``mem`` and ``memsz`` page aligned, ``bufsz <= memsz``,
    no overlaps and at most 16 segments; those are checked here first so the
    error says which segment is wrong instead of a bare EINVAL.
    """
    if not segments:
        raise ConfigError("kexec_load needs at least one segment")
    if len(segments) > KEXEC_SEGMENT_MAX:
        raise ConfigError(f"{len(segments)} segments, the kernel accepts at most {KEXEC_SEGMENT_MAX}")
    spans = []
    for i, s in enumerate(segments):
        if s.mem % page_size or s.memsz % page_size:
            raise ConfigError(f"segment {i}: mem {s.mem:#x} / memsz {s.memsz:#x} not page aligned")
        if len(s.data) > s.memsz:
            raise ConfigError(f"segment {i}: {len(s.data)} bytes do not fit memsz {s.memsz:#x}")
        spans.append((s.mem, s.mem + s.memsz, i))
    spans.sort()
    for (_, e1, i1), (s2, _, i2) in zip(spans, spans[1:], strict=False):
        if s2 < e1:
            raise ConfigError(f"segments {i1} and {i2} overlap")
    nr = syscall_number("kexec_load", arch)
    bufs = [ctypes.create_string_buffer(s.data, len(s.data)) for s in segments]
    arr = (KexecSegment * len(segments))()
    for i, (s, b) in enumerate(zip(segments, bufs, strict=True)):
        arr[i].buf = ctypes.cast(b, ctypes.c_void_p).value
        arr[i].bufsz = len(s.data)
        arr[i].mem = s.mem
        arr[i].memsz = s.memsz
    fn = syscall or _real_syscall
    ret = fn(ctypes.c_long(nr), ctypes.c_ulong(entry), ctypes.c_ulong(len(segments)), arr, ctypes.c_ulong(flags))
    _check("kexec_load", ret)


def kexec_load_unload(*, syscall: SyscallFn | None = None, arch: str | None = None) -> None:
    """Unload the crash image loaded with kexec_load (``nr_segments = 0``)."""
    nr = syscall_number("kexec_load", arch)
    fn = syscall or _real_syscall
    _check("kexec_load(unload)", fn(ctypes.c_long(nr), ctypes.c_ulong(0), ctypes.c_ulong(0), None,
                                    ctypes.c_ulong(KEXEC_ON_CRASH | KEXEC_ARCH_X86_64)))
