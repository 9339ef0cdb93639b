"""The full lab matrix (``KDUMPKIT_LAB_FULL=1``): every scenario on every kernel.

Each cycle boots a fresh guest (about a minute with TCG), so this tier is
opt-in; outcomes are appended to ``<cache>/lab/matrix.jsonl``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kdumpkit.errors import LabError
from kdumpkit.lab.cache import lab_dir
from kdumpkit.lab.run import SCENARIOS, run

FULL = os.environ.get("KDUMPKIT_LAB_FULL") == "1"

pytestmark = pytest.mark.skipif(not FULL, reason="set KDUMPKIT_LAB_FULL=1 for the scenario × kernel matrix")

KERNELS = ("bullseye", "bookworm", "trixie")
#: What the crashed kernel's log must say, per scenario.
PANIC_TEXT = {
    "sysrq": "sysrq triggered crash",
    "oops": "Oops:",  # with panic_on_oops, oops_end() kexecs before panic("Fatal exception") prints
    "nmi": "NMI",
    "softlockup": "softlockup: hung tasks",
    "panic_on_oom": "panic_on_oom is enabled",
}


def record(result: dict[str, object]) -> None:
    """Append one outcome to ``<cache>/lab/matrix.jsonl`` (the table in docs/lab.md comes from it)."""
    with open(lab_dir() / "matrix.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_matrix(kernel: str, scenario: str, tmp_path: Path, check: Callable[..., str], lab_required: None) -> None:
    t0 = time.monotonic()
    try:
        result = run(kernel, out=tmp_path / "out", scenario=scenario, timeout=900)
    except LabError as e:
        record({"kernel": kernel, "scenario": scenario, "ok": False, "error": str(e),
                "wall": round(time.monotonic() - t0, 1)})
        if "not implemented" in str(e) or "headers" in str(e):
            pytest.skip(str(e))
        raise
    ok = False
    try:
        log = check(result.vmcore, result.flat, result.release, result.dmesg, tmp_path)
        assert PANIC_TEXT[scenario] in log
        ok = True
    finally:
        record({"kernel": kernel, "scenario": scenario, "ok": ok, "release": result.release,
                "timings": result.timings, "vmcore_size": result.vmcore_size, "flat_size": result.flat_size,
                "accel": result.accel, "wall": round(time.monotonic() - t0, 1)})
