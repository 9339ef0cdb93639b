"""kallsyms, ORC backtraces and the report on the lab's real crashes (6.1 bookworm, 6.12 trixie).

The strongest check needs no System.map: every ``SYMBOL(x)`` VMCOREINFO
exports must equal kallsyms' address for ``x`` (names kallsyms does not
carry, and the value-not-address keys ``mem_section``/``vmemmap``, skipped).
Signature stability across two crashes of one scenario needs two lab runs;
the lab makes one per kernel, so only cross-kernel equality for the same
scenario (sysrq on 6.1 and 6.12) is checked here.
"""

from __future__ import annotations

import pytest

from kdumpkit.analyze.report import build_report, log_call_trace
from kdumpkit.dump import open_dump
from kdumpkit.kernel.kallsyms import find_kallsyms, read_kallsyms, scan_kallsyms
from kdumpkit.kernel.memory import kernel_memory
from kdumpkit.kernel.printk import get_printk_log
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo
from kdumpkit.lab.reference import ReferenceSet

VALUE_KEYS = {"mem_section", "vmemmap"}


def _check_kallsyms(path: str, scan: bool) -> None:
    with open_dump(path) as d:
        info = VmcoreInfo.from_dump(d)
        mem = kernel_memory(d, info)
        loc = scan_kallsyms(mem, info) if scan else find_kallsyms(mem, info)
        ks = read_kallsyms(mem, info, loc)
    first: dict[str, int] = {}
    for n, a in zip(ks.names, ks.addresses, strict=True):
        first.setdefault(n, a)
    checked = 0
    for key in info.raw:
        if key.startswith("SYMBOL("):
            name = key[7:-1]
            if name in first and name not in VALUE_KEYS:
                assert first[name] == info.symbol(name), name
                checked += 1
    assert checked >= 5
    assert ks.addresses == sorted(ks.addresses)
    assert len(ks) > 50_000


@pytest.mark.parametrize("scan", [False, True])
def test_kallsyms_bookworm(ref_bookworm: ReferenceSet, scan: bool) -> None:
    _check_kallsyms(str(ref_bookworm.vmcore), scan)


@pytest.mark.parametrize("scan", [False, True])
def test_kallsyms_trixie(ref_trixie: ReferenceSet, scan: bool) -> None:
    _check_kallsyms(str(ref_trixie.vmcore), scan)


def _check_backtrace(path: str) -> str:
    with open_dump(path) as d:
        report = build_report(d).to_json()
        log = get_printk_log(kernel_memory(d))
    bt = report["backtrace"]
    assert bt["method"] == "orc", bt
    ours = [f["function"] for f in bt["frames"]]
    logged = [f["function"] for f in log_call_trace(log) if f["reliable"]]
    # The kernel printed its trace from dump_stack in panic(); ours starts at
    # __crash_kexec (where crash_setup_regs saved the registers).  From
    # sysrq_handle_crash down both must agree exactly.
    start = logged.index("sysrq_handle_crash")
    assert ours[ours.index("sysrq_handle_crash"):] == logged[start:]
    assert [f for f in ours if f != "vpanic"][:2] == ["__crash_kexec", "panic"]  # 6.12.y stable: vpanic
    assert report["kernel"]["release"]
    assert "unavailable" not in report["log"]
    return str(report["signature"]["id"])


def test_backtrace_and_signature(ref_bookworm: ReferenceSet, ref_trixie: ReferenceSet) -> None:
    a = _check_backtrace(str(ref_bookworm.vmcore))
    b = _check_backtrace(str(ref_trixie.vmcore))
    assert a == b  # same scenario (sysrq), same normalized top frames and message


def test_report_on_filtered_dump(ref_bookworm: ReferenceSet) -> None:
    with open_dump(str(ref_bookworm.kdump_c31)) as d:
        report = build_report(d).to_json()
    assert report["backtrace"]["method"] == "orc"
