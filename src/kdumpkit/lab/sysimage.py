"""A real Debian installation for the lab: built from Debian's packages, booted by its own GRUB.

Why not the lab's kernel + busybox initramfs: the administrator's path
(install, ``kdumpkit setup``, reboot, crash, dump in ``/var/crash``) runs
through systemd, a boot loader's configuration, udev and a root filesystem on
a disk — and those are exactly what the lab's shortcuts hid.  So the image is
what a Debian installer leaves behind, reduced to what kdump needs:

1. ``mmdebstrap`` installs the suite's packages (``linux-image-amd64``,
   ``grub-pc``, ``systemd-sysv``, ``udev``, ``python3`` …) into a directory;
2. the host writes a few files an installer would (fstab by UUID, hostname,
   GRUB on the serial console) and the lab's hook: a unit that, at every boot,
   runs ``journey`` from a disk labelled ``KDUMPKITLAB`` when one is attached
   (:mod:`kdumpkit.lab.journey` puts the steps there, so the image itself
   never changes with them);
3. ``mkfs.ext4 -d`` makes the root filesystem inside a partitioned disk image
   (no loop device, no mount on the host);
4. one boot of the image's own kernel and initramfs, with ``init=`` pointing
   at a script that runs ``grub-install`` and ``update-grub`` inside the
   guest and powers off: from then on the disk boots by itself.

The result is cached under ``<cache>/lab/system/<suite>-<key>/disk.raw``,
keyed by suite, package list and this recipe; every journey boots a
copy-on-write overlay of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdumpkit.errors import LabError
from kdumpkit.lab.aptsrc import host_mirrors
from kdumpkit.lab.cache import lab_dir
from kdumpkit.lab.qemu import VM, VMConfig, choose_accel

Log = Callable[[str], None]
#: Bump when the recipe below changes what an image contains.
RECIPE_VERSION = 1
SUITES = ("bookworm", "trixie")
PACKAGES = ("systemd-sysv", "linux-image-amd64", "grub-pc", "udev", "kmod", "e2fsprogs", "python3", "python3-venv",
            "busybox-static", "liblzo2-2", "xfsprogs")
#: Per suite: its Python (the wheelhouse is made for it) and the Debian packages that stand in for
#: dependencies PyPI has no wheel of for that Python (lab/wheelhouse.FROM_DEBIAN).
SUITE_PYTHON = {"bookworm": (3, 11), "trixie": (3, 13)}
SUITE_PACKAGES = {"bookworm": (), "trixie": ("python3-lzo",)}
DISK_SIZE = 6 << 30
PART_OFFSET = 1 << 20
HOSTNAME = "kdumpkit-lab"
LAB_LABEL = "KDUMPKITLAB"
FIRSTBOOT = "/usr/local/sbin/lab-firstboot"
FIRSTBOOT_TIMEOUT = 600

FIRSTBOOT_SCRIPT = """#!/bin/sh
# kdumpkit lab: install the boot loader from inside the guest, once, then power off.
mount -t proc proc /proc 2>/dev/null; mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -o remount,rw /
echo "lab-firstboot: start" >/dev/ttyS0
if grub-install --target=i386-pc /dev/vda >/dev/ttyS0 2>&1 && update-grub >/dev/ttyS0 2>&1; then
    echo "lab-firstboot: ok" >/dev/ttyS0
else
    echo "lab-firstboot: fail" >/dev/ttyS0
