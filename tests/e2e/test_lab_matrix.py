"""The full lab matrix (``KDUMPKIT_LAB_FULL=1``): every scenario on every kernel.

Each cycle boots a fresh guest (about a minute with TCG), so this tier is
opt-in; outcomes are appended to ``<cache>/lab/matrix.jsonl``.

Each crash is also a triage-report test (issue #8): the report's panic
message is a line of the crashed kernel's log, its ORC backtrace agrees with
the Call Trace the kernel printed (a run of at least three frames in the
same order), and the crash signature differs between scenarios (and, for
SysRq, equals the one of the cached reference crash: a second run).
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


SIGNATURES: dict[tuple[str, str], str] = {}


def common_run(ours: list[str], logged: list[str]) -> int:
    """Length of the longest run of consecutive frames both traces share, in order."""
    best = 0
    for i in range(len(ours)):
        for j in range(len(logged)):
            n = 0
            while i + n < len(ours) and j + n < len(logged) and ours[i + n] == logged[j + n]:
                n += 1
            best = max(best, n)
    return best


def check_report(vmcore: Path, log: str) -> dict[str, object]:
    from kdumpkit.analyze.report import build_report, log_call_trace
    from kdumpkit.dump import open_dump
    from kdumpkit.kernel.memory import kernel_memory
    from kdumpkit.kernel.printk import get_printk_log

    with open_dump(str(vmcore)) as d:
        report = build_report(d).to_json()
        plog = get_printk_log(kernel_memory(d))
    message = report["crash"]["panic_message"]
    assert message and message in log, f"panic message not in the log: {message!r}"
    ours = [f["function"] for f in report["backtrace"]["frames"]]
    logged = [f["function"] for f in log_call_trace(plog)]
    shared = common_run(ours, logged)
    assert shared >= 3, f"backtrace {ours} shares {shared} consecutive frames with the logged trace {logged}"
    return {"signature": report["signature"]["id"], "functions": report["signature"]["functions"],
            "message": message, "shared_frames": shared, "method": report["backtrace"]["method"]}


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
    rep: dict[str, object] = {}
    try:
        log = check(result.vmcore, result.flat, result.release, result.dmesg, tmp_path)
        assert PANIC_TEXT[scenario] in log
        rep = check_report(result.vmcore, log)
        SIGNATURES[(kernel, scenario)] = str(rep["signature"])
        ok = True
    finally:
        record({"kernel": kernel, "scenario": scenario, "ok": ok, "release": result.release, "report": rep,
                "timings": result.timings, "vmcore_size": result.vmcore_size, "flat_size": result.flat_size,
                "accel": result.accel, "wall": round(time.monotonic() - t0, 1)})


@pytest.mark.parametrize("kernel", KERNELS)
def test_signatures(kernel: str, ref_bookworm: object) -> None:
    """Runs after the matrix: one signature per scenario, all different; SysRq's is the reference crash's."""
    sigs = {sc: sig for (k, sc), sig in SIGNATURES.items() if k == kernel}
    if len(sigs) < 2:
        pytest.skip(f"fewer than two {kernel} scenarios ran")
    assert len(set(sigs.values())) == len(sigs), sigs
    if "sysrq" in sigs:
        from kdumpkit.analyze.report import build_report
        from kdumpkit.dump import open_dump

        with open_dump(str(ref_bookworm.vmcore)) as d:  # type: ignore[attr-defined]
            assert build_report(d).to_json()["signature"]["id"] == sigs["sysrq"]
