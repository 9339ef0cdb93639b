"""E2E (issue #6): ``kdumpkit save`` itself runs inside a real capture kernel.

kexec-tools loads the lab's capture image with kdumpkit's Python runtime in
it; after SysRq-c the capture kernel runs ``kdumpkit save -F -l -d 31
/proc/vmcore >/dev/vdc`` (the makedumpfile drop-in, the way a
``core_collector`` line would) and also copies /proc/vmcore raw to vdb.  The
host checks that the flattened dump is complete, holds exactly the pages
makedumpfile keeps at ``-d 31`` on the same vmcore, each byte-identical to
the vmcore's, and that makedumpfile and crash read it.  The run is cached per
kernel version and kdumpkit source hash.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.dump import open_dump


@pytest.fixture(scope="module")
def saved() -> Any:
    from kdumpkit.lab.cache import LAB_FORMAT_VERSION, lab_dir
    from kdumpkit.lab.kernels import fetch
    from kdumpkit.lab.run import RunResult, run
    from kdumpkit.setup.runtime import runtime_key

    for tool in ("qemu-system-x86_64", "busybox", "makedumpfile", "kexec", "strip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make apt installs the lab's tools)")
    k = fetch("bookworm")
    d = lab_dir("e2e-save") / f"{k.cache_key}-{runtime_key()}-v{LAB_FORMAT_VERSION}"
    if not (d / ".complete").is_file():
        shutil.rmtree(d, ignore_errors=True)
        run(k, out=d, capture="kdumpkit-save", timeout=900)
        (d / ".complete").write_text("")
    return RunResult.load(d)


def test_save_ran_in_the_capture_kernel(saved: Any) -> None:
    console = saved.console_log.read_text(errors="replace")
    assert "phase=kdumpkit-save-done" in console
    assert saved.capture == "kdumpkit-save" and saved.flat is not None
    with open_dump(str(saved.flat)) as d:
        assert d.format_name == "kdump" and not d.incomplete
        details = d.info().details
        assert details["compression"] == "lzo" and details["dump_level"] == 31
        assert details["utsname.release"] == saved.release


def test_same_pages_as_makedumpfile_and_the_vmcore(saved: Any, tmp_path: Path) -> None:
    ref = tmp_path / "mdf.d31"
    r = subprocess.run(["makedumpfile", "-l", "-d", "31", str(saved.vmcore), str(ref)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    with open_dump(str(saved.flat)) as ours, open_dump(str(ref)) as theirs, open_dump(str(saved.vmcore)) as raw:
        runs = ours.dumped_runs()
        assert runs == theirs.dumped_runs()
        ps = ours.page_size
        checked = 0
        for s, e in runs:
            for pfn in range(s, e, 256):
                n = min(256, e - pfn)
                assert ours.read(pfn * ps, n * ps) == raw.read(pfn * ps, n * ps), f"pages at pfn {pfn:#x}"
                checked += n
        assert checked > 10_000


def test_peers_read_it(saved: Any, tmp_path: Path) -> None:
    rebuilt = tmp_path / "rebuilt"
    with open(saved.flat, "rb") as f:
        r = subprocess.run(["makedumpfile", "-R", str(rebuilt)], stdin=f, capture_output=True, text=True,
                           timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["makedumpfile", "--dump-dmesg", str(rebuilt), str(tmp_path / "log")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sysrq triggered crash" in (tmp_path / "log").read_text(errors="replace")
    if shutil.which("crash"):
        r = subprocess.run(["crash", "--osrelease", str(rebuilt)], capture_output=True, text=True, timeout=120)
        assert r.stdout.strip() == saved.release, r.stderr
