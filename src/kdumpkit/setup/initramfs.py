"""``kdumpkit initramfs build``: the capture initramfs that runs ``kdumpkit capture``.

Contents: static busybox (Debian ``busybox-static``) for the shell and the
final action, the kernel modules the dump target needs in dependency order
(:mod:`kdumpkit.lab.modules`), the trimmed Python runtime with kdumpkit
(:mod:`kdumpkit.setup.runtime`), the configuration at
``/etc/kdumpkit/kdumpkit.toml`` (validated here, in the running system, not
after a crash), and ``/init``.  The /init decides the final action itself
(the capture runs with ``KDUMPKIT_NO_ACTION=1``), so a Python that dies
half-way still ends in the configured failure action instead of a kernel
panic for a dead PID 1.

With an ssh or nfs target the image also gets networking
(:mod:`kdumpkit.setup.network`): NIC and NFS modules, ``udhcpc`` or a static
address, and for ssh the client, its key and the server's host key; /init
brings the network up (phase ``network``) before the capture.

Console lines ``kdumpkit-init: phase=...`` / ``kdumpkit-init: fail reason=...``
say how far it got (the lab reads them like its own markers).
"""

from __future__ import annotations

import gzip
import lzma
import os
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdumpkit.errors import ConfigError, KdumpkitError
from kdumpkit.lab import cpio
from kdumpkit.lab.modules import builtin_modules, dependencies, load_order, module_index
from kdumpkit.setup.blockdev import FS_MODULE, FS_SOFTDEPS, TargetFs, locate
from kdumpkit.setup.config import Config, load_config, loads_config
from kdumpkit.setup.network import INIT_NETWORK, HostNic, add_network_files, default_route_nic, network_modules
from kdumpkit.setup.runtime import Runtime, add_runtime

BUSYBOX = "/bin/busybox"
CONFIG_PATH = "/etc/kdumpkit/kdumpkit.toml"
#: virtio-blk on virtio-pci: what a KVM/QEMU guest's disks need.  Absent ones
#: (5.10 has no separate virtio_pci_*_dev) are skipped.
DEFAULT_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
                   "virtio_blk")
OPTIONAL_MODULES = frozenset({"virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_ring",
                              "virtio"})
COMPRESSIONS = ("gzip", "xz", "none")
#: ``host_nic`` default of :func:`capture_tree`: look at this host's default route.
DETECT = "detect"

DEFAULT_CONFIG_TEXT = """\
# kdumpkit capture configuration (written by kdumpkit initramfs build: no --config given)
dump_level = 31
codec = "lzo"
final_action = "reboot"
failure_action = "reboot"

[[target]]
type = "local"
path = "/var/crash"
"""

INIT = r'''#!/bin/sh
# kdumpkit capture initramfs /init (busybox sh): mount, load modules, wait for
# the dump devices, mount local targets, bring the network up (ssh/nfs
# targets), run kdumpkit capture, final action.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /var/crash
exec </dev/console >/dev/console 2>&1
say() { echo "kdumpkit-init: $* uptime=$(cut -d' ' -f1 /proc/uptime)"; }
act() {
    say "phase=action action=$1"
    sync
    case "$1" in
        shell) exec /bin/sh ;;
        halt) halt -f ;;
        poweroff) poweroff -f ;;
        *) reboot -f ;;
    esac
    sleep 5; echo b >/proc/sysrq-trigger
}
fail() { echo "kdumpkit-init: fail reason=$*"; act "$(cat /etc/kdumpkit/failure_action)"; }
@NETWORK@[ -e /proc/vmcore ] || { say "no /proc/vmcore: not a capture kernel"; act "$(cat /etc/kdumpkit/final_action)"; }
for m in $(cat /etc/kdumpkit/modules); do
    insmod "/lib/modules/kdumpkit/$m.ko" || say "warn insmod-failed=$m"
done
for dev in $(cat /etc/kdumpkit/devices); do
    i=0
    while [ ! -b "$dev" ]; do
        i=$((i + 1)); [ $i -gt 300 ] && fail "no block device $dev"
        sleep 0.1
    done
done
# Local targets: the filesystem that holds each one (found by UUID/LABEL when
# the image was built), mounted under /kdumpkit/mnt and the target directory
# bound at the path the configuration names.  A target that cannot be mounted
# stays on the RAM root, and kdumpkit capture refuses to write there.
n=0
while read -r spec fstype subdir target; do
    [ -n "$spec" ] || continue
    n=$((n + 1)); mnt=/kdumpkit/mnt/$n; dev=""; i=0
    mkdir -p "$mnt" "$target"
    while [ -z "$dev" ] && [ $i -le 300 ]; do
        case "$spec" in
            UUID=*|LABEL=*|PARTUUID=*) dev=$(findfs "$spec" 2>/dev/null) ;;
            *) [ -b "$spec" ] && dev=$spec ;;
        esac
        [ -n "$dev" ] || { i=$((i + 1)); sleep 0.1; }
    done
    [ -n "$dev" ] || { say "warn mount-failed=$spec reason=no-device"; continue; }
    mount -t "$fstype" "$dev" "$mnt" || { say "warn mount-failed=$spec device=$dev"; continue; }
    mkdir -p "$mnt/$subdir" && mount -o bind "$mnt/$subdir" "$target" &&
        say "mounted $spec ($dev) $subdir on $target" || say "warn bind-failed=$target"
done </etc/kdumpkit/mounts
# Not fatal: without a network the capture's fallback chain moves on to local/raw targets.
[ -e /etc/kdumpkit/network ] && { network || say "warn network-down: ssh/nfs targets will fail"; }
say "phase=capture-start release=$(uname -r) vmcore-size=$(stat -c %s /proc/vmcore)"
KDUMPKIT_NO_ACTION=1 /bin/kdumpkit capture --config /etc/kdumpkit/kdumpkit.toml
rc=$?
sync
while read -r spec fstype subdir target; do [ -n "$target" ] && umount "$target" 2>/dev/null; done </etc/kdumpkit/mounts
for mnt in /kdumpkit/mnt/*; do umount "$mnt" 2>/dev/null; done
case $rc in
    0|3) say "phase=capture-done rc=$rc"; act "$(cat /etc/kdumpkit/final_action)" ;;
    *) fail "kdumpkit capture exited $rc" ;;
esac
'''.replace("@NETWORK@", INIT_NETWORK.lstrip("\n"))


