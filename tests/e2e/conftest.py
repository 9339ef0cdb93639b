"""E2E tier: real kernels booted in QEMU.

The default tier is one bookworm cycle, reused through the cached reference
set; ``KDUMPKIT_LAB_FULL=1`` adds the matrix (every scenario × bullseye,
bookworm, trixie), about a minute per cycle with TCG.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kdumpkit.dump import open_dump


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def osrelease(vmcoreinfo: bytes) -> str:
    for line in vmcoreinfo.decode("utf-8", "replace").splitlines():
        if line.startswith("OSRELEASE="):
            return line.split("=", 1)[1]
    raise AssertionError("VMCOREINFO has no OSRELEASE")


def dump_dmesg(path: Path, tmp: Path) -> str:
    out = tmp / f"{path.name}.dmesg"
    r = subprocess.run(["makedumpfile", "--dump-dmesg", str(path), str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return out.read_text(errors="replace")


def check_capture(vmcore: Path, flat: Path | None, release: str, dmesg_truth: Path, tmp: Path) -> str:
    """What every captured cycle must satisfy; returns the dump's kernel log."""
    with open_dump(str(vmcore)) as d:
        assert d.format_name == "elf" and d.arch == "x86_64"
        info = d.vmcoreinfo_raw()
        assert info is not None
        assert osrelease(info) == release
        assert d.prstatus_notes()
    if shutil.which("crash"):
        r = subprocess.run(["crash", "--osrelease", str(vmcore)], capture_output=True, text=True, timeout=120)
        assert r.stdout.strip() == release, r.stderr
    if flat is not None:
        with open_dump(str(flat)) as f:
            info = f.vmcoreinfo_raw()
            assert info is not None and osrelease(info) == release
    log = dump_dmesg(vmcore, tmp)
    truth = [ln for ln in dmesg_truth.read_text().splitlines() if ln.startswith("[")]
    assert truth, "no ground-truth dmesg"
    for line in (truth[0], truth[len(truth) // 2], truth[-1]):
        assert line in log, f"ground-truth line missing from the dump's log: {line}"
    return log


@pytest.fixture
def check() -> Callable[[Path, Path | None, str, Path, Path], str]:
    return check_capture
