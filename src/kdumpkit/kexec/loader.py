"""Loading and unloading the capture kernel.

``mode="file"`` (the default) hands kernel, initramfs and command line to
``kexec_file_load`` with ``KEXEC_FILE_ON_CRASH``: the *kernel* parses the
bzImage, builds the elfcorehdr (see :mod:`kdumpkit.kexec.elfcorehdr` for the
layout), the boot parameters and its own purgatory, and verifies the image
signature when KEXEC_SIG/lockdown demands it.  That is why it is the only
mode that works under Secure Boot, and why kdumpctl uses it by default.

``mode="classic"`` hands ``kexec_load`` (``KEXEC_ON_CRASH |
KEXEC_ARCH_X86_64``) segments kdumpkit builds itself
(:mod:`kdumpkit.kexec.classic`): kernel, boot_params + command line,
initrd, elfcorehdr and a 512-byte purgatory (:mod:`kdumpkit.kexec.purgatory`)
that is the entry point.  It needs ``kexec_load`` allowed (no lockdown,
``kernel.kexec_load_disabled=0``) and root to read ``/proc/iomem``,
``/proc/kallsyms`` and the ``crash_notes``; the purgatory does not verify
the segments' SHA-256 the way kexec-tools' does.

The capture command line is derived like kdumpctl does: start from the
running kernel's ``/proc/cmdline``, drop the options that would hurt a
small crash kernel (``crashkernel=``, ``hugepages=``, ``quiet`` …) or that the
appended defaults replace, then append kdumpctl's x86_64 defaults.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kdumpkit.errors import ConfigError, KdumpkitError, KernelError, UsageError
from kdumpkit.kexec import classic, syscalls
from kdumpkit.kexec.bzimage import read_bzimage
from kdumpkit.kexec.kallsyms_snapshot import Snapshot, initrd_with_snapshot, snapshot_archive, take_snapshot
from kdumpkit.kexec.syscalls import KEXEC_ARCH_X86_64, KEXEC_FILE_ON_CRASH, KEXEC_ON_CRASH, Segment, SyscallFn

#: kdumpctl's KDUMP_COMMANDLINE_REMOVE (x86_64) plus what ``prepare_cmdline`` always removes.
DEFAULT_REMOVE = ("crashkernel", "panic_on_warn", "hugepages", "hugepagesz", "default_hugepagesz", "slub_debug",
                  "quiet", "log_buf_len", "swiotlb", "cma", "hugetlb_cma", "ignition.firstboot",
                  "elfcorehdr", "memmap", "kexec_jump_back_entry", "rd.plymouth", "splash")
#: kdumpctl's x86_64 KDUMP_COMMANDLINE_APPEND (kdump-utils, gen-kdump-sysconfig.sh) and the common part.
DEFAULT_APPEND = ("irqpoll nr_cpus=1 reset_devices cgroup_disable=memory mce=off numa=off udev.children-max=2 "
                  "panic=10 acpi_no_memhotplug transparent_hugepage=never nokaslr hest_disable cma=0 "
                  "pcie_ports=compat novmcoredd hugetlb_cma=0 kfence.sample_interval=0")


def split_cmdline(cmdline: str) -> list[str]:
    """Split a kernel command line into words; double quotes protect blanks, as the kernel's ``next_arg``."""
    words: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in cmdline.strip():
        if ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch.isspace() and not quoted:
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if quoted:
        raise ConfigError(f"unbalanced double quote in command line {cmdline!r}")
    if cur:
        words.append("".join(cur))
    return words


def _key(word: str) -> str:
    return word.split("=", 1)[0]


def capture_cmdline(current: str, *, remove: Iterable[str] = DEFAULT_REMOVE, append: str = DEFAULT_APPEND,
                    extra: str = "") -> str:
    """The capture kernel's command line from the running one's.

    Words whose key is in ``remove`` go; so does any key ``append``/``extra``
    set (the appended value wins, and the kernel would otherwise see both;
    ``extra`` wins over ``append``);
    init arguments after ``--`` go, since the capture initramfs has its own init.
    """
    words = split_cmdline(current)
    if "--" in words:
        words = words[:words.index("--")]
    extra_words = split_cmdline(extra)
    extra_keys = {_key(w) for w in extra_words}
    added = [w for w in split_cmdline(append) if _key(w) not in extra_keys] + extra_words
    drop = set(remove) | {_key(w) for w in added}
    kept = [w for w in words if _key(w) not in drop]
    out: list[str] = []
    for w in kept + added:
        if w not in out:
            out.append(w)
    return " ".join(out)