def parse_mount(spec: str) -> TargetFs:
    """``--mount DEVICE:DIRECTORY[:FSTYPE]``: mount the whole filesystem at DIRECTORY (no detection)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0].startswith(("/", "UUID=", "LABEL=", "PARTUUID=")) \
            or not parts[1].startswith("/"):
        raise ConfigError(f"--mount wants DEVICE:DIRECTORY[:FSTYPE], not {spec!r}")
    fstype = parts[2] if len(parts) == 3 else "ext4"
    fsmod = FS_MODULE.get(fstype, fstype)
    return TargetFs(path=parts[1], spec=parts[0], fstype=fstype, subdir="", device=parts[0],
                    modules=(*FS_SOFTDEPS.get(fsmod, ()), fsmod))


def local_target_mounts(cfg: Config, locate_fn: Callable[[str], TargetFs] = locate) -> list[TargetFs]:
    """The filesystems of the configuration's local targets (and ``rootfs_path``), found on this system."""
    paths = [t.path for t in cfg.targets if t.type == "local"]
    if cfg.failure_action == "dump_to_rootfs":
        paths.append(cfg.rootfs_path)
    found: dict[str, TargetFs] = {}
    for p in paths:
        found.setdefault(os.path.normpath(p), locate_fn(p))
    return list(found.values())


@dataclass
class BuildResult:
    """What was built, and how big it is (compressed is what the kernel is handed)."""

    path: Path | None
    compressed: int
    unpacked: int
    modules: list[str]
    runtime: Runtime
    compression: str
    files: int = 0
    notes: list[str] = field(default_factory=list)


def host_modules_dir(release: str | None = None) -> Path:
    rel = release or os.uname().release
    for base in ("/lib/modules", "/usr/lib/modules"):
        p = Path(base, rel)
        if p.is_dir():
            return p
    raise KdumpkitError(f"no modules directory for kernel {rel} (give --modules-dir)")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    return data


def _index(modules_dir: Path) -> dict[str, Path]:
    """Like :func:`module_index`, but also compressed ``.ko.xz/.gz/.zst`` (a host's own tree)."""
    idx = module_index(modules_dir)
    for p in sorted(modules_dir.rglob("*.ko.*")):
        name = p.name.split(".ko")[0].replace("-", "_")
        idx.setdefault(name, p)
    return idx