fi
sync; mount -o remount,ro / 2>/dev/null; sync
echo o >/proc/sysrq-trigger; sleep 30
"""

#: At every boot: run the lab's steps when its disk is attached (never in a user's system).
HOOK_SCRIPT = f"""#!/bin/sh
mkdir -p /run/kdumpkit-lab
mount -o ro LABEL={LAB_LABEL} /run/kdumpkit-lab 2>/dev/null || exit 0
exec /bin/sh /run/kdumpkit-lab/journey
"""

HOOK_UNIT = """[Unit]
Description=kdumpkit lab: the steps of the journey under test (only with the lab's disk attached)
After=local-fs.target systemd-udev-settle.service systemd-user-sessions.service

[Service]
Type=simple
ExecStart=/usr/local/sbin/kdumpkit-lab-hook
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

GRUB_DEFAULTS = """# kdumpkit lab: the serial console is the lab's only screen
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=ttyS0,115200n8"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
"""

#: Timers that would start apt or fs scrubs in the middle of a measured boot.
MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer")


@dataclass(frozen=True)
class SystemImage:
    """A cached installed system: its disk, kernel release and root filesystem UUID."""

    suite: str
    disk: Path
    release: str
    root_uuid: str
    packages: tuple[str, ...]
    build_seconds: float = 0.0


def image_key(suite: str, packages: tuple[str, ...], late_packages: tuple[str, ...] = ()) -> str:
    text = json.dumps([RECIPE_VERSION, suite, sorted(packages), FIRSTBOOT_SCRIPT, HOOK_SCRIPT, HOOK_UNIT,
                       GRUB_DEFAULTS, MASKED] + ([sorted(late_packages)] if late_packages else []))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_tool(cmd: list[str], what: str, timeout: float = 1800, **kw: object) -> str:
    """Run a host tool of the lab; a failure is one LabError naming ``what`` and the tool's last lines."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    except FileNotFoundError:
        raise LabError(f"{what}: {cmd[0]} not found (make apt installs it)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{what}: {cmd[0]} still running after {timeout:.0f} s") from None
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise LabError(f"{what} failed (exit {p.returncode}): {' | '.join(tail)}")
    return str(p.stdout)


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    os.chmod(p, mode)


def customize(root: Path, root_uuid: str) -> None:
    """What an installer writes, plus the lab's boot hook."""
    _write(root, "etc/fstab", f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    _write(root, "etc/hostname", HOSTNAME + "\n")
    _write(root, "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n")
    _write(root, "etc/default/grub", GRUB_DEFAULTS)
    _write(root, FIRSTBOOT, FIRSTBOOT_SCRIPT, 0o755)
    _write(root, "usr/local/sbin/kdumpkit-lab-hook", HOOK_SCRIPT, 0o755)
    _write(root, "etc/systemd/system/kdumpkit-lab.service", HOOK_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "kdumpkit-lab.service").unlink(missing_ok=True)
    (wants / "kdumpkit-lab.service").symlink_to("/etc/systemd/system/kdumpkit-lab.service")
    for unit in MASKED:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    (root / "etc/machine-id").write_text("")  # systemd makes one at first boot, like an installer's image


def make_disk(rootfs: Path, disk: Path, root_uuid: str) -> None:
    """A partitioned raw disk whose first partition is an ext4 made from ``rootfs`` (no loop device)."""
    with open(disk, "wb") as f:
        f.truncate(DISK_SIZE)
    run_tool(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(disk)], "partition table",
         input=f"label: dos\nstart={PART_OFFSET // 512}, type=83, bootable\n")
    blocks = (DISK_SIZE - PART_OFFSET) // 4096
    run_tool(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "root", "-U", root_uuid,
          "-E", f"offset={PART_OFFSET},nodiscard", "-d", str(rootfs), str(disk), str(blocks)], "mkfs.ext4 -d")


def debootstrap(suite: str, rootfs: Path, packages: tuple[str, ...], log: Log,
                late_packages: tuple[str, ...] = ()) -> None:
    """``mmdebstrap`` the suite; ``late_packages`` go in with a second apt-get, after the kernel is installed."""
    mirrors = [line for line in host_mirrors().sources_list(suite).splitlines() if line.strip()]
    log(f"mmdebstrap {suite}: {' '.join(packages)}" + (f" then {' '.join(late_packages)}" if late_packages else ""))
    hooks = [f'--customize-hook=chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q '
             f'{" ".join(late_packages)}'] if late_packages else []
    run_tool(["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}", "--skip=output/dev", *hooks,
          suite, str(rootfs), *mirrors], f"mmdebstrap {suite}", timeout=1800)