@dataclass
class LoadPlan:
    """Everything :func:`load` will pass, for ``--dry-run`` and for tests."""

    mode: str
    kernel: Path
    initrd: Path | None
    cmdline: str
    flags: int
    notes: list[str] = field(default_factory=list)
    #: the ``/proc/kallsyms`` snapshot appended to the initramfs (None: not taken)
    kallsyms: Snapshot | None = None
    #: ``mode="classic"``: the segments kexec_load gets (initrd bytes are read at load time)
    classic: classic.ClassicImage | None = None


def _release(root: Path) -> str:
    try:
        return (root / "proc/sys/kernel/osrelease").read_text().strip()
    except OSError:
        return os.uname().release


def default_kernel(root: Path | str = "/") -> Path:
    rootp = Path(root)
    return rootp / f"boot/vmlinuz-{_release(rootp)}"


#: Capture initramfs images, kdumpkit's first: kdumpctl's and kdump-tools' are capture images too.
INITRD_CANDIDATES = ("var/lib/kdumpkit/initrd.img-{r}", "boot/initramfs-{r}kdump.img", "var/lib/kdump/initrd.img-{r}")
#: The system's own boot initramfs: it mounts the root filesystem and boots the
#: whole system, it does not capture.  Used only when named with ``--initrd``.
SYSTEM_INITRDS = ("boot/initrd.img-{r}", "boot/initramfs-{r}.img")


def default_initrd(root: Path | str = "/") -> Path | None:
    """The first capture initramfs found: kdumpkit's own, then kdumpctl's and kdump-tools' (never the system one)."""
    rootp = Path(root)
    r = _release(rootp)
    for pattern in INITRD_CANDIDATES:
        p = rootp / pattern.format(r=r)
        if p.is_file():
            return p
    return None


def _no_capture_initrd(root: Path) -> UsageError:
    r = _release(root)
    system = [p for p in (root / pat.format(r=r) for pat in SYSTEM_INITRDS) if p.is_file()]
    hint = (f"; {system[0]} is the system's boot initramfs, not a capture one (give it with --initrd to use it "
            "anyway)") if system else ""
    return UsageError(f"no capture initramfs for {r}: run kdumpkit initramfs build (or give --initrd PATH){hint}")


def plan_load(*, root: Path | str = "/", kernel: str | Path | None = None, initrd: str | Path | None = None,
              cmdline: str | None = None, append: str = "", mode: str = "file",
              remove: Sequence[str] = DEFAULT_REMOVE, default_append: str = DEFAULT_APPEND,
              no_initrd: bool = False, check_image: bool = True, kallsyms: bool = True) -> LoadPlan:
    """Resolve paths and the command line; nothing is loaded.

    With ``check_image`` the kernel must be a relocatable 64-bit bzImage and
    the command line must fit its ``cmdline_size`` -- errors the kernel
    would otherwise report as a bare ENOEXEC or EINVAL.  With ``kallsyms``
    (and an initramfs) the running boot's ``/proc/kallsyms`` is snapshotted
    for the capture (:mod:`kdumpkit.kexec.kallsyms_snapshot`); when it cannot
    be read the load goes on without it and a note says so.
    """
    if mode not in ("file", "classic"):
        raise UsageError(f"--mode must be 'file' or 'classic', not {mode!r}")
    rootp = Path(root)
    kpath = Path(kernel) if kernel else default_kernel(rootp)
    if not kpath.is_file():
        raise UsageError(f"capture kernel {kpath} not found (give --kernel PATH)")
    notes: list[str] = []
    ipath: Path | None = None
    if not no_initrd:
        ipath = Path(initrd) if initrd else default_initrd(rootp)
        if ipath is None:
            raise _no_capture_initrd(rootp)
        if not ipath.is_file():
            raise UsageError(f"capture initramfs {ipath} not found")
        if initrd is None:
            notes.append(f"initramfs: {ipath} (first found)")
    if cmdline is None:
        try:
            current = (rootp / "proc/cmdline").read_text()
        except OSError as e:
            raise KdumpkitError(f"cannot read {rootp / 'proc/cmdline'}: {e.strerror or e}") from e
        line = capture_cmdline(current, remove=remove, append=default_append, extra=append)
    else:
        line = " ".join(split_cmdline(cmdline) + split_cmdline(append))
    if check_image:
        image = read_bzimage(kpath)
        image.check_crash_kernel()
        if len(line) >= image.cmdline_size:
            raise UsageError(f"the capture command line has {len(line)} characters, {kpath} accepts "
                             f"{image.cmdline_size - 1}")
        notes.append(f"kernel: {image.version_string or kpath.name} (needs {image.init_size >> 20} MiB to run)")
    snap: Snapshot | None = None
    if kallsyms and ipath is not None:
        try:
            snap = take_snapshot(rootp)
            notes.append(f"kallsyms snapshot: {snap.symbols} symbols ({snap.module_symbols} in modules), "
                         f"{len(snap.data) >> 10} KiB gzipped, appended to the initramfs")
        except KernelError as e:
            notes.append(f"no kallsyms snapshot: {e}")
    if mode == "classic":
        return _plan_classic(rootp, kpath, ipath, line, notes, snap)
    flags = KEXEC_FILE_ON_CRASH
    return LoadPlan(mode, kpath, ipath, line, flags, notes, snap)


