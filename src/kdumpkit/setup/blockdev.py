"""Which filesystem holds a local dump target, and what a capture kernel needs to mount it.

A ``local`` target (``/var/crash``, ``rootfs_path``) is a directory of the
running system.  The capture initramfs has no udev, no fstab and only the
drivers it was given, so everything is found here, on the running system,
when the image is built (the way dracut's ``hostonly`` mode and
kdump-tools' ``MODULES=dep`` do it):

* the mount that holds the directory (``/proc/self/mountinfo``, longest
  prefix), its filesystem type and the directory's path inside it;
* a stable name for the device: ``UUID=`` from ``/dev/disk/by-uuid`` (or
  ``blkid``), since ``/dev/vda1`` can be ``/dev/sda1`` in the capture kernel;
* the kernel modules of every device on the way from the filesystem down to
  the controller, read from sysfs (``driver/module`` links): virtio, AHCI/SATA,
  NVMe, SCSI, device-mapper and md members alike, plus the filesystem's module.

Nothing is guessed: a target on tmpfs or on a network filesystem is refused
with the reason (its dump would be lost, or it needs an ``nfs`` target).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kdumpkit.errors import ConfigError

#: Filesystems a capture kernel can write a dump to (a module of that name, or built in).
LOCAL_FSTYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "f2fs", "jfs", "reiserfs"})
#: ext2/ext3 are served by the ext4 driver on every kernel kdumpkit supports.
FS_MODULE = {"ext2": "ext4", "ext3": "ext4"}
#: Modules a filesystem asks for at mount time through the crypto API (not in ``depends=``).
FS_SOFTDEPS = {"ext4": ("crc32c_generic",), "btrfs": ("crc32c_generic", "xxhash_generic"),
               "xfs": ("crc32c_generic",), "f2fs": ("crc32_generic",)}
VOLATILE_FSTYPES = frozenset({"tmpfs", "ramfs", "rootfs", "devtmpfs", "proc", "sysfs", "overlay", "squashfs"})
NETWORK_FSTYPES = frozenset({"nfs", "nfs4", "cifs", "smb3", "9p", "fuse.sshfs", "ceph", "glusterfs"})


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo``."""

    devno: str        # "major:minor"
    fs_root: str      # the directory of the filesystem mounted here (bind mounts: not "/")
    mountpoint: str
    fstype: str
    source: str


@dataclass(frozen=True)
class TargetFs:
    """A local target's filesystem as the capture initramfs will mount it."""

    path: str          # the target directory as configured (the capture sees it at the same path)
    spec: str          # UUID=…, LABEL=… or a /dev path: what /init waits for and mounts
    fstype: str
    subdir: str        # the target's directory inside that filesystem, relative ("var/crash")
    device: str        # the device node on the running system (for messages)
    modules: tuple[str, ...]  # drivers from the filesystem down to the controller, then the filesystem's

    def mounts_line(self) -> str:
        """``SPEC FSTYPE SUBDIR TARGET`` for ``/etc/kdumpkit/mounts`` (no field has blanks: checked)."""
        for field in (self.spec, self.fstype, self.subdir or ".", self.path):
            if not field or any(c.isspace() for c in field):
                raise ConfigError(f"local target {self.path!r}: {field!r} cannot be passed to the capture initramfs")
        return f"{self.spec} {self.fstype} {self.subdir or '.'} {self.path}\n"


def _unescape(field: str) -> str:
    """mountinfo escapes blanks, tabs, newlines and backslashes as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        a, b = left.split(), right.split()
        if not sep or len(a) < 5 or len(b) < 2:
            continue
        entries.append(MountEntry(a[2], _unescape(a[3]), _unescape(a[4]), b[0], _unescape(b[1])))
    return entries


def _within(path: str, mountpoint: str) -> bool:
    return mountpoint == "/" or path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")


def _existing(path: str) -> str:
    """``path`` resolved, or its nearest existing ancestor resolved plus the missing rest."""
    p = os.path.abspath(path)
    rest: list[str] = []
    while not os.path.exists(p) and p != "/":
        p, tail = os.path.split(p)
        rest.insert(0, tail)
    return os.path.join(os.path.realpath(p), *rest)


def mount_for(path: str, entries: list[MountEntry]) -> MountEntry:
    """The mount holding ``path`` (the last one mounted on the longest matching mount point)."""
    real = _existing(path)
    best: MountEntry | None = None
    for e in entries:
        if _within(real, e.mountpoint) and (best is None or len(e.mountpoint) >= len(best.mountpoint)):
            best = e
    if best is None:
        raise ConfigError(f"no mounted filesystem holds {path}")
    return best


def devname(devno: str, *, sys: Path = Path("/sys")) -> str | None:
    """The kernel's name of block device ``devno`` (``vda1``, ``dm-0``), from its sysfs ``uevent``."""
    try:
        text = (sys / "dev" / "block" / devno / "uevent").read_text()
    except OSError:
        return None
    return next((ln[8:].strip() for ln in text.splitlines() if ln.startswith("DEVNAME=")), None)


