"""crash with Debian's debuginfo vmlinux (``linux-image-*-dbg``) beside kdumpkit without it.

Full lab tier only (``KDUMPKIT_LAB_FULL=1``, or the vmlinux already cached):
the package is 860 MB.  crash ``bt`` of the reference SysRq crash, on the
ELF vmcore and on a dump *kdumpkit* wrote: the frames our ORC unwinder finds
from the dump alone are crash's (crash starts one frame deeper, in
machine_kexec, and adds stale '?'-less guesses after do_syscall_64, which we
do not check).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.analyze.report import build_report
from kdumpkit.dump import open_dump

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(shutil.which("crash") is None, reason="crash not installed (make apt)")]


@pytest.fixture(scope="module")
def vmlinux(debug_vmlinux_bookworm: Path) -> Path:
    return debug_vmlinux_bookworm


def _crash_bt(vmlinux: Path, dump: Path, tmp: Path) -> list[str]:
    cmds = tmp / "cmds"
    cmds.write_text("bt\nquit\n")
    r = subprocess.run(["crash", "-s", str(vmlinux), str(dump), "-i", str(cmds)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return re.findall(r"^\s*#\d+ \[[0-9a-f]+\] (\S+) at ", r.stdout, re.M)


@pytest.mark.parametrize("which", ["vmcore", "ours"])
def test_crash_bt_with_debuginfo_matches_our_orc_backtrace(vmlinux: Path, ref_bookworm: Any, which: str,
                                                           tmp_path: Path) -> None:
    dump = Path(ref_bookworm.vmcore)
    if which == "ours":
        dump = tmp_path / "ours.kdump"
        r = subprocess.run([*_kdumpkit(), "save", "-l", "-d", "31", str(ref_bookworm.vmcore), str(dump)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
    theirs = _crash_bt(vmlinux, dump, tmp_path)
    with open_dump(str(dump)) as d:
        bt = build_report(d).to_json()["backtrace"]
    assert bt["method"] == "orc"
    ours = [f["function"] for f in bt["frames"]]
    assert theirs[0] == "machine_kexec" and theirs[1:1 + ours.index("do_syscall_64") + 1] == \
        ours[:ours.index("do_syscall_64") + 1], (theirs, ours)
    assert ours[-1] == theirs[-1] == "entry_SYSCALL_64_after_hwframe"


def _kdumpkit() -> list[str]:
    import sys

    return [sys.executable, "-m", "kdumpkit.cli.main"]
