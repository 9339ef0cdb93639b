"""QEMU ``dump-guest-memory`` of a running (not crashed) lab guest, read by kdumpkit.

One boot per kernel (bookworm 6.1, trixie 6.12; fetched once if missing) of the lab guest with ``-device vmcoreinfo`` (and the guest's
``qemu_fw_cfg`` module, which hands the kernel's VMCOREINFO address to QEMU).
The lab's ``nmi`` scenario prints its ground truth and then sleeps waiting for
an NMI — that window is when the host stops the vCPUs and takes two dumps over
QMP: ``elf`` and ``kdump-zlib`` (flattened).  Checks: ``kdumpkit info`` sees
the QEMU notes and the guest's VMCOREINFO, ``kdumpkit dmesg`` shows the log,
and our conversions are accepted by ``crash --osrelease`` and
``makedumpfile --dump-dmesg``.

The lab API has no hook for extra QEMU arguments or long-running QMP commands,
so this module adds ``-device vmcoreinfo`` by subclassing ``VMConfig`` and
speaks QMP itself (``VM.qmp`` has a 10 s timeout; a dump can take longer).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.cli.main import main

pytestmark = pytest.mark.interop

MEM_MB = 512
BOOT_TIMEOUT = 240


def _qmp(sock: Path, command: str, timeout: float = 300, **arguments: Any) -> dict[str, Any]:
    """One QMP command on a fresh connection (capabilities handshake first)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        f = s.makefile("rwb")
        json.loads(f.readline())
        for cmd, args in (("qmp_capabilities", {}), (command, arguments)):
            msg: dict[str, Any] = {"execute": cmd}
            if args:
                msg["arguments"] = args
            f.write(json.dumps(msg).encode() + b"\n")
            f.flush()
            while True:
                reply: dict[str, Any] = json.loads(f.readline() or b"{}")
                if not reply:
                    raise RuntimeError(f"QMP closed during {cmd}")
                if "return" in reply or "error" in reply:
                    break
            if "error" in reply:
                raise RuntimeError(f"QMP {cmd}: {reply['error']}")
        return reply


@dataclass
class GuestDumps:
    elf: Path
    kdump: Path
    release: str
    dmesg: str
    work: Path


@pytest.fixture(scope="module", params=["bookworm", "trixie"])
def guest_dumps(request: pytest.FixtureRequest) -> Iterator[GuestDumps]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    from kdumpkit.errors import LabError
    from kdumpkit.lab import console, kernels
    from kdumpkit.lab.initramfs import build as build_initramfs
    from kdumpkit.lab.qemu import VM, VMConfig, choose_accel

    k = kernels.fetch(request.param)  # cached, or downloaded once (~10-30 s)

    class VmcoreinfoConfig(VMConfig):
        def command(self, qmp_socket: Path) -> list[str]:
            return [*super().command(qmp_socket), "-device", "vmcoreinfo"]

    with tempfile.TemporaryDirectory(prefix="kdumpkit-qemu-dump-") as tmp:
        work = Path(tmp)
        try:
            images = build_initramfs(k, work, ["qemu_fw_cfg"])
        except LabError as e:
            pytest.skip(f"cannot build the guest initramfs: {e}")
        disks = []
        for name in ("workload.img", "b.img", "c.img"):
            p = work / name
            with open(p, "wb") as f:
                f.truncate(64 << 20)
            disks.append(p)
        cmdline = (f"console=ttyS0 crashkernel=128M panic=1 rdinit=/init kdumpkit_lab.scenario=nmi "
                   f"kdumpkit_lab.mem_mb={MEM_MB} kdumpkit_lab.cache_mb=8 kdumpkit_lab.anon_mb=8")
        vm = VM(VmcoreinfoConfig(k.vmlinuz, images.initrd, cmdline, MEM_MB, disks, choose_accel("auto"), 2),
                work / "console.log")
        vm.start(work)
        try:
            seen = 0
            deadline = time.monotonic() + BOOT_TIMEOUT
            ready = False
            while time.monotonic() < deadline and vm.running() and not ready:
                new = vm.wait_lines(seen, 2)
                seen += len(new)
                ready = any("request=nmi" in ln.text for ln in new)
                if any("@@KDUMPKIT-LAB fail" in ln.text for ln in new):
                    break
            if not ready:
                pytest.fail(f"guest did not reach its idle point; console: {work / 'console.log'}:\n"
                            + "\n".join(ln.text for ln in vm.lines[-30:]))
            texts = [ln.text for ln in vm.lines]
            dmesg = console.block(texts, "dmesg") or ""
            _qmp(work / "qmp.sock", "stop")
            elf, kd = work / "guest.elf", work / "guest.kdump"
            _qmp(work / "qmp.sock", "dump-guest-memory", paging=False, protocol=f"file:{elf}", format="elf")
            _qmp(work / "qmp.sock", "dump-guest-memory", paging=False, protocol=f"file:{kd}", format="kdump-zlib")
        finally:
            vm.kill()
        yield GuestDumps(elf, kd, k.release, dmesg, work)


