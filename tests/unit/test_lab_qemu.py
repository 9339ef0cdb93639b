"""The KVM probe's decisions, with a fake QEMU (no guest boots here).

The probe must choose KVM only when a real kernel prints its first console
line under it: a QEMU that aborts, or one that sits in the BIOS with an
empty serial port, means TCG.  The answer is cached per process and, keyed
by the host's boot id, on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kdumpkit.errors import LabError
from kdumpkit.lab import qemu

# Writes what the mode says to the -serial file (or stderr) and stays up like a guest.
FAKE_QEMU = r"""#!/bin/sh
echo "$*" >> "$FAKE_QEMU_CALLS"
serial=""; prev=""
for a in "$@"; do [ "$prev" = "-serial" ] && serial="${a#file:}"; prev="$a"; done
case "$FAKE_QEMU_MODE" in
  kernel) printf 'Probing EDD (edd=off to disable)... ok\n[    0.000000] Linux version 6.1.0-57-amd64 (fake)\n' > "$serial"
          exec sleep 30 ;;
  bios)   printf 'SeaBIOS (version 1.16.2)\nBooting from ROM..\n' > "$serial"; exec sleep 30 ;;
  abort)  echo "qemu-system-x86_64: kvm_buf_set_msrs: Assertion failed." >&2; exit 134 ;;
esac
"""


@pytest.fixture
def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake ``qemu-system-x86_64`` first on PATH; yields the file logging its invocations."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / qemu.QEMU
    exe.write_text(FAKE_QEMU)
    exe.chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_QEMU_CALLS", str(calls))
    monkeypatch.setenv("KDUMPKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(qemu, "_kvm_device_usable", lambda: True)
    monkeypatch.setattr(qemu, "_probe_kernel", lambda: tmp_path / "vmlinuz-fake")
    monkeypatch.setattr(qemu, "_boot_id", lambda: "boot-1")
    monkeypatch.setattr(qemu, "KVM_PROBE_TIMEOUT_S", 0.5)
    qemu.kvm_probe.cache_clear()
    yield calls
    qemu.kvm_probe.cache_clear()


def _ncalls(calls: Path) -> int:
    return len(calls.read_text().splitlines())


def test_probe_boots_a_kernel_without_initrd(fake_qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "kernel")
    r = qemu.probe_kvm(qemu.QEMU, Path("/k/vmlinuz-x"), timeout=5)
    assert r.ok, r.reason
    argv = fake_qemu.read_text()
    assert "-accel kvm" in argv and "-kernel /k/vmlinuz-x" in argv and "-initrd" not in argv
    assert "console=ttyS0 earlyprintk=ttyS0" in argv


def test_bios_without_a_kernel_line_is_not_kvm(fake_qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lying host: the BIOS runs, the kernel never prints."""
    monkeypatch.setenv("FAKE_QEMU_MODE", "bios")
    r = qemu.probe_kvm(qemu.QEMU, Path("/k/vmlinuz-x"), timeout=0.6)
    assert not r.ok
    assert "no kernel console line within" in r.reason


def test_qemu_abort_is_not_kvm(fake_qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "abort")
    r = qemu.probe_kvm(qemu.QEMU, Path("/k/vmlinuz-x"), timeout=5)
    assert not r.ok
    assert "Assertion failed" in r.reason


def test_choose_accel_follows_the_probe(fake_qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "bios")
    assert qemu.choose_accel("auto") == "tcg"
    with pytest.raises(LabError, match="KVM does not work on this host .*no kernel console line.*--accel tcg"):
        qemu.choose_accel("kvm")
    qemu.kvm_probe.cache_clear()
    monkeypatch.setattr(qemu, "_boot_id", lambda: "boot-2")
    monkeypatch.setenv("FAKE_QEMU_MODE", "kernel")
    assert qemu.choose_accel("auto") == "kvm"
    assert qemu.choose_accel("kvm") == "kvm"


def test_tcg_and_bad_names_never_probe(fake_qemu: Path) -> None:
    assert qemu.choose_accel("tcg") == "tcg"
    with pytest.raises(LabError, match="unknown accelerator"):
        qemu.choose_accel("xen")
    assert _ncalls(fake_qemu) == 0


def test_answer_cached_per_process_and_per_boot(fake_qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "bios")
    assert not qemu.kvm_works()
    assert not qemu.kvm_works()
    assert _ncalls(fake_qemu) == 1
    # A new process (the in-memory answer gone) on the same boot reads the lab cache.
    qemu.kvm_probe.cache_clear()
    monkeypatch.setenv("FAKE_QEMU_MODE", "kernel")
    assert not qemu.kvm_works()
    assert _ncalls(fake_qemu) == 1
    # After a reboot the host may have changed: probe again.
    qemu.kvm_probe.cache_clear()
    monkeypatch.setattr(qemu, "_boot_id", lambda: "boot-2")
    assert qemu.kvm_works()
    assert _ncalls(fake_qemu) == 2


def test_no_device_or_no_kernel_means_tcg(fake_qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "_probe_kernel", lambda: None)
    assert qemu.kvm_probe().reason.startswith("no kernel to probe KVM with")
    qemu.kvm_probe.cache_clear()
    monkeypatch.setattr(qemu, "_kvm_device_usable", lambda: False)
    assert not qemu.kvm_works()
    assert _ncalls(fake_qemu) == 0
