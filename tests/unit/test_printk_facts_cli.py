"""Crash facts and the dmesg/vtop commands on a synthetic kernel written as a real ELF file."""

from __future__ import annotations

import json
import pathlib

import pytest

from kdumpkit.cli.main import main
from kdumpkit.dump.base import Note
from kdumpkit.kernel.facts import X86_64_PRSTATUS_REGS, crash_facts
from kdumpkit.kernel.printk import format_makedumpfile
from kdumpkit.kernel.testing import PhysMem, SparseDump, SyntheticKernel, SynthRecord, prstatus_x86_64

PANIC_LOG = [
    SynthRecord(b"Linux version 6.1.0-synthetic", ts_nsec=0, level=5),
    SynthRecord(b"sysrq: Trigger a crash", ts_nsec=50_000_000_000, level=6, caller_id=4321),
    SynthRecord(b"Kernel panic - not syncing: sysrq triggered crash", ts_nsec=50_000_100_000, level=0, caller_id=4321),
    SynthRecord(b"CPU: 1 PID: 4321 Comm: bash Not tainted 6.1.0-synthetic #1", ts_nsec=50_000_200_000, level=4,
                caller_id=4321),
    SynthRecord(b"Call Trace:\n <TASK>\n dump_stack_lvl+0x44/0x5c", ts_nsec=50_000_300_000, level=4, caller_id=4321),
]


def _kernel() -> SyntheticKernel:
    k = SyntheticKernel()
    k.lockless_log(PANIC_LOG)
    return k


def _notes() -> list[Note]:
    regs0 = [0] * 27
    regs1 = list(range(100, 127))
    return [prstatus_x86_64(0, regs0), prstatus_x86_64(4321, regs1)]


def test_crash_facts_complete() -> None:
    f = crash_facts(_kernel().dump(notes=_notes()))
    assert f.release == "6.1.0-synthetic" and f.build_id == "ab" * 20
    assert f.crashtime == 1700000000 and f.crash_time == "2023-11-14 22:13:20 UTC"
    assert f.panic_message == "Kernel panic - not syncing: sysrq triggered crash"
    assert (f.crashing_cpu, f.crashing_pid, f.crashing_comm) == (1, 4321, "bash")
    assert f.registers["rip"] == 100 + X86_64_PRSTATUS_REGS.index("rip")
    assert f.cpus == 2 and f.log_format == "lockless" and f.missing == []
    j = f.to_json()
    json.dumps(j)
    assert j["registers"]["r15"] == "0x0000000000000064"


def test_crash_facts_oops_without_panic_uses_cpu_line_before() -> None:
    k = SyntheticKernel()
    k.lockless_log([
        SynthRecord(b"BUG: kernel NULL pointer dereference, address: 0000000000000000", ts_nsec=1),
        SynthRecord(b"CPU: 0 PID: 1 Comm: init Not tainted", ts_nsec=2),
        SynthRecord(b"RIP: 0010:foo+0x1/0x2", ts_nsec=3),
    ])
    f = crash_facts(k.dump(notes=_notes()))
    assert f.panic_message and f.panic_message.startswith("BUG: kernel NULL")
    assert f.crashing_cpu == 0 and f.crashing_pid == 1  # pid 1 not in notes -> by CPU index
    assert f.registers["rip"] == 0


def test_crash_facts_never_raise() -> None:
    f = crash_facts(SparseDump(PhysMem()))
    assert "VMCOREINFO" in f.missing and f.release is None and f.cpus == 0
    k = SyntheticKernel()  # VMCOREINFO but no log symbols, no notes
    f2 = crash_facts(k.dump())
    assert f2.release == "6.1.0-synthetic"
    assert any(m.startswith("kernel log") for m in f2.missing)
    assert any("registers" in m for m in f2.missing)
    f3 = crash_facts(SparseDump(k.mem, notes=k.dump(notes=_notes()).notes(), arch="aarch64"))
    assert any("aarch64" in m for m in f3.missing)


@pytest.fixture
def elf_dump(tmp_path: pathlib.Path) -> pathlib.Path:
    from kdumpkit.dump.elf import write_elf
    from kdumpkit.dump.sink import FileSink

    k = _kernel()
    path = tmp_path / "vmcore"
    sink = FileSink(str(path))
    try:
        write_elf(k.dump(notes=_notes(), with_direct_map_hook=True), sink)
    finally:
        sink.close()
    return path


def test_cli_dmesg_formats(elf_dump: pathlib.Path, tmp_path: pathlib.Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    out = tmp_path / "dmesg.txt"
    assert main(["dmesg", str(elf_dump), "-o", str(out)]) == 0
    expected = format_makedumpfile([_r(r) for r in PANIC_LOG])
    assert out.read_bytes() == expected
    assert b"[   50.000300] Call Trace:\n                <TASK>\n" in expected
    assert main(["dmesg", str(elf_dump), "--format", "plain"]) == 0
    assert b"[   50.000100] Kernel panic - not syncing" in capsysbinary.readouterr().out
    assert main(["dmesg", str(elf_dump), "--format", "json"]) == 0
    j = json.loads(capsysbinary.readouterr().out)
    assert j["format"] == "lockless" and j["records"][1]["caller"] == "T4321"


def _r(s: SynthRecord) -> object:
    from kdumpkit.kernel.printk import PrintkRecord

    return PrintkRecord(s.text, s.ts_nsec)


def test_cli_vtop(elf_dump: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vtop", str(elf_dump), "prb"]) == 0
    text = capsys.readouterr().out
    assert "PMD:" in text and "(2MB)" in text and "kernel text" in text
    assert main(["vtop", str(elf_dump), "--json", "ffff9a4c40001000"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["physical"] == "0x1000" and d["page_size"] == 1 << 30 and d["region"] == "direct map"


def test_cli_errors_are_one_line(elf_dump: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vtop", str(elf_dump), "no_such_symbol"]) == 2
    assert main(["vtop", str(elf_dump), "ffffc90000000000"]) == 1
    err = capsys.readouterr().err
    assert "not present" in err and "Traceback" not in err
