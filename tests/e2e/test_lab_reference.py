"""Default e2e tier: one real bookworm crash (the cached reference set).

Boot → kexec -p → SysRq-c → capture kernel → /proc/vmcore copied and
makedumpfile'd → extracted on the host; then the dump is checked against what
the booted kernel said about itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdumpkit.lab.cache import LAB_FORMAT_VERSION


def test_reference_crash_is_the_booted_kernel(ref_bookworm: Any, check: Callable[..., str], tmp_path: Path) -> None:
    log = check(ref_bookworm.vmcore, ref_bookworm.flat, ref_bookworm.release, ref_bookworm.dmesg, tmp_path)
    assert "sysrq triggered crash" in log
    assert ref_bookworm.release.startswith("6.1.")


def test_reference_run_record(ref_bookworm: Any) -> None:
    run = json.loads(Path(ref_bookworm.run_json).read_text())
    assert run["lab_format"] == LAB_FORMAT_VERSION
    assert run["scenario"] == "sysrq" and run["mem_mb"] == 1024 and run["crashkernel"] == "256M"
    assert set(run["timings"]) >= {"boot", "prepare", "crash", "capture_boot", "capture", "extract"}
    meminfo = Path(ref_bookworm.meminfo).read_text()
    assert meminfo.startswith("MemTotal:")
    # the reservation is gone from the first kernel's RAM
    total_kb = int(meminfo.split()[1])
    assert total_kb < (1024 - 256) * 1024


def test_host_made_formats(ref_bookworm: Any) -> None:
    for path in (ref_bookworm.kdump_c31, ref_bookworm.kdump_l31, ref_bookworm.elf_E31, *ref_bookworm.split):
        assert Path(path).stat().st_size > 4096
    assert Path(ref_bookworm.kdump_c31).read_bytes()[:8] == b"KDUMP   "
    assert Path(ref_bookworm.elf_E31).read_bytes()[:4] == b"\x7fELF"
    assert "sysrq triggered crash" in Path(ref_bookworm.dmesg_makedumpfile).read_text()
