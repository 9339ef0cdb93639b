"""Finding a local target's filesystem and drivers (setup/blockdev.py) on fake /proc, /sys and /dev trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdumpkit.errors import ConfigError
from kdumpkit.setup import blockdev

MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
24 22 0:22 / /tmp rw shared:13 - tmpfs tmpfs rw
30 22 259:2 / /var/crash rw,relatime shared:20 - xfs /dev/nvme0n1p2 rw
31 22 254:1 /srv/dumps /mnt/bound\\040dir rw shared:1 - ext4 /dev/vda1 rw
32 22 0:40 / /net rw - nfs4 10.0.0.5:/export rw
"""


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def _device(sys: Path, devno: str, chain: str, name: str, drivers: dict[str, str]) -> None:
    """A sysfs block device at /sys/devices/<chain>/<name> with ``driver/module`` links on the chain."""
    devdir = sys / "devices" / chain / name
    devdir.mkdir(parents=True)
    (devdir / "uevent").write_text(f"MAJOR={devno.split(':')[0]}\nDEVNAME={os.path.basename(name)}\n")
    _link(sys / "dev/block" / devno, os.path.relpath(devdir, sys / "dev/block"))
    for rel, module in drivers.items():
        drv = sys / "bus/drivers" / module
        (drv).mkdir(parents=True, exist_ok=True)
        (sys / "module" / module).mkdir(parents=True, exist_ok=True)
        if not (drv / "module").exists():
            _link(drv / "module", os.path.relpath(sys / "module" / module, drv))
        _link(sys / "devices" / rel / "driver", os.path.relpath(drv, sys / "devices" / rel))


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    proc, sys, dev = tmp_path / "proc", tmp_path / "sys", tmp_path / "dev"
    (proc / "self").mkdir(parents=True)
    (proc / "self/mountinfo").write_text(MOUNTINFO)
    _device(sys, "254:1", "pci0000:00/0000:00:04.0/virtio2/block/vda", "vda1",
            {"pci0000:00/0000:00:04.0": "virtio_pci", "pci0000:00/0000:00:04.0/virtio2": "virtio_blk"})
    _device(sys, "259:2", "pci0000:00/0000:00:05.0/nvme/nvme0/nvme0n1", "nvme0n1p2",
            {"pci0000:00/0000:00:05.0": "nvme"})
    _link(dev / "disk/by-uuid/0f1e2d3c-aaaa-bbbb-cccc-123456789abc", "../../vda1")
    _link(dev / "disk/by-label/dumps", "../../nvme0n1p2")
    return proc, sys, dev


def test_root_filesystem_target(tree: tuple[Path, Path, Path]) -> None:
    proc, sys, dev = tree
    fs = blockdev.locate("/var/lib/crash-here", proc=proc, sys=sys, dev=dev)
    assert (fs.spec, fs.fstype, fs.subdir, fs.device) == ("UUID=0f1e2d3c-aaaa-bbbb-cccc-123456789abc", "ext4",
                                                          "var/lib/crash-here", "/dev/vda1")
    assert fs.modules == ("virtio_blk", "virtio_pci", "crc32c_generic", "ext4")
    assert fs.mounts_line() == "UUID=0f1e2d3c-aaaa-bbbb-cccc-123456789abc ext4 var/lib/crash-here /var/lib/crash-here\n"


def test_own_filesystem_by_label_on_nvme(tree: tuple[Path, Path, Path]) -> None:
    proc, sys, dev = tree
    fs = blockdev.locate("/var/crash", proc=proc, sys=sys, dev=dev)
    assert (fs.spec, fs.fstype, fs.subdir) == ("LABEL=dumps", "xfs", "")
    assert fs.modules == ("nvme", "crc32c_generic", "xfs")
    assert fs.mounts_line() == "LABEL=dumps xfs . /var/crash\n"


def test_bind_mount_uses_the_filesystem_directory(tree: tuple[Path, Path, Path]) -> None:
    proc, sys, dev = tree
    fs = blockdev.locate("/mnt/bound dir/x", proc=proc, sys=sys, dev=dev)
    assert fs.subdir == "srv/dumps/x"
    with pytest.raises(ConfigError, match="cannot be passed"):
        fs.mounts_line()  # a blank in the target path cannot reach /init's mounts file


@pytest.mark.parametrize(("path", "why"), [("/tmp/crash", "lost at the reboot"), ("/net/crash", "nfs target")])
def test_unusable_filesystems_are_refused(tree: tuple[Path, Path, Path], path: str, why: str) -> None:
    proc, sys, dev = tree
    with pytest.raises(ConfigError, match=why):
        blockdev.locate(path, proc=proc, sys=sys, dev=dev)


def test_device_mapper_members(tmp_path: Path) -> None:
    sys = tmp_path / "sys"
    _device(sys, "254:3", "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda", "sda3",
            {"pci0000:00/0000:00:1f.2": "ahci", "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0": "sd_mod"})
    dm = sys / "devices/virtual/block/dm-0"
    (dm / "slaves").mkdir(parents=True)
    _link(dm / "slaves/sda3", os.path.relpath(sys / "dev/block/254:3", dm / "slaves"))
    _link(sys / "dev/block/253:0", os.path.relpath(dm, sys / "dev/block"))
    assert blockdev.device_modules("253:0", sys=sys) == ["dm_mod", "sd_mod", "ahci"]


def test_volatile_fs_and_capture_refusal(tree: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    proc, _sys, _dev = tree
    assert blockdev.volatile_fs("/tmp/x", proc=proc) == "tmpfs"
    assert blockdev.volatile_fs("/var/crash", proc=proc) is None
    from kdumpkit.capture import targets
    from kdumpkit.errors import OutputError

    monkeypatch.setattr(targets, "volatile_fs", lambda path: "rootfs")
    monkeypatch.setattr(targets, "in_capture_kernel", lambda root="/": True)
    with pytest.raises(OutputError, match="rootfs .its disk was not mounted"):
        targets.refuse_ram_target("/var/crash")
    monkeypatch.setattr(targets, "in_capture_kernel", lambda root="/": False)
    targets.refuse_ram_target("/var/crash")  # a running system: a tmpfs directory is the admin's choice


def test_in_capture_kernel(tmp_path: Path) -> None:
    from kdumpkit.kexec.status import in_capture_kernel

    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("root=/dev/vda ro irqpoll elfcorehdr=0x3f000000 nr_cpus=1\n")
    assert not in_capture_kernel(tmp_path)  # no /proc/vmcore
    (tmp_path / "proc/vmcore").write_bytes(b"")
    assert in_capture_kernel(tmp_path)
    (tmp_path / "proc/cmdline").write_text("root=/dev/vda ro\n")
    assert not in_capture_kernel(tmp_path)