def stable_spec(devno: str, source: str, *, sys: Path = Path("/sys"), dev: Path = Path("/dev")) -> str:
    """``UUID=…`` (else ``LABEL=…``, else the device path) for the block device ``devno``.

    udev's ``/dev/disk/by-uuid`` links point at ``../../<devname>``; compared
    by name, so no device node is opened.  Without udev, ``blkid`` is asked.
    """
    name = devname(devno, sys=sys)
    for kind in ("uuid", "label"):
        d = dev / "disk" / f"by-{kind}"
        if name and d.is_dir():
            for link in sorted(d.iterdir()):
                if link.is_symlink() and os.path.basename(os.readlink(link)) == name:
                    return f"{kind.upper()}={_unescape_udev(link.name)}"
    if source.startswith("/dev/"):
        try:
            uuid = subprocess.run(["blkid", "-o", "value", "-s", "UUID", source], capture_output=True, text=True,
                                  timeout=30, check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            uuid = ""
        return f"UUID={uuid}" if uuid else source
    raise ConfigError(f"cannot name the device {source} ({devno}) for the capture kernel")


def _unescape_udev(name: str) -> str:
    """udev writes ``/`` and odd bytes in by-label names as ``\\x2f``."""
    return name.encode().decode("unicode_escape") if "\\x" in name else name


def device_modules(devno: str, *, sys: Path = Path("/sys")) -> list[str]:
    """Driver modules from the block device ``devno`` down to its controller, stacked devices included.

    Walks sysfs upwards from the device (a partition's parent is its disk)
    and follows ``slaves/`` of device-mapper and md devices to their members;
    every ``driver/module`` link on the way names a module (built-in drivers
    have none and need nothing).
    """
    seen: set[str] = set()
    mods: list[str] = []

    def add(name: str) -> None:
        if name not in mods:
            mods.append(name)

    def walk(block: Path) -> None:
        real = block.resolve()
        if str(real) in seen:
            return
        seen.add(str(real))
        holder = real if (real / "slaves").is_dir() else real.parent
        slaves = holder / "slaves"
        if slaves.is_dir() and any(slaves.iterdir()):
            add("dm_mod" if holder.name.startswith("dm-") else "md_mod" if holder.name.startswith("md") else "")
            for member in sorted(slaves.iterdir()):
                walk(member)
        d = real
        while str(d).startswith(str(sys / "devices")) and d != sys / "devices":
            mod = d / "driver" / "module"
            if mod.exists():
                add(mod.resolve().name)
            d = d.parent

    walk(sys / "dev" / "block" / devno)
    return [m.replace("-", "_") for m in mods if m]


def volatile_fs(path: str, *, proc: Path = Path("/proc")) -> str | None:
    """The filesystem type when ``path`` lives in RAM (tmpfs, ramfs, the initramfs root), else None."""
    try:
        m = mount_for(path, parse_mountinfo((proc / "self" / "mountinfo").read_text()))
    except (OSError, ConfigError):
        return None
    return m.fstype if m.fstype in VOLATILE_FSTYPES else None


def locate(path: str, *, proc: Path = Path("/proc"), sys: Path = Path("/sys"), dev: Path = Path("/dev")) -> TargetFs:
    """Where the local target ``path`` lives, for mounting it from the capture initramfs."""
    try:
        entries = parse_mountinfo((proc / "self" / "mountinfo").read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {proc}/self/mountinfo: {e.strerror}") from None
    m = mount_for(path, entries)
    if m.fstype in VOLATILE_FSTYPES:
        raise ConfigError(f"local target {path} is on {m.fstype} ({m.mountpoint}): a dump there is lost at the "
                          "reboot; choose a directory on a disk")
    if m.fstype in NETWORK_FSTYPES:
        raise ConfigError(f"local target {path} is on {m.fstype} ({m.source}): use an nfs target instead")
    if m.fstype not in LOCAL_FSTYPES:
        raise ConfigError(f"local target {path} is on {m.fstype}, which the capture initramfs cannot mount "
                          f"(supported: {', '.join(sorted(LOCAL_FSTYPES))})")
    inside = os.path.relpath(_existing(path), m.mountpoint)
    subdir = os.path.normpath(os.path.join(m.fs_root, "" if inside == "." else inside)).lstrip("/")
    fsmod = FS_MODULE.get(m.fstype, m.fstype)
    # The checksum driver first: libcrc32c (xfs, btrfs) asks the crypto API for crc32c when it is
    # inserted, and the capture initramfs has no modprobe to load it on demand.
    modules = [*device_modules(m.devno, sys=sys), *FS_SOFTDEPS.get(fsmod, ()), fsmod]
    return TargetFs(path=os.path.normpath(path), spec=stable_spec(m.devno, m.source, sys=sys, dev=dev), fstype=m.fstype,
                    subdir=subdir, device=m.source, modules=tuple(dict.fromkeys(modules)))
