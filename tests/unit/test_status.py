"""kdumpkit status on fixture /proc and /sys trees: each check, the exit code, --json."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.cli.main import main
from kdumpkit.kexec.status import FAIL, OK, WARN, human, status

IOMEM = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
00100000-3ffd6fff : System RAM
  27000000-36ffffff : Crash kernel
  37000000-38ffffff : Kernel code
"""
MEMINFO = "MemTotal:        1000000 kB\nMemFree:          600000 kB\nBuffers:           10000 kB\nCached:           90000 kB\n"


def make_root(tmp: Path, *, loaded: str | None = "1", iomem: str = IOMEM, cmdline: str = "ro crashkernel=256M",
              sysctl: dict[str, str] | None = None) -> Path:
    (tmp / "proc/sys/kernel").mkdir(parents=True)
    (tmp / "sys/kernel").mkdir(parents=True)
    (tmp / "proc/iomem").write_text(iomem)
    (tmp / "proc/cmdline").write_text(cmdline + "\n")
    (tmp / "proc/meminfo").write_text(MEMINFO)
    (tmp / "sys/kernel/kexec_crash_size").write_text("268435456\n")
    if loaded is not None:
        (tmp / "sys/kernel/kexec_crash_loaded").write_text(loaded + "\n")
    values = {"sysrq": "1", "panic_on_oops": "1", "unknown_nmi_panic": "0", "kexec_load_disabled": "0"}
    values.update(sysctl or {})
    for k, v in values.items():
        (tmp / f"proc/sys/kernel/{k}").write_text(v + "\n")
    return tmp


def by_name(st: Any) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.detail) for c in st.checks}


def test_ready_machine(tmp_path: Path) -> None:
    st = status(make_root(tmp_path))
    c = by_name(st)
    assert st.ready
    assert c["crashkernel"][0] == OK and "256M reserved (0x27000000-0x36ffffff) by crashkernel=256M" in c["crashkernel"][1]
    assert c["capture kernel"] == (OK, "loaded")
    assert c["kernel.sysrq"][0] == OK and c["kernel.panic_on_oops"][0] == OK
    assert c["kernel.unknown_nmi_panic"][0] == WARN
    assert "crashkernel size" not in c  # 1 GiB: the default table reserves nothing, so no complaint


def test_not_loaded_and_not_reserved(tmp_path: Path) -> None:
    st = status(make_root(tmp_path / "a", loaded="0", sysctl={"kexec_load_disabled": "1", "sysrq": "176"}))
    c = by_name(st)
    assert not st.ready and c["capture kernel"][0] == FAIL and "kexec_load_disabled=1" in c["capture kernel"][1]
    assert c["kernel.sysrq"][0] == WARN
    st = status(make_root(tmp_path / "b", iomem=IOMEM.replace("Crash kernel", "Kernel data"), cmdline="ro"))
    assert by_name(st)["crashkernel"][0] == FAIL and "no crashkernel=" in by_name(st)["crashkernel"][1]
    st = status(make_root(tmp_path / "c", iomem=IOMEM.replace("Crash kernel", "Kernel data")))
    assert "nothing was reserved" in by_name(st)["crashkernel"][1]
    st = status(make_root(tmp_path / "d", loaded=None, cmdline="crashkernel=auto"))
    c = by_name(st)
    assert c["crashkernel"][0] == FAIL and "historical" in c["crashkernel"][1] and c["capture kernel"][0] == FAIL
    big = IOMEM.replace("3ffd6fff : System RAM", "ffffffff : System RAM") + "100000000-43fffffff : System RAM\n"
    st = status(make_root(tmp_path / "e", iomem=big))
    assert "crashkernel size" not in by_name(st)  # 16G RAM: the table says 256M, and 256M is reserved


def test_reservation_below_default_table_warns(tmp_path: Path) -> None:
    big = (IOMEM.replace("3ffd6fff : System RAM", "ffffffff : System RAM")
           .replace("27000000-36ffffff", "27000000-2effffff") + "100000000-43fffffff : System RAM\n")
    c = by_name(status(make_root(tmp_path, iomem=big)))
    assert c["crashkernel size"][0] == WARN and "below kdumpctl's default 256M" in c["crashkernel size"][1]


def test_sysrq_dump_bit(tmp_path: Path) -> None:
    assert by_name(status(make_root(tmp_path, sysctl={"sysrq": "8"})))["kernel.sysrq"][0] == OK


def _statvfs(free: int) -> Callable[[str], Any]:
    class R:
        f_bavail = free // 4096
        f_frsize = 4096
    return lambda path: R()


@pytest.mark.parametrize("free,level", [(10 << 20, FAIL), (500 << 20, WARN), (2 << 30, OK)])
def test_target_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: int, level: str) -> None:
    root = make_root(tmp_path)
    monkeypatch.setattr(os, "statvfs", _statvfs(free))
    st = status(root, target="/var/crash")
    assert by_name(st)["target"][0] == level
    assert st.ready == (level != FAIL)


def test_missing_target(tmp_path: Path) -> None:
    st = status(make_root(tmp_path), target=str(tmp_path / "nope"))
    assert by_name(st)["target"][0] == FAIL and not st.ready


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = make_root(tmp_path / "ok")
    assert main(["status", "--root", str(ok)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("ok    crashkernel: 256M reserved") and out.strip().endswith("ready")
    bad = make_root(tmp_path / "bad", loaded="0")
    assert main(["status", "--root", str(bad), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ready"] is False and {"name": "capture kernel", "status": "fail"}.items() <= data["checks"][1].items()


def test_human() -> None:
    assert human(512) == "512 B" and human(1536 << 20) == "1.5 GiB"
