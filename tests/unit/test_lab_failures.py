"""A failed lab run names a console log that still exists, and the phase that failed.

QEMU is replaced by a fake VM replaying a console script, so every failure
path of ``run()`` (and of ``lab demo`` and the reference build, whose output
folders are temporary) is exercised without booting anything.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kdumpkit.errors import LabError
from kdumpkit.lab import run as labrun
from kdumpkit.lab.console import Line
from kdumpkit.lab.kernels import Kernel

BANNER = "[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)"
BOOTED = [BANNER, "@@KDUMPKIT-LAB phase=boot-done release=6.1.0-57-amd64 uptime=3.9"]
TRIGGERED = [*BOOTED, "@@KDUMPKIT-LAB phase=kexec-loaded", "@@KDUMPKIT-LAB phase=trigger scenario=sysrq"]
CAPTURED = [*TRIGGERED, BANNER, "@@KDUMPKIT-LAB phase=capture-start release=6.1.0-57-amd64 vmcore-size=4096",
            "@@KDUMPKIT-LAB phase=capture-done"]


class FakeVM:
    """Plays ``script`` onto the console log at start; ``hang`` keeps it "running" past any timeout."""

    script: list[str] = []
    hang = False

    def __init__(self, config: Any, console_log: Path) -> None:
        self.config, self.console_log = config, console_log
        self.lines: list[Line] = []
        self.on_line = None

    def start(self, workdir: Path) -> None:
        (workdir / "qemu.cmd").write_text("qemu-system-x86_64 -accel tcg (fake)\n")
        self.console_log.write_text("".join(t + "\n" for t in self.script))
        self.lines = [Line(float(i), t) for i, t in enumerate(self.script)]

    def wait_lines(self, seen: int, timeout: float) -> list[Line]:
        return self.lines[seen:]

    def running(self) -> bool:
        return self.hang

    def elapsed(self) -> float:
        return 10_000.0

    def finish(self, timeout: float = 10) -> int:
        return 0

    def kill(self) -> None:
        pass

    def qmp(self, command: str, **arguments: object) -> dict[str, object]:
        return {"return": {}}


@pytest.fixture
def fake_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Kernel:
    """The lab with a fake VM, no initramfs build, TCG; returns a fake bookworm kernel."""
    monkeypatch.setenv("KDUMPKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(labrun, "VM", FakeVM)
    monkeypatch.setattr(labrun, "choose_accel", lambda accel: "tcg")
    monkeypatch.setattr(labrun, "build_initramfs",
                        lambda k, work, *a, **kw: SimpleNamespace(initrd=work / "initrd.img"))
    monkeypatch.setattr(FakeVM, "hang", False)
    root = tmp_path / "kernel"
    return Kernel("bookworm", "6.1.0-57-amd64", "6.1.192-3", root / "vmlinuz", None, root / "modules", root)


def _failed_root() -> Path:
    from kdumpkit.lab.cache import lab_dir

    return lab_dir("failed")


def _fake_capture_images(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kdumpkit.lab import capture_images

    blob = tmp_path / "blob"
    blob.write_bytes(b"x")
    monkeypatch.setattr(capture_images, "capture_images",
                        lambda k, **kw: SimpleNamespace(runtime=blob, capture_initrd=blob, sizes={}))


CASES = [
    ("boot", [], True, "timed out after 60s"),
    ("boot", ["SeaBIOS (version 1.16.2)"], False, "guest stopped before the capture finished"),
    ("prepare", [*BOOTED, "@@KDUMPKIT-LAB fail reason=kexec -p -s failed"], False, "guest: kexec -p -s failed"),
    ("crash", TRIGGERED, False, "guest stopped before the capture finished (last phase: trigger)"),
    ("capture_boot", [*TRIGGERED, BANNER], True, "timed out after 60s"),
    ("capture", CAPTURED[:-1], False, "guest stopped"),
    ("extract", CAPTURED, False, "raw dump disk does not start with an ELF64"),
]


@pytest.mark.parametrize(("phase", "script", "hang", "reason"), CASES)
def test_failed_run_keeps_its_console_log(fake_lab: Kernel, monkeypatch: pytest.MonkeyPatch, phase: str,
                                          script: list[str], hang: bool, reason: str) -> None:
    monkeypatch.setattr(FakeVM, "script", script)
    monkeypatch.setattr(FakeVM, "hang", hang)
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(LabError) as ei:
        labrun.run(fake_lab, out=tmp, timeout=60)
    msg = str(ei.value)
    assert "\n" not in msg
    assert f"lab run bookworm-sysrq-makedumpfile failed in phase {phase}: {reason}" in msg
    kept = Path(str(ei.value.console_log))
    assert f"(console log: {kept})" in msg
    assert kept.is_file(), "the named console log is gone"
    assert kept.parent.parent == _failed_root()
    assert kept.read_text() == "".join(t + "\n" for t in script)
    assert (kept.parent / "qemu.cmd").read_text().startswith("qemu-system-x86_64")
    assert (kept.parent / "error.txt").read_text().strip() == msg.split(" (console log:")[0]


def test_failures_before_qemu_name_no_log(fake_lab: Kernel, tmp_path: Path) -> None:
    with pytest.raises(LabError) as ei:
        labrun.run(fake_lab, out=tmp_path / "o", crashkernel="2G", mem_mb=1024)
    assert ei.value.console_log is None


def test_failed_dirs_are_bounded(fake_lab: Kernel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kdumpkit.lab import cache

    monkeypatch.setattr(cache, "FAILED_KEEP", 3)
    monkeypatch.setattr(FakeVM, "script", TRIGGERED)
    kept = []
    for _ in range(5):
        with pytest.raises(LabError) as ei:
            labrun.run(fake_lab, out=tmp_path / "o", timeout=60)
        kept.append(Path(str(ei.value.console_log)))
    assert len(list(_failed_root().iterdir())) == 3
    assert kept[-1].is_file()


def test_demo_failure_names_a_kept_log(fake_lab: Kernel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``make demo`` works in a temporary folder deleted before the error is printed."""
    from kdumpkit.lab import demo

    _fake_capture_images(monkeypatch, tmp_path)
    monkeypatch.setattr(FakeVM, "script", BOOTED)
    with tempfile.TemporaryDirectory(prefix="kdumpkit-demo-") as tmp, pytest.raises(LabError) as ei:
        demo.run_demo(fake_lab, tmp)
    assert "lab run bookworm-sysrq-kdumpkit failed in phase prepare" in str(ei.value)
    assert Path(str(ei.value.console_log)).is_file()


