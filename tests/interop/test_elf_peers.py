"""ELF dumps against the real peers, on a real kernel's /proc/vmcore from the lab.

* the real vmcore opens in our reader and says what the booted kernel said;
* makedumpfile's ``-E`` output reads page-equal to the vmcore;
* our ELF conversion opens in crash (``--osrelease``) and in makedumpfile
  (``--dump-dmesg``, and refiltering to a kdump file).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.cli.main import main
from kdumpkit.dump import open_dump
from kdumpkit.dump.base import PageState
from kdumpkit.dump.testing import assert_kept_pages_equal

pytestmark = pytest.mark.interop

needs_peers = pytest.mark.skipif(not (shutil.which("makedumpfile") and shutil.which("crash")),
                                 reason="makedumpfile/crash not installed (make bootstrap installs them)")


def _osrelease(vmcoreinfo: bytes) -> str:
    for line in vmcoreinfo.decode().splitlines():
        if line.startswith("OSRELEASE="):
            return line.split("=", 1)[1]
    raise AssertionError("no OSRELEASE")


def test_real_vmcore_opens(ref_bookworm: Any) -> None:
    with open_dump(str(ref_bookworm.vmcore)) as d:
        assert d.format_name == "elf" and d.arch == "x86_64" and d.page_size == 4096
        vmcoreinfo = d.vmcoreinfo_raw()
        assert vmcoreinfo is not None
        assert _osrelease(vmcoreinfo) == ref_bookworm.release
        assert len(d.prstatus_notes()) >= 1
        assert d.direct_map_base() is not None
        assert not d.incomplete
        # kexec_file vmcores leave out the first MiB
        assert d.page_state(0) is PageState.NOT_RAM


@needs_peers
def test_makedumpfile_E_reads_page_equal(ref_bookworm: Any) -> None:
    with open_dump(str(ref_bookworm.vmcore)) as src, open_dump(str(ref_bookworm.elf_E31)) as e:
        assert e.format_name == "elf"
        assert assert_kept_pages_equal(src, e) > 1000
        for s, end in e.dumped_runs():
            assert all(src.page_state(p) is PageState.DUMPED for p in (s, end - 1))


@needs_peers
def test_our_elf_opens_in_crash_and_makedumpfile(ref_bookworm: Any, tmp_path: Path) -> None:
    ours = tmp_path / "ours.elf"
    assert main(["convert", str(ref_bookworm.vmcore), str(ours), "--format", "elf"]) == 0
    out = subprocess.run(["crash", "--osrelease", str(ours)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == ref_bookworm.release, out.stderr
    dmesg = tmp_path / "dmesg.txt"
    r = subprocess.run(["makedumpfile", "--dump-dmesg", str(ours), str(dmesg)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert dmesg.read_bytes() == Path(ref_bookworm.dmesg_makedumpfile).read_bytes()
    refiltered = tmp_path / "refiltered.kdump"
    r = subprocess.run(["makedumpfile", "-c", "-d", "31", str(ours), str(refiltered)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    with open_dump(str(ref_bookworm.vmcore)) as src, open_dump(str(refiltered)) as k:
        assert assert_kept_pages_equal(src, k) > 1000


def test_lime_and_raw_round_trip_real(ref_bookworm: Any, tmp_path: Path) -> None:
    for fmt in ("lime", "raw"):
        out = tmp_path / f"x.{fmt}"
        assert main(["convert", str(ref_bookworm.vmcore), str(out), "--format", fmt]) == 0
        with open_dump(str(ref_bookworm.vmcore)) as src, open_dump(str(out)) as back:
            assert back.ram_runs() == src.ram_runs()
            assert assert_kept_pages_equal(src, back) == sum(e - s for s, e in src.dumped_runs())
        out.unlink()
