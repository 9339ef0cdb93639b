"""E2E: the administrator's path on a real installed Debian (issue #15), one journey per tree.

A bookworm system built from Debian's packages boots through its own GRUB;
kdumpkit is installed from a wheelhouse, ``kdumpkit setup`` configures it,
the reboot takes the crashkernel= setup wrote, the unit setup enabled loads
the capture kernel, SysRq-c crashes it, the capture kernel mounts /var/crash's
filesystem by UUID and saves the dump there, and after the final reboot the
report unit writes the triage report.  The journey's outputs are cached per
kdumpkit source hash (a fresh machine, like CI, always runs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kdumpkit.dump import open_dump


@pytest.fixture(scope="module")
def journey_dir() -> Path:
    from kdumpkit.lab.cache import lab_dir
    from kdumpkit.lab.journey import failure_line, run_journey
    from kdumpkit.lab.sysimage import PACKAGES, image_key
    from kdumpkit.setup.runtime import runtime_key

    out = lab_dir("e2e-system") / f"bookworm-default-{image_key('bookworm', PACKAGES)}-{runtime_key()}"
    done = out / "journey.json"
    if done.is_file() and json.loads(done.read_text())["result"] == "pass":
        return out
    shutil.rmtree(out, ignore_errors=True)
    j = run_journey(suite="bookworm", variant="default", out=out, log=print)
    assert j.result == "pass", failure_line(j)
    return out


def _crash_dir(out: Path) -> Path:
    dirs = sorted(d for d in (out / "var-crash").iterdir() if d.is_dir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_journey_passes_every_phase(journey_dir: Path) -> None:
    j = json.loads((journey_dir / "journey.json").read_text())
    assert j["result"] == "pass"
    names = [p["name"] for p in j["phases"]]
    for phase in ("install", "setup", "reboot", "load-at-boot", "capture", "panic-to-dump-on-disk", "report"):
        assert phase in names, names
    # crashkernel= came from what setup wrote into GRUB's configuration, not from the harness
    assert "crashkernel=" in (journey_dir / "guest/grub-cfg-crashkernel.txt").read_text()
    assert "crashkernel=" in (journey_dir / "guest/cmdline.txt").read_text()


def test_dump_in_var_crash_opens_in_the_peers(journey_dir: Path, tmp_path: Path) -> None:
    crash = _crash_dir(journey_dir)
    vmcore = crash / "vmcore"
    for name in ("vmcore", "dmesg.txt", "manifest.json", "report.txt"):
        assert (crash / name).is_file(), name
    j = json.loads((journey_dir / "journey.json").read_text())
    assert j["files"][f"{crash.name}/vmcore"]["mode"] == "0o600"
    release = j["release"]
    with open_dump(str(vmcore)) as d:
        assert d.format_name == "kdump"
    if shutil.which("crash"):
        r = subprocess.run(["crash", "--osrelease", str(vmcore)], capture_output=True, text=True, timeout=120)
        assert r.stdout.strip() == release, r.stderr
    out = tmp_path / "dmesg"
    r = subprocess.run(["makedumpfile", "--dump-dmesg", str(vmcore), str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sysrq: Trigger a crash" in out.read_text(errors="replace")
    assert "sysrq: Trigger a crash" in (crash / "dmesg.txt").read_text(errors="replace")


def test_report_after_the_reboot_names_the_crash(journey_dir: Path) -> None:
    assert "sysrq_handle_crash" in (journey_dir / "report.txt").read_text()
