"""The guest initramfs: busybox, virtio modules, kexec, makedumpfile, /init.

One image (``base``) serves both kernels: the first kernel gets it together
with a second archive (``payload``) holding ``/boot/vmlinuz`` and a copy of
``base`` as ``/boot/initrd.img``, which it hands to ``kexec -p``.  The capture
kernel thus never carries the kernel image or a nested initramfs (lab notes:
that costs 2–3 MB of reservation per unpacked MB).
"""

from __future__ import annotations

import gzip
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kdumpkit.errors import LabError
from kdumpkit.lab import cpio
from kdumpkit.lab.guest_init import INIT_SCRIPT
from kdumpkit.lab.kernels import Kernel
from kdumpkit.lab.modules import builtin_modules, dependencies, load_order, module_index

#: Drivers every run needs (the disks are virtio-blk on virtio-pci).
BASE_MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk"]
OPTIONAL_MODULES = {"virtio_pci_legacy_dev", "virtio_pci_modern_dev"}
BUSYBOX = "/bin/busybox"
PROGRAMS = ["/usr/sbin/kexec", "/usr/bin/makedumpfile"]


@dataclass(frozen=True)
class Images:
    """Paths of the two archives QEMU gets (concatenated as one initrd)."""

    base: Path
    payload: Path
    initrd: Path  # base + payload, what ``-initrd`` takes
    modules: tuple[str, ...]


def init_script() -> bytes:
    return INIT_SCRIPT.encode()


def shared_libs(program: str) -> list[str]:
    """Absolute paths of the shared libraries (and loader) ``program`` needs, via ``ldd``."""
    try:
        out = subprocess.run(["ldd", program], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        raise LabError("ldd not found") from None
    libs: list[str] = []
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(m.group(1))
    return libs


def _add_host_file(tree: cpio.Tree, path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise LabError(f"{path} is missing on the host (make apt)")
    mode = stat.S_IMODE(p.stat().st_mode)
    tree.file(path, p.read_bytes(), mode)


def build_base(kernel: Kernel, extra_modules: list[str] | None = None,
               extra_files: dict[str, Path] | None = None) -> tuple[bytes, list[str]]:
    """The gzip'd base archive and the module load order it carries."""
    tree = cpio.Tree()
    for d in ("proc", "sys", "dev", "tmp", "boot", "etc/lab", "lib/modules/lab", "root"):
        tree.dir(d)
    tree.node("dev/console", stat.S_IFCHR, 5, 1)
    tree.node("dev/null", stat.S_IFCHR, 1, 3, 0o666)
    tree.node("dev/ttyS0", stat.S_IFCHR, 4, 64)
    _add_host_file(tree, BUSYBOX)
    applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "bin/busybox":
            tree.symlink(applet, "/bin/busybox")
    for prog in PROGRAMS:
        _add_host_file(tree, prog)
        for lib in shared_libs(prog):
            if lib not in tree:
                _add_host_file(tree, lib)
    tree.file("init", init_script(), 0o755)

    index = module_index(kernel.modules_dir)
    if index:
        deps = dependencies(kernel.modules_dir, index)
        builtin = builtin_modules(kernel.modules_dir)
        # 5.10 has no separate virtio_pci_{legacy,modern}_dev: ask only for what exists.
        wanted = [m for m in BASE_MODULES if m in index or m in builtin or m not in OPTIONAL_MODULES]
        order = load_order(wanted + list(extra_modules or []), deps, builtin=builtin)
    else:
        order = []  # a custom kernel without modules: its virtio drivers must be built in
    for name in order:
        tree.file(f"lib/modules/lab/{name}.ko", index[name].read_bytes())
    for dest, src in (extra_files or {}).items():
        tree.file(dest, src.read_bytes(), 0o644)
    tree.file("etc/lab/modules", ("\n".join(order) + "\n").encode())
    return gzip.compress(tree.archive(), compresslevel=6, mtime=0), order


def build(kernel: Kernel, workdir: Path, extra_modules: list[str] | None = None,
          extra_files: dict[str, Path] | None = None, *, capture_initrd: bytes | None = None,
          runtime: bytes | None = None, runtime_in_capture: bool = False) -> Images:
    """Write base, payload and the combined initrd under ``workdir``.

    With ``capture_initrd`` (kdumpkit's capture initramfs) the payload carries
    it instead of a copy of ``base``, and ``runtime`` (a compressed archive
    with the Python runtime, for ``kdumpkit load`` in the first kernel) is
    appended to the base: the kernel unpacks concatenated archives in order.
    ``runtime_in_capture`` appends it before the copy for ``kexec -p`` is
    taken, so the capture kernel can run ``kdumpkit save`` itself.
    """
    base, order = build_base(kernel, extra_modules, extra_files)
    if runtime is not None and runtime_in_capture:
        base, runtime = base + runtime, None
    payload_tree = cpio.Tree()
    payload_tree.file("boot/vmlinuz", kernel.vmlinuz.read_bytes())
    if capture_initrd is not None:
        payload_tree.file("boot/kdumpkit-initrd.img", capture_initrd)
    else:
        payload_tree.file("boot/initrd.img", base)
    payload = gzip.compress(payload_tree.archive(), compresslevel=1, mtime=0)
    if runtime is not None:
        base += runtime
    workdir.mkdir(parents=True, exist_ok=True)
    paths = Images(workdir / "base.img", workdir / "payload.img", workdir / "initrd.img", tuple(order))
    paths.base.write_bytes(base)
    paths.payload.write_bytes(payload)
    paths.initrd.write_bytes(base + payload)
    return paths
