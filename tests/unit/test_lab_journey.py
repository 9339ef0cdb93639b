"""The installed-system journey's host side, without QEMU: markers, phases, verdict, the guest script."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from kdumpkit.errors import LabError
from kdumpkit.lab import journey, sysimage

MARKERS = [(0.0, "qemu-start"), (31.0, "boot n=1 state=install kernel=6.1.0-50-amd64"),
           (31.5, "phase=install start"), (80.0, "phase=install done"), (80.1, "phase=setup start"),
           (150.0, "phase=setup done"), (150.2, "phase=reboot"), (185.0, "boot n=2 state=armed kernel=6.1.0-50-amd64"),
           (196.0, "phase=loaded unit=active crash_size=268435456 loaded=1"), (199.0, "phase=crash"),
           (214.0, "kdumpkit-init: phase=capture-start release=6.1.0-50-amd64 vmcore-size=1"),
           (240.0, "kdumpkit-init: phase=capture-done rc=0"), (275.0, "boot n=3 state=crashed kernel=6.1.0-50-amd64"),
           (300.0, "phase=report unit=inactive files=1"), (305.0, "phase=poweroff")]


def test_markers_are_read_from_console_lines() -> None:
    assert journey._marker("[  12.3] lab-journey: phase=crash uptime=41.02") == "phase=crash"
    assert journey._marker("kdumpkit-init: phase=capture-done rc=0 uptime=9.1") == "kdumpkit-init: phase=capture-done rc=0"
    assert journey._marker("[    0.000000] Linux version 6.1.0") is None


def test_phase_table() -> None:
    rows = {r["name"]: r["seconds"] for r in journey.phase_table(MARKERS)}
    assert rows["install"] == 48.5 and rows["setup"] == 69.9 and rows["capture"] == 26.0
    assert rows["panic-to-dump-on-disk"] == 41.0 and rows["total"] == 305.0
    assert journey._current_phase(MARKERS[:9]) == "load-at-boot"


def _crash_dir(out: Path, names: tuple[str, ...]) -> None:
    d = out / "var-crash" / "kdumpkit-lab-2026-12-03-14:00:00"
    d.mkdir(parents=True)
    for n in names:
        (d / n).write_text(n)


def test_verdict(tmp_path: Path) -> None:
    j = journey.Journey("bookworm", "default", "kdumpkit", tmp_path, markers=list(MARKERS))
    _crash_dir(tmp_path, ("vmcore", "dmesg.txt", "manifest.json", "report.txt"))
    journey._judge(j)
    assert j.result == "pass" and (tmp_path / "report.txt").read_text() == "report.txt"
    assert j.files["kdumpkit-lab-2026-12-03-14:00:00/vmcore"]["size"] == 6


def test_verdict_names_the_failed_phase(tmp_path: Path) -> None:
    j = journey.Journey("bookworm", "default", "kdumpkit", tmp_path, markers=list(MARKERS))
    _crash_dir(tmp_path, ("dmesg.txt", "manifest.json", "report.txt"))  # the dump itself is missing
    journey._judge(j)
    assert j.result == "fail" and j.failed_phase == "report" and "vmcore" in j.reason
    line = journey.failure_line(j)
    assert "phase report failed" in line and str(tmp_path / "console.log") in line
    hung = journey.Journey("bookworm", "default", "kdumpkit", tmp_path / "h", markers=MARKERS[:10])
    journey._judge(hung)
    assert hung.failed_phase == "crash-to-capture-start"


def test_results_disk_is_unpacked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "var/crash/h-1").mkdir(parents=True)
    (src / "var/crash/h-1/vmcore").write_bytes(b"core")
    (src / "var/crash/h-1/vmcore").chmod(0o600)
    (src / "var/lib/kdumpkit-lab").mkdir(parents=True)
    (src / "var/lib/kdumpkit-lab/status.json").write_text(json.dumps({"ready": True}))
    disk = tmp_path / "results.img"
    with tarfile.open(disk, "w") as tar:
        tar.add(src / "var", arcname="var")
    with open(disk, "r+b") as f:
        f.truncate(1 << 20)  # the rest of the raw disk is zeros
    out = tmp_path / "out"
    out.mkdir()
    journey.extract_results(disk, out)
    assert (out / "var-crash/h-1/vmcore").read_bytes() == b"core"
    assert (out / "var-crash/h-1/vmcore").stat().st_mode & 0o777 == 0o600
    assert (out / "guest/status.json").is_file()


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
@pytest.mark.parametrize("script", [journey.guest_script(), sysimage.FIRSTBOOT_SCRIPT, sysimage.HOOK_SCRIPT,
                                    *journey.VARIANT_HOOKS.values(), *journey.TOOL_HOOKS.values()])
def test_guest_scripts_parse(script: str) -> None:
    r = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_variants_attach_the_system_disk_their_way(tmp_path: Path) -> None:
    disk = tmp_path / "s.qcow2"
    assert "virtio-blk-pci,drive=sysdisk,bootindex=0" in journey.system_drives("default", disk, tmp_path)
    assert "nvme,drive=sysdisk,serial=sysdisk,bootindex=0" in journey.system_drives("nvme", disk, tmp_path)
    assert "ide-hd,drive=sysdisk,bus=ahci0.0,bootindex=0" in journey.system_drives("sata", disk, tmp_path)
    xfs = journey.system_drives("xfs", disk, tmp_path)
    assert "virtio-blk-pci,drive=dumps,serial=dumps" in xfs and (tmp_path / "dumps.img").stat().st_size == 4 << 30


def test_unknown_variant_and_tool_fail_before_anything_is_built(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="unknown variant"):
        journey.run_journey(variant="zfs", out=tmp_path)
    with pytest.raises(LabError, match="unknown tool"):
        journey.run_journey(tool="other", out=tmp_path)
    with pytest.raises(LabError, match="unknown suite"):
        sysimage.base_image("sid")


def test_image_key_follows_the_recipe() -> None:
    a = sysimage.image_key("bookworm", sysimage.PACKAGES)
    assert a == sysimage.image_key("bookworm", tuple(reversed(sysimage.PACKAGES)))
    assert a != sysimage.image_key("trixie", sysimage.PACKAGES)
    assert a != sysimage.image_key("bookworm", (*sysimage.PACKAGES, "lvm2"))


def test_customize_writes_what_an_installer_would(tmp_path: Path) -> None:
    sysimage.customize(tmp_path, "0f1e2d3c-aaaa-bbbb-cccc-123456789abc")
    assert (tmp_path / "etc/fstab").read_text().startswith("UUID=0f1e2d3c-aaaa-bbbb-cccc-123456789abc / ext4")
    assert 'GRUB_CMDLINE_LINUX="console=ttyS0,115200n8"' in (tmp_path / "etc/default/grub").read_text()
    assert (tmp_path / "etc/systemd/system/multi-user.target.wants/kdumpkit-lab.service").is_symlink()
    assert str((tmp_path / "etc/systemd/system/apt-daily.timer").readlink()) == "/dev/null"
