"""E2E: the whole chain by kdumpkit on a real kernel (issue #6, #7), one extra boot.

``kdumpkit load`` (kexec_file_load) in the first kernel, ``kdumpkit status
--json`` ready, SysRq-c, the capture kernel boots kdumpkit's capture
initramfs and ``kdumpkit capture`` writes the raw disk, the host restores it
(``kdumpkit restore-raw``) and reports on it.  This is ``kdumpkit lab demo``
(:func:`kdumpkit.lab.demo.run_demo`), and before the crash the guest takes a
``kdumpkit live`` dump of itself (issue #9); its outputs are cached per kernel
version and kdumpkit source hash, so an unchanged tree does not boot again.
trixie only with ``KDUMPKIT_LAB_FULL=1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.dump import open_dump

FULL = os.environ.get("KDUMPKIT_LAB_FULL") == "1"
KERNELS = ["bookworm"] + (["trixie"] if FULL else [])


def _demo(kernel: str) -> Any:
    from kdumpkit.lab.cache import LAB_FORMAT_VERSION, lab_dir
    from kdumpkit.lab.demo import DemoResult, run_demo
    from kdumpkit.lab.kernels import fetch
    from kdumpkit.lab.run import RunResult
    from kdumpkit.setup.runtime import runtime_key

    k = fetch(kernel)
    d = lab_dir("e2e-kdumpkit") / f"{k.cache_key}-{runtime_key()}-v{LAB_FORMAT_VERSION}"
    if not (d / ".complete").is_file():
        for tool in ("qemu-system-x86_64", "busybox", "makedumpfile", "apt-get", "dpkg", "strip"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} not installed (make apt installs the lab's tools)")
        shutil.rmtree(d, ignore_errors=True)
        run_demo(k, d, timeout=900, live=True)
        (d / ".complete").write_text("")
    r = RunResult.load(d)
    meta = json.loads((d / "demo.json").read_text())
    return DemoResult(r, Path(meta["crash_dir"]), (d / "report.txt").read_text(), meta["verify_ok"])


@pytest.fixture(scope="module", params=KERNELS)
def demo(request: pytest.FixtureRequest) -> Any:
    return _demo(request.param)


def _osrelease(info: bytes) -> str:
    m = re.search(rb"^OSRELEASE=(.*)$", info, re.M)
    assert m
    return m.group(1).decode()


def test_loaded_by_kdumpkit_and_ready(demo: Any) -> None:
    status = json.loads((demo.result.out / "status.json").read_text())
    assert status["ready"] is True
    checks = {c["name"]: c["status"] for c in status["checks"]}
    assert checks["crashkernel"] == "ok" and checks["capture kernel"] == "ok"
    assert demo.result.capture == "kdumpkit"
    assert set(demo.result.timings) >= {"boot", "prepare", "crash", "capture_boot", "capture"}


def test_complete_dump_folder(demo: Any) -> None:
    names = sorted(p.name for p in demo.crash_dir.iterdir())
    assert names == ["dmesg.txt", "kallsyms.gz", "manifest.json", "vmcore"]
    manifest = json.loads((demo.crash_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert list(manifest["files"])[0] == "dmesg.txt"  # the kernel log is written (and synced) first
    assert demo.verify_ok


def test_kallsyms_snapshot_is_of_the_crashed_boot(demo: Any) -> None:
    """``kdumpkit load`` packed /proc/kallsyms into the initramfs; capture put it beside the dump."""
    import gzip

    from kdumpkit.kernel.memory import kernel_memory
    from kdumpkit.kernel.symbols import SymbolTable, load_symbol_table
    from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

    snap = demo.crash_dir / "kallsyms.gz"
    assert (snap.stat().st_mode & 0o777) == 0o600
    assert b" T panic\n" in gzip.decompress(snap.read_bytes())
    with open_dump(str(demo.crash_dir / "vmcore")) as d:
        info = VmcoreInfo.from_dump(d)
        table = load_symbol_table(kernel_memory(d, info), info)
        own = SymbolTable.from_proc_kallsyms(str(snap), info)
    assert "another boot" not in table.source and "shifted" not in own.source
    assert table.address_of("panic") == own.address_of("panic") is not None


def test_dump_is_the_booted_kernel(demo: Any, tmp_path: Path) -> None:
    vmcore = demo.crash_dir / "vmcore"
    with open_dump(str(vmcore)) as d:
        assert d.format_name == "kdump"
        info = d.vmcoreinfo_raw()
        assert info is not None and _osrelease(info) == demo.result.release
    if shutil.which("crash"):
        r = subprocess.run(["crash", "--osrelease", str(vmcore)], capture_output=True, text=True, timeout=120)
        assert r.stdout.strip() == demo.result.release, r.stderr
    out = tmp_path / "dmesg"
    r = subprocess.run(["makedumpfile", "--dump-dmesg", str(vmcore), str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    log = out.read_text(errors="replace")
    # dmesg.txt was extracted in the capture kernel by kdumpkit: byte for byte makedumpfile's reading.
    assert (demo.crash_dir / "dmesg.txt").read_text(errors="replace") == log
    truth = [ln for ln in (demo.result.out / "dmesg.txt").read_text().splitlines() if ln.startswith("[")]
    for line in (truth[0], truth[len(truth) // 2], truth[-1]):
        assert line in log
    assert "sysrq triggered crash" in log


def test_same_kernel_log_as_the_makedumpfile_reference(demo: Any, ref_bookworm: Any) -> None:
    if demo.result.kernel != "bookworm":
        pytest.skip("the reference set is bookworm's")
    ours = (demo.crash_dir / "dmesg.txt").read_text(errors="replace")
    theirs = ref_bookworm.dmesg_makedumpfile.read_text(errors="replace")

    def banner(text: str) -> str:
        return next(ln.split("] ", 1)[1] for ln in text.splitlines() if "Linux version" in ln)

    assert banner(ours) == banner(theirs)  # different boots: the same kernel says the same first words


def test_demo_report(demo: Any) -> None:
    assert demo.result.release in demo.report_text
    assert "sysrq" in demo.report_text.lower()


def _messages(text: str) -> set[str]:
    """Log lines without timestamp and surrounding blanks: busybox ``dmesg`` stamps continuation lines
    and the console strips trailing spaces, where makedumpfile's format indents and keeps them."""
    out = set()
    for ln in text.splitlines():
        if ln.startswith("[") and "] " in ln:
            ln = ln.split("] ", 1)[1]
        if ln.strip():
            out.add(ln.strip())
    return out