def _plan_classic(root: Path, kpath: Path, ipath: Path | None, line: str, notes: list[str],
                  snap: Snapshot | None) -> LoadPlan:
    try:
        kernel = kpath.read_bytes()
    except OSError as e:
        raise KdumpkitError(f"cannot read {kpath}: {e.strerror}") from e
    isize: int | None = None
    if ipath is not None:
        try:
            isize = ipath.stat().st_size
        except OSError as e:
            raise KdumpkitError(f"cannot read {ipath}: {e.strerror}") from e
        if snap is not None:  # initrd_with_snapshot: the file, zero padding to 4 bytes, the archive
            isize += -isize % 4 + len(snapshot_archive(snap))
    image = classic.build(root, kernel, line, isize, kernel_name=str(kpath))
    return LoadPlan("classic", kpath, ipath, image.cmdline, KEXEC_ON_CRASH | KEXEC_ARCH_X86_64,
                    notes + image.notes, snap, image)


def _read_fd(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    done = 0
    while done < size:
        b = os.pread(fd, size - done, done)
        if not b:
            break
        chunks.append(b)
        done += len(b)
    return b"".join(chunks)


def _load_classic(plan: LoadPlan, image: classic.ClassicImage, syscall: SyscallFn | None) -> None:
    initrd: bytes | None = None
    if plan.initrd is not None:
        if plan.kallsyms is not None:
            fd = initrd_with_snapshot(plan.initrd, snapshot_archive(plan.kallsyms))
            try:
                initrd = _read_fd(fd)
            finally:
                os.close(fd)
        else:
            try:
                initrd = plan.initrd.read_bytes()
            except OSError as e:
                raise KdumpkitError(f"cannot read {plan.initrd}: {e.strerror}") from e
    segs = [Segment(data, s.mem, s.memsz) for s, data in classic.segments(image, initrd)]
    syscalls.kexec_load(image.entry, segs, plan.flags, syscall=syscall)


def load(plan: LoadPlan, *, syscall: SyscallFn | None = None) -> None:
    """Load the capture kernel as planned: kexec_file_load (KEXEC_FILE_ON_CRASH) or, classic, kexec_load."""
    if plan.mode == "classic":
        if plan.classic is None:
            raise UsageError("a classic load needs the plan's segments (plan_load(mode='classic'))")
        _load_classic(plan, plan.classic, syscall)
        return
    try:
        kfd = os.open(plan.kernel, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KdumpkitError(f"cannot open {plan.kernel}: {e.strerror}") from e
    ifd: int | None = None
    try:
        if plan.initrd is not None and plan.kallsyms is not None:
            ifd = initrd_with_snapshot(plan.initrd, snapshot_archive(plan.kallsyms))
        elif plan.initrd is not None:
            try:
                ifd = os.open(plan.initrd, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise KdumpkitError(f"cannot open {plan.initrd}: {e.strerror}") from e
        syscalls.kexec_file_load(kfd, ifd, plan.cmdline, plan.flags, syscall=syscall)
    finally:
        os.close(kfd)
        if ifd is not None:
            os.close(ifd)


def unload(*, mode: str = "file", syscall: SyscallFn | None = None) -> None:
    """Unload the crash kernel (either way loaded: both syscalls drop the same ``kexec_crash_image``)."""
    if mode == "classic":
        syscalls.kexec_load_unload(syscall=syscall)
    else:
        syscalls.kexec_file_unload(on_crash=True, syscall=syscall)