def add_modules(tree: cpio.Tree, modules_dir: Path | None, wanted: list[str],
                optional: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Copy ``wanted`` and their dependencies (load order in ``/etc/kdumpkit/modules``).

    Names in ``optional`` (and :data:`OPTIONAL_MODULES`) are skipped when the
    kernel has no such module; any other missing name is an error.
    """
    order: list[str] = []
    if modules_dir is not None:
        index = _index(modules_dir)
        if index:
            builtin = builtin_modules(modules_dir)
            skip = OPTIONAL_MODULES | set(optional)
            want = [m for m in wanted if m in index or m in builtin or m not in skip]
            order = load_order(want, dependencies(modules_dir, index), builtin=builtin)
            for name in order:
                tree.file(f"lib/modules/kdumpkit/{name}.ko", _module_bytes(index[name]))
    tree.file("etc/kdumpkit/modules", ("\n".join(order) + "\n").encode())
    return order


def add_busybox(tree: cpio.Tree) -> None:
    if not Path(BUSYBOX).is_file():
        raise KdumpkitError(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    tree.file(BUSYBOX, Path(BUSYBOX).read_bytes(), 0o755)
    applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "bin/busybox":
            tree.symlink(applet, "/bin/busybox")


def compress(data: bytes, how: str) -> bytes:
    """gzip (every kernel) or xz with CRC32 (the kernel's xz decoder takes no other check)."""
    if how == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if how == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                             filters=[{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20}])
    if how == "none":
        return data
    raise ConfigError(f"compression must be one of {', '.join(COMPRESSIONS)}")


def capture_tree(cfg_text: str, *, modules_dir: Path | None, modules: list[str] | None = None,
                 mounts: list[TargetFs] | None = None, host_nic: HostNic | None | str = DETECT,
                 notes: list[str] | None = None) -> tuple[cpio.Tree, list[str], Runtime]:
    """The initramfs tree for the configuration ``cfg_text`` (validated first).

    ``host_nic``: the NIC whose driver and MAC the image prefers (default:
    this host's default-route interface; None: none).  ``notes`` receives
    what the build added for networking and why.
    """
    cfg = loads_config(cfg_text, "configuration")
    nic = default_route_nic() if host_nic == DETECT else host_nic
    assert nic is None or isinstance(nic, HostNic)
    net = network_modules(cfg, nic)
    mounts = list(mounts or [])
    tree = cpio.Tree()
    for d in ("proc", "sys", "dev", "tmp", "var/crash", "root"):
        tree.dir(d)
    tree.node("dev/console", stat.S_IFCHR, 5, 1)
    tree.node("dev/null", stat.S_IFCHR, 1, 3, 0o666)
    add_busybox(tree)
    wanted = list(DEFAULT_MODULES) + list(modules or [])
    softdeps = {d for deps in FS_SOFTDEPS.values() for d in deps}
    for m in mounts:
        wanted += [x for x in m.modules if x not in wanted]
    wanted += [m for m in net.modules if m not in wanted]
    order = add_modules(tree, modules_dir, wanted, net.optional | softdeps)
    runtime = add_runtime(tree, codecs=(cfg.codec,))
    if cfg.needs_network:
        add_network_files(tree, cfg, nic, net)
        missing = [m for m in net.modules if m in net.optional and m not in order]
        net.notes += [f"NIC driver {m} is not a module of this kernel: left out" for m in missing]
    if notes is not None:
        notes += net.notes
    tree.file(CONFIG_PATH, cfg_text.encode(), 0o600)
    devices = sorted({t.device for t in cfg.targets if t.type == "raw"})
    tree.file("etc/kdumpkit/devices", ("\n".join(devices) + "\n").encode())
    tree.file("etc/kdumpkit/mounts", "".join(m.mounts_line() for m in mounts).encode())
    tree.file("etc/kdumpkit/final_action", f"{cfg.final_action}\n".encode())
    failure = "reboot" if cfg.failure_action == "dump_to_rootfs" else cfg.failure_action
    tree.file("etc/kdumpkit/failure_action", f"{failure}\n".encode())
    tree.file("init", INIT.encode(), 0o755)
    return tree, order, runtime


def build(out: Path | None, *, config: str | None = None, config_text: str | None = None,
          modules_dir: Path | None = None, modules: list[str] | None = None, mounts: list[TargetFs] | None = None,
          compression: str = "gzip", host_nic: HostNic | None | str = DETECT) -> tuple[bytes, BuildResult]:
    """Build the capture initramfs; write it to ``out`` (mode 0600) when given."""
    if config_text is None:
        if config is not None:
            load_config(config)  # validates, with the file's name in errors
            config_text = Path(config).read_text()
        else:
            config_text = DEFAULT_CONFIG_TEXT
    notes: list[str] = []
    tree, order, runtime = capture_tree(config_text, modules_dir=modules_dir, modules=modules, mounts=mounts,
                                        host_nic=host_nic, notes=notes)
    raw = tree.archive()
    blob = compress(raw, compression)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, out)
    return blob, BuildResult(out, len(blob), len(raw), order, runtime, compression, len(tree.names()), notes)


def default_output(release: str | None = None) -> Path:
    """``/var/lib/kdumpkit/initrd.img-<release>``: the first place ``kdumpkit load`` looks."""
    return Path(f"/var/lib/kdumpkit/initrd.img-{release or os.uname().release}")


def config_summary(cfg: Config) -> str:
    return ", ".join(t.describe() for t in cfg.targets)
