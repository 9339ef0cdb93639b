"""LKCD from a real crash (issue #9): kdumpkit writes it, crash and kdumpkit read it.

The lab's bookworm SysRq vmcore converted with ``kdumpkit convert --format
lkcd``.  LKCD has no notes: VMCOREINFO is lost (our analysis finds the
kernel's own note in memory again; crash is handed the KASLR offset and
phys_base the converter prints) and the CPU registers travel in the arch
header in crash's x86_64 layout (``dump_header_asm_t``), which our reader
turns back into NT_PRSTATUS notes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.analyze.report import build_report
from kdumpkit.dump import open_dump
from kdumpkit.dump.override import with_vmcoreinfo

pytestmark = pytest.mark.interop
KDUMPKIT = [sys.executable, "-m", "kdumpkit.cli.main"]


@pytest.fixture(scope="module")
def lkcd(ref_bookworm: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the LKCD file, the crash options ``convert`` printed for it)."""
    out = tmp_path_factory.mktemp("lkcd") / "dump.lkcd"
    r = subprocess.run([*KDUMPKIT, "convert", str(ref_bookworm.vmcore), str(out), "--format", "lkcd"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    m = re.search(r"open it with: crash (.*) VMLINUX", r.stderr)
    assert m, r.stderr
    return out, m.group(1)


def test_our_dmesg_of_the_lkcd_is_makedumpfiles(lkcd: tuple[Path, str], ref_bookworm: Any, tmp_path: Path) -> None:
    out = tmp_path / "log"
    r = subprocess.run([*KDUMPKIT, "dmesg", str(lkcd[0]), "-o", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == Path(ref_bookworm.dmesg_makedumpfile).read_bytes()


def test_registers_survive_and_the_report_is_the_vmcores(lkcd: tuple[Path, str], ref_bookworm: Any) -> None:
    with open_dump(str(ref_bookworm.vmcore)) as v:
        theirs = build_report(v).to_json()
        n_cpus = len(v.prstatus_notes())
    with with_vmcoreinfo(open_dump(str(lkcd[0]))) as d:
        assert len(d.prstatus_notes()) == n_cpus
        ours = build_report(d).to_json()
    assert ours["signature"]["id"] == theirs["signature"]["id"]
    assert [f["function"] for f in ours["backtrace"]["frames"]] == \
        [f["function"] for f in theirs["backtrace"]["frames"]]


@pytest.mark.skipif(shutil.which("crash") is None, reason="crash not installed (make apt)")
def test_crash_opens_it_with_the_printed_options(lkcd: tuple[Path, str], debug_vmlinux_bookworm: Path,
                                                 ref_bookworm: Any, tmp_path: Path) -> None:
    cmds = tmp_path / "cmds"
    cmds.write_text("sys\nbt\nlog\nquit\n")
    r = subprocess.run(["crash", "-s", *lkcd[1].split(), str(debug_vmlinux_bookworm), str(lkcd[0]), "-i",
                        str(cmds)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert re.search(r"RELEASE: 6\.1\.0-\S+-amd64", r.stdout), r.stdout[:2000]
    frames = re.findall(r"^\s*#\d+ \[[0-9a-f]+\] (\S+) at ", r.stdout, re.M)
    assert "sysrq_handle_crash" in frames and "panic" in frames, frames
    assert "sysrq: Trigger a crash" in r.stdout