def _info(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["info", "--json", str(path)]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_info_on_both(guest_dumps: GuestDumps, capsys: pytest.CaptureFixture[str]) -> None:
    elf = _info(guest_dumps.elf, capsys)
    assert elf["format"] == "qemu", elf["format"]
    assert elf["details"]["vcpus"] == 2 and len(elf["details"]["cpu_registers"]) == 2
    assert all(r.get("cr3") for r in elf["details"]["cpu_registers"])
    assert elf["details"]["vmcoreinfo"] == "present", "QEMU did not pass the guest's VMCOREINFO (-device vmcoreinfo)"
    kd = _info(guest_dumps.kdump, capsys)
    for got in (elf, kd):
        assert (got.get("crash") or {}).get("release") == guest_dumps.release
        assert got["cpus"] == 2


def test_dmesg_on_both(guest_dumps: GuestDumps, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (guest_dumps.elf, guest_dumps.kdump):
        capsys.readouterr()
        assert main(["dmesg", "--format", "plain", str(path)]) == 0
        log = capsys.readouterr().out
        assert "Linux version" in log and guest_dumps.release in log
        assert "phase=" not in log  # kernel messages only


def test_conversions_accepted_by_crash_and_makedumpfile(guest_dumps: GuestDumps) -> None:
    outs = []
    for src, fmt, name in ((guest_dumps.kdump, "elf", "from-kdump.elf"), (guest_dumps.elf, "kdump", "from-elf.kdump")):
        out = guest_dumps.work / name
        assert main(["convert", str(src), str(out), "--format", fmt]) == 0
        outs.append(out)
    for out in outs:
        if shutil.which("crash"):
            r = subprocess.run(["crash", "--osrelease", str(out)], capture_output=True, text=True, timeout=120)
            assert r.stdout.strip() == guest_dumps.release, (r.stdout, r.stderr)
        if shutil.which("makedumpfile"):
            log = guest_dumps.work / (out.name + ".dmesg")
            r = subprocess.run(["makedumpfile", "--dump-dmesg", str(out), str(log)], capture_output=True, text=True,
                               timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "Linux version" in log.read_text(errors="replace")


def test_lkcd_round_trip_of_real_guest(guest_dumps: GuestDumps) -> None:
    from kdumpkit.dump import open_dump
    from kdumpkit.dump.testing import assert_kept_pages_equal

    out = guest_dumps.work / "guest.lkcd"
    assert main(["convert", str(guest_dumps.elf), str(out), "--format", "lkcd", "--exclude-zero"]) == 0
    with open_dump(str(guest_dumps.elf)) as a, open_dump(str(out)) as b:
        assert b.format_name == "lkcd"
        assert assert_kept_pages_equal(a, b) > 1000
