"""Modules and processes from the dump's own BTF, on the lab's real crashes (5.10, 6.1, 6.12).

Ground truth comes from the lab run itself:

* modules: the guest's ``/init`` insmods exactly the load order the lab
  computed for its initramfs (virtio modules that are not built in, plus
  their dependencies), so that list, recomputed from the same kernel tree,
  must equal the kernel's module list (as a set; minus any insmod the
  console reports as failed).  A ``Modules linked in:`` line, where the
  console has one (oopses print it, a SysRq panic does not), must be a
  subset of it;
* processes: the console's ``CPU: N PID: P Comm: C`` line names the
  crashing task, and the lab's ``/init`` is pid 1 called ``init``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.analyze.report import build_report
from kdumpkit.dump import open_dump

pytestmark = pytest.mark.interop

_CPU_LINE = re.compile(r"CPU: (\d+) (?:UID: \d+ )?PID: (\d+) Comm: (\S+)")
_MODULES_LINE = re.compile(r"Modules linked in:(.*)")


@pytest.fixture(scope="module", params=["bookworm", "trixie", "bullseye"])
def ref(request: pytest.FixtureRequest) -> Any:
    """The kernel's reference crash (tests/conftest.py; built on first use)."""
    return request.getfixturevalue(f"ref_{request.param}")


@pytest.fixture(scope="module")
def report(ref: Any) -> dict[str, Any]:
    with open_dump(str(ref.vmcore)) as d:
        out: dict[str, Any] = build_report(d, max_tasks=100_000).to_json()
        out["_ncpus"] = len(d.prstatus_notes())
    return out


def _lab_modules(suite: str) -> set[str]:
    """What the lab's initramfs loads for this kernel (same computation as ``lab.initramfs.build_base``)."""
    from kdumpkit.lab.initramfs import BASE_MODULES, OPTIONAL_MODULES
    from kdumpkit.lab.kernels import fetch
    from kdumpkit.lab.modules import builtin_modules, dependencies, load_order, module_index

    k = fetch(suite)
    index = module_index(k.modules_dir)
    builtin = builtin_modules(k.modules_dir)
    wanted = [m for m in BASE_MODULES if m in index or m in builtin or m not in OPTIONAL_MODULES]
    return set(load_order(wanted, dependencies(k.modules_dir, index), builtin=builtin))


def _console(ref: Any) -> str:
    text = Path(ref.console).read_text(errors="replace")
    return text.split("@@KDUMPKIT-LAB phase=capture-start", 1)[0]  # the first kernel only


def test_modules_equal_what_the_lab_loaded(ref: Any, report: dict[str, Any]) -> None:
    mods = report["modules"]
    assert "unavailable" not in mods, mods
    assert mods["source"].startswith("the kernel's module list"), mods["source"]
    assert "problem" not in mods
    console = _console(ref)
    failed = set(re.findall(r"insmod-failed=(\S+)", console))
    assert set(mods["modules"]) == _lab_modules(ref.kernel) - failed
    assert len(mods["modules"]) == len(set(mods["modules"]))
    for d in mods["details"]:
        assert d["state"] == "live" and d["size"] > 0 and int(d["base"], 16) >= 0xFFFF_FFFF_C000_0000, d
    logged = _MODULES_LINE.findall(console)
    if logged:
        assert {n.strip("[]") for n in logged[-1].split()} <= set(mods["modules"])
    assert mods["crash_modules"] == []  # SysRq crashes in the core kernel


def test_processes_have_init_and_the_crashing_task(ref: Any, report: dict[str, Any]) -> None:
    procs = report["processes"]
    assert "unavailable" not in procs, procs
    assert "problem" not in procs, procs["problem"]
    cpu, pid, comm = _CPU_LINE.findall(_console(ref))[-1]
    tasks = ([procs["crashing"]] if procs["crashing"] else []) + procs["tasks"]
    assert procs["count"] == len(tasks) > 20
    assert sum(procs["states"].values()) == procs["count"]
    by_pid = {t["pid"]: t for t in tasks}
    assert by_pid[1]["comm"] == "init"
    assert by_pid[2]["comm"] == "kthreadd"
    crashing = procs["crashing"]
    assert crashing is not None
    assert (crashing["pid"], crashing["comm"], crashing["cpu"]) == (int(pid), comm, int(cpu))
    assert crashing["state"] == "R"
    assert "current task of crashing CPU" in crashing["source"]
    # init_task is swapper/0; every CPU's current task is listed (idle CPUs: their swapper/N)
    assert any(t["pid"] == 0 and t["comm"] == "swapper/0" for t in tasks)
    assert {t["cpu"] for t in tasks if t["cpu"] is not None} == set(range(report["_ncpus"]))
    assert set(procs["states"]) <= set("RSDTtXZPI")


def test_cli_json_has_both_sections(ref: Any) -> None:
    p = subprocess.run([sys.executable, "-m", "kdumpkit.cli.main", "report", "--format", "json", str(ref.vmcore)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    assert "unavailable" not in j["modules"] and "unavailable" not in j["processes"]
    assert j["processes"]["shown"] == 20


def test_btf_scan_finds_the_same_blob(ref: Any) -> None:
    """Without __start_BTF/__stop_BTF in the symbol table, the rodata scan finds the same blob."""
    from kdumpkit.kernel.btf import find_btf
    from kdumpkit.kernel.memory import kernel_memory
    from kdumpkit.kernel.symbols import SymbolTable, load_symbol_table
    from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

    with open_dump(str(ref.vmcore)) as d:
        info = VmcoreInfo.from_dump(d)
        mem = kernel_memory(d, info)
        syms = load_symbol_table(mem, info)
        by_symbols = find_btf(mem, syms)
        stripped = SymbolTable([(s.name, s.address, s.type, None) for s in syms
                                if s.name not in ("__start_BTF", "__stop_BTF")], "stripped")
        by_scan = find_btf(mem, stripped)
    assert by_scan[:2] == by_symbols[:2] and "scan" in by_scan[2]