def test_live_dump_in_the_guest(demo: Any, tmp_path: Path) -> None:
    """``kdumpkit live`` on the running guest: its kernel log is the guest's dmesg of that moment."""
    live = demo.result.out / "live.vmcore"
    assert live.stat().st_mode & 0o777 == 0o600
    with open_dump(str(live)) as d:
        assert d.format_name == "kdump" and not d.incomplete
        info = d.vmcoreinfo_raw()
        assert info is not None and _osrelease(info) == demo.result.release
    out = tmp_path / "live-dmesg"
    r = subprocess.run([sys.executable, "-m", "kdumpkit.cli.main", "dmesg", str(live), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ours = _messages(out.read_text(errors="replace"))
    before = _messages((demo.result.out / "live-dmesg-before.txt").read_text())
    after = _messages((demo.result.out / "live-dmesg-after.txt").read_text())
    assert len(before) > 100 and before <= ours, f"printed before the live dump, missing in it: {before - ours}"
    assert ours <= after, f"in the live dump, never printed by the guest: {ours - after}"
    r = subprocess.run(["makedumpfile", "--dump-dmesg", str(live), str(tmp_path / "mdf")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "mdf").read_text(errors="replace") == out.read_text(errors="replace")


def test_estimate_of_the_running_guest(demo: Any) -> None:
    """``kdumpkit estimate /proc/kcore`` in the guest: its free pages are the kernel's MemFree of that moment."""
    est = json.loads((demo.result.out / "live-estimate.json").read_text())
    meminfo = (demo.result.out / "live-meminfo.txt").read_text()
    mem_free_kib = int(re.search(r"^MemFree:\s+(\d+) kB", meminfo, re.M).group(1))  # type: ignore[union-attr]
    free_kib = est["classes"]["free"] * est["page_size"] // 1024
    # MemFree is read after estimate exits, when its own ~30 MiB of Python and NumPy are free again
    assert abs(free_kib - mem_free_kib) <= max(mem_free_kib // 10, 8192), (free_kib, mem_free_kib)
    assert est["selfcheck"]["checked"] is True  # not "ok": memory moves while a live system is read
    assert est["levels"]["16"]["pages"] <= est["levels"]["0"]["pages"] - est["classes"]["free"]