def test_reference_build_failure(fake_lab: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed reference build leaves no half-made set behind, and its log is kept."""
    from kdumpkit.lab import reference

    monkeypatch.setattr(reference, "fetch", lambda suite: fake_lab)
    monkeypatch.setattr(reference, "run", labrun.run)
    monkeypatch.setattr(FakeVM, "script", TRIGGERED)
    with pytest.raises(LabError) as ei:
        reference.reference_set("bookworm")
    assert "failed in phase crash" in str(ei.value)
    assert Path(str(ei.value.console_log)).is_file()
    from kdumpkit.lab.cache import lab_dir

    assert [p.name for p in lab_dir("reference").iterdir() if not p.name.startswith(".")] == []


def test_selftest_failure_reason_names_a_kept_log(fake_lab: Kernel, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """``kdumpkit test``: the one-line reason says the phase and names a log that exists."""
    from kdumpkit.lab.selftest import run_selftest

    _fake_capture_images(monkeypatch, tmp_path)
    monkeypatch.setattr(FakeVM, "script", [*TRIGGERED, BANNER])
    res = run_selftest(fake_lab, out=tmp_path / "out", state_dir=tmp_path / "state",
                       default_config=str(tmp_path / "none.toml"))
    assert not res.ok
    assert "failed in phase capture_boot: guest stopped" in res.reason
    assert Path(res.reason.split("(console log: ")[1].rstrip(")")).is_file()
