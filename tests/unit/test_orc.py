"""ORC entry layouts and an ORC walk over a synthetic stack."""

from __future__ import annotations

import struct

from kdumpkit.kernel.memory import kernel_memory
from kdumpkit.kernel.orc import decode_orc_entry
from kdumpkit.kernel.stack import unwind_x86_64
from kdumpkit.kernel.symbols import SymbolTable
from kdumpkit.kernel.testing import SyntheticKernel

TEXT = SyntheticKernel.TEXT_VA
A, B, C = TEXT + 0x1000, TEXT + 0x1100, TEXT + 0x1200
SP, CALL_OLD, END_OLD = 5, 0, 1 << 10


def test_layouts() -> None:
    e = decode_orc_entry(16, -16, 5 | (1 << 4), "old")
    assert (e.sp_reg, e.bp_reg, e.type) == ("sp", "prev_sp", "call")
    assert decode_orc_entry(0, 0, 1 << 10, "old").type == "end"
    assert decode_orc_entry(0, 0, 1 << 11, "old-signal").type == "end"
    assert decode_orc_entry(0, 0, 1 << 10, "old-signal").signal
    assert decode_orc_entry(8, 0, 5 | (2 << 8), "v6.4").type == "call"
    assert decode_orc_entry(8, 0, 5 | (3 << 8), "v6.4").type == "regs"
    assert decode_orc_entry(0, 0, 1 << 8, "v6.4").type == "end"
    assert decode_orc_entry(0, 0, 0, "v6.4").type == "undefined"


def _kernel(entries: list[tuple[int, int, int, int]]) -> tuple[SyntheticKernel, SymbolTable, int]:
    """ORC tables (ip, sp_offset, bp_offset, bits) and a stack; returns kernel, symbols, stack pointer."""
    k = SyntheticKernel()
    n = len(entries)
    ips = k._text_alloc(4 * n, align=4)
    orcs = k._text_alloc(6 * n, align=4)
    for i, (ip, spo, bpo, bits) in enumerate(entries):
        k.write_virt(ips + 4 * i, struct.pack("<i", ip - (ips + 4 * i)))
        k.write_virt(orcs + 6 * i, struct.pack("<hhH", spo, bpo, bits))
    stack = k.kmalloc(16 << 10, align=16 << 10)
    sp = stack + 0x3000
    k.write_virt(sp + 8, struct.pack("<Q", B + 0x20))   # A's frame: push + return into B
    k.write_virt(sp + 16, struct.pack("<Q", C + 0x30))  # B's frame: return into C
    rows = [("A", A, "T", None), ("B", B, "T", None), ("C", C, "T", None), ("D", TEXT + 0x1300, "T", None),
            ("__start_orc_unwind_ip", ips, "D", None), ("__stop_orc_unwind_ip", ips + 4 * n, "D", None),
            ("__start_orc_unwind", orcs, "D", None), ("__stop_orc_unwind", orcs + 6 * n, "D", None)]
    return k, SymbolTable(rows, "test"), sp


def test_orc_walk() -> None:
    k, st, sp = _kernel([(A, 16, 0, SP | CALL_OLD), (B, 8, 0, SP), (C, 0, 0, END_OLD), (TEXT + 0x1300, 8, 0, SP)])
    bt = unwind_x86_64(kernel_memory(k.dump()), st, {"rip": A + 0x10, "rsp": sp, "rbp": 0})
    assert bt.method == "orc"
    assert [f.format() for f in bt.frames] == ["A+0x10/0x100", "B+0x20/0x100", "C+0x30/0x100"]
    assert all(f.reliable for f in bt.frames)


def test_undefined_entry_resyncs_by_scan() -> None:
    k, st, sp = _kernel([(A, 0, 0, 0), (B, 8, 0, SP), (C, 0, 0, END_OLD), (TEXT + 0x1300, 8, 0, SP)])
    bt = unwind_x86_64(kernel_memory(k.dump()), st, {"rip": A + 0x10, "rsp": sp, "rbp": 0})
    assert [f.function for f in bt.frames] == ["A", "B", "C"]
    assert not bt.frames[1].reliable and any("resumed" in p for p in bt.problems)


def test_corrupt_stack_never_raises() -> None:
    k, st, _sp = _kernel([(A, 16, 0, SP), (B, 8, 0, SP), (C, 0, 0, END_OLD), (TEXT + 0x1300, 8, 0, SP)])
    bt = unwind_x86_64(kernel_memory(k.dump()), st, {"rip": A + 0x10, "rsp": 0xFFFF_C900_DEAD_0000, "rbp": 1})
    assert bt.frames and bt.problems
    bt = unwind_x86_64(kernel_memory(k.dump()), st, {})
    assert bt.method == "none" and not bt.frames
