"""The triage report: sections on a synthetic crash, degradation on damaged dumps, signatures."""

from __future__ import annotations

import json

from kdumpkit.analyze.report import build_report, crash_signature, log_call_trace, render
from kdumpkit.dump.testing import synthetic_dump
from kdumpkit.kernel.printk import PrintkLog, PrintkRecord
from kdumpkit.kernel.testing import SyntheticKernel, SynthRecord, prstatus_x86_64

LOG = [
    b"Linux version 6.1.0-synthetic",
    b"sysrq: Trigger a crash",
    b"Kernel panic - not syncing: sysrq triggered crash",
    b"CPU: 0 PID: 1 Comm: init Kdump: loaded Not tainted 6.1.0-synthetic #1",
    b"Call Trace:",
    b" <TASK>",
    b" dump_stack_lvl+0x44/0x5c",
    b" panic+0x118/0x2f4",
    b" ? _printk+0x68/0x83",
    b" sysrq_handle_crash+0x16/0x20 [crashmod]",
    b" </TASK>",
    b"Modules linked in: virtio_blk virtio_pci",
]


def _synthetic_crash(regs: list[int] | None = None) -> SyntheticKernel:
    k = SyntheticKernel()
    k.lockless_log([SynthRecord(t, ts_nsec=1_000_000_000 * (i + 1)) for i, t in enumerate(LOG)],
                   count_bits=5, size_bits=12)
    return k


def _all_sections_render(report_json: dict[str, object]) -> None:
    json.dumps(report_json)


def test_report_on_synthetic_crash_without_symbols() -> None:
    k = _synthetic_crash()
    rip = SyntheticKernel.TEXT_VA + 0x10
    dump = k.dump(notes=[prstatus_x86_64(1, [0] * 16 + [rip, 0x10, 0x46, k.direct_map + 0x9000, 0x18])])
    r = build_report(dump)
    j = r.to_json()
    _all_sections_render(j)
    assert j["crash"]["panic_message"] == "Kernel panic - not syncing: sysrq triggered crash"
    assert j["kernel"]["taint"].startswith("Not tainted")
    assert j["modules"]["modules"] == ["virtio_blk", "virtio_pci"]
    assert "unavailable" in j["backtrace"]  # no kallsyms in this kernel
    assert j["signature"]["basis"] == "log call trace"
    assert j["signature"]["functions"][:2] == ["dump_stack_lvl", "panic"]
    for fmt in ("text", "markdown"):
        text = render(r, fmt)
        assert "unavailable:" in text and "sysrq triggered crash" in text


def test_report_without_vmcoreinfo_degrades() -> None:
    dump = synthetic_dump(vmcoreinfo="", ncpus=1)
    r = build_report(dump)
    j = r.to_json()
    for name in ("kernel", "backtrace", "log", "modules", "symbols", "log_call_trace"):
        assert "unavailable" in j[name], name
    assert render(r, "text")


def test_report_default_synthetic_dump() -> None:
    r = build_report(synthetic_dump())
    assert render(r, "markdown").startswith("# kdumpkit crash report")


def test_log_call_trace_parse() -> None:
    log = PrintkLog("lockless", [PrintkRecord(t, 0) for t in LOG])
    frames = log_call_trace(log)
    assert [f["function"] for f in frames] == ["dump_stack_lvl", "panic", "_printk", "sysrq_handle_crash"]
    assert frames[2]["reliable"] is False and frames[3]["module"] == "crashmod"


def test_signature_stable_and_distinct() -> None:
    a = crash_signature(["__crash_kexec", "panic", "sysrq_handle_crash"], "Kernel panic - not syncing: x at 0xffff1234")
    b = crash_signature(["__crash_kexec", "panic", "sysrq_handle_crash"], "Kernel panic - not syncing: x at 0xffff9999")
    c = crash_signature(["__crash_kexec", "panic", "oops_end", "page_fault_oops"], "Kernel panic - not syncing: Fatal exception")
    assert a == b and a != c