def install_bootloader(workdir: Path, disk: Path, rootfs: Path, root_uuid: str, accel: str, console: Path,
                       log: Log) -> str:
    """Boot the image's own kernel once with ``init=`` the firstboot script; the kernel release.

    ``console`` is outside ``workdir``: a failed build deletes its work but keeps the log it names.
    """
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise LabError(f"the installed system has no kernel or initramfs in {rootfs / 'boot'}")
    release = kernels[-1].name[len("vmlinuz-"):]
    vmlinuz, initrd = workdir / "vmlinuz", workdir / "initrd.img"
    shutil.copyfile(kernels[-1], vmlinuz)
    shutil.copyfile(initrds[-1], initrd)
    cmdline = f"root=UUID={root_uuid} rw console=ttyS0,115200n8 init={FIRSTBOOT} panic=-1"
    cfg = VMConfig(vmlinuz, initrd, cmdline, 1024, [disk], choose_accel(accel), 2)
    vm = VM(cfg, console)
    vm.start(workdir)
    seen, result = 0, ""
    deadline = time.monotonic() + FIRSTBOOT_TIMEOUT
    try:
        while time.monotonic() < deadline and not result:
            lines = vm.wait_lines(seen, 5)
            seen += len(lines)
            for ln in lines:
                if ln.text.startswith("lab-firstboot: ok"):
                    result = "ok"
                elif ln.text.startswith("lab-firstboot: fail"):
                    result = "fail"
            if not vm.running() and not result:
                break
        vm.finish(60)
    finally:
        vm.kill()
    if result != "ok":
        why = "grub-install/update-grub failed" if result == "fail" else "no result"
        raise LabError(f"installing GRUB in the guest: {why} (console: {console})")
    log(f"GRUB installed in the guest ({vm.elapsed():.0f} s)")
    return release


def base_image(suite: str = "bookworm", *, extra_packages: tuple[str, ...] = (),
               late_packages: tuple[str, ...] = (), accel: str = "auto", log: Log = lambda m: None) -> SystemImage:
    """The cached installed system for ``suite`` (built when missing: a few minutes under TCG)."""
    if suite not in SUITES:
        raise LabError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
    packages = tuple(dict.fromkeys(PACKAGES + SUITE_PACKAGES[suite] + extra_packages))
    key = image_key(suite, packages, late_packages)
    final = lab_dir("system") / f"{suite}-{key}"
    meta = final / "image.json"
    if meta.is_file() and (final / "disk.raw").is_file():
        d = json.loads(meta.read_text())
        return SystemImage(suite, final / "disk.raw", d["release"], d["root_uuid"], tuple(d["packages"]),
                           d.get("build_seconds", 0.0))
    t0 = time.monotonic()
    work = lab_dir("system") / f".{suite}-{key}.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rootfs = lab_dir("system") / f".{suite}-{key}.rootfs"  # kept until the image is complete: a retry reuses it
    if not (rootfs / ".complete").is_file():
        shutil.rmtree(rootfs, ignore_errors=True)
        debootstrap(suite, rootfs, packages, log, late_packages)
        (rootfs / ".complete").write_text("")
    try:
        root_uuid = str(uuid.uuid4())
        customize(rootfs, root_uuid)
        disk = work / "disk.raw"
        (rootfs / ".complete").unlink()
        make_disk(rootfs, disk, root_uuid)
        (rootfs / ".complete").write_text("")
        console = lab_dir("system") / f"{suite}-{key}.firstboot-console.log"
        release = install_bootloader(work, disk, rootfs, root_uuid, accel, console, log)
        shutil.rmtree(rootfs)
        seconds = round(time.monotonic() - t0, 1)
        (work / "image.json").write_text(json.dumps({"suite": suite, "release": release, "root_uuid": root_uuid,
                                                     "packages": list(packages), "build_seconds": seconds,
                                                     "recipe": RECIPE_VERSION}, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"installed system {suite} ({release}) built in {seconds:.0f} s: {final / 'disk.raw'}")
    return SystemImage(suite, final / "disk.raw", release, root_uuid, packages, seconds)
