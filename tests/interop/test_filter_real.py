"""Our dump levels against makedumpfile's on a real 6.1 /proc/vmcore.

For each level we run ``makedumpfile -d N -l ref.vmcore out`` on the host,
read its 2nd bitmap back (``dumped_runs``; zero pages stay in that bitmap,
the descriptors share one zero page, so level bit 1 removes nothing there
either) and require the *same set of pfns* as ``filtered(vmcore, N)``.
The per-class counts are compared with ``--message-level 23`` output, and
the free-page self-check must agree with the kernel's NR_FREE_PAGES.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.capture.filter import filtered
from kdumpkit.dump import open_dump
from kdumpkit.dump.kdump import KdumpFile

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("makedumpfile") is None, reason="makedumpfile not installed"),
]

LEVELS = (1, 2, 4, 8, 16, 31)
_COUNT_LINES = {
    "Non-private cache pages": "cache", "Private cache pages": "cache_private",
    "User process data pages": "user", "Free pages": "free", "Hwpoison pages": "hwpoison",
    "Offline pages": "offline",
}


def _makedumpfile(vmcore: Path, level: int, out: Path) -> dict[str, int]:
    p = subprocess.run(["makedumpfile", "-l", "-d", str(level), "--message-level", "23", str(vmcore), str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    counts: dict[str, int] = {}
    for line in (p.stdout + p.stderr).splitlines():
        m = re.match(r"\s*([A-Za-z -]+?)\s*: 0x([0-9a-f]+)", line)
        if m and m.group(1) in _COUNT_LINES:
            counts[_COUNT_LINES[m.group(1)]] = int(m.group(2), 16)
    return counts


@pytest.fixture(scope="module")
def vmcore(ref_bookworm: Any) -> Any:
    with open_dump(str(ref_bookworm.vmcore)) as d:
        yield d


@pytest.mark.parametrize("level", LEVELS)
def test_same_pfns_as_makedumpfile(ref_bookworm: Any, vmcore: Any, level: int, tmp_path: Path) -> None:
    out = tmp_path / f"l{level}"
    theirs_counts = _makedumpfile(ref_bookworm.vmcore, level, out)
    ours = filtered(vmcore, level)
    with open_dump(str(out)) as theirs:
        assert isinstance(theirs, KdumpFile)
        assert ours.dumped_runs() == theirs.dumped_runs()
    for k, v in theirs_counts.items():
        assert ours.counts[k] == v, (k, ours.counts[k], v)
    sc = ours.selfcheck_result
    assert sc is not None and sc.ok and sc.checked, sc


def test_refilter_a_makedumpfile_kdump(ref_bookworm: Any, tmp_path: Path) -> None:
    """``filtered(open_dump(makedumpfile -d 2 output), 31)`` keeps exactly what ``makedumpfile -d 31`` keeps."""
    low = tmp_path / "l2"
    _makedumpfile(ref_bookworm.vmcore, 2, low)
    with open_dump(str(ref_bookworm.kdump_l31)) as k31:
        expect = k31.dumped_runs()
    with open_dump(str(low)) as k2:
        high = filtered(k2, 31)
        assert high.dumped_runs() == expect
        assert high.counts["cache"] == 0  # already excluded by level 2: stays excluded, not counted again
        assert high.selfcheck_result is not None and high.selfcheck_result.ok
