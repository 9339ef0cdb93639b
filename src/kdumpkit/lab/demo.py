"""``kdumpkit lab demo`` (``make demo``): the whole chain, kdumpkit at every step.

The first kernel loads the capture kernel with ``kdumpkit load``
(kexec_file_load), ``kdumpkit status --json`` says it is ready, SysRq-c
crashes it, the capture kernel boots kdumpkit's capture initramfs and runs
``kdumpkit capture`` onto the raw disk, the host restores the crash folder
(``kdumpkit restore-raw``) and the triage report (``kdumpkit report``) says
what was captured.  The e2e tier runs this same function.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdumpkit.lab.console import Line
from kdumpkit.lab.kernels import Kernel
from kdumpkit.lab.run import RunResult, run

MEM_MB = 1024
CRASHKERNEL = "256M"


@dataclass
class DemoResult:
    result: RunResult
    crash_dir: Path
    report_text: str
    verify_ok: bool


def run_demo(kernel: str | Kernel, out: str | os.PathLike[str], *, accel: str = "auto", timeout: float = 600,
             on_line: Callable[[Line], None] | None = None, live: bool = False) -> DemoResult:
    """One kdumpkit-captured SysRq crash; the restored folder and its report.

    ``live``: also a ``kdumpkit live`` dump of the guest before the crash
    (the e2e tier uses it to prove live dumps in the same boot).
    """
    from kdumpkit.analyze.report import build_report, render
    from kdumpkit.dump import open_dump
    from kdumpkit.dump.verify import verify_dump

    result = run(kernel, out=out, mem_mb=MEM_MB, crashkernel=CRASHKERNEL, scenario="sysrq", capture="kdumpkit",
                 timeout=timeout, accel=accel, on_line=on_line, live=live)
    assert result.crash_dir is not None
    crash = Path(result.crash_dir)
    with open_dump(str(crash / "vmcore")) as d:
        report = render(build_report(d), "text")
    with open_dump(str(crash / "vmcore")) as d:
        ok = verify_dump(d).ok
    (Path(out) / "report.txt").write_text(report)
    (Path(out) / "demo.json").write_text(json.dumps({"crash_dir": str(crash), "verify_ok": ok}) + "\n")
    return DemoResult(result, crash, report, ok)
