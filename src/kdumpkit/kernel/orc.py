"""x86_64 ORC unwind tables of the crashed kernel (vmlinux only; modules are not read).

Why: Debian kernels are built with CONFIG_UNWINDER_ORC and without frame
pointers, so the only exact way to walk a stack without debuginfo is the
kernel's own ORC data, which lives in the dump: ``__start_orc_unwind_ip`` (s32
self-relative code addresses, sorted) and ``__start_orc_unwind`` (6-byte
``struct orc_entry``), both found through the symbol table.

``struct orc_entry`` is ``s16 sp_offset; s16 bp_offset;`` then a u16 of bit
fields (little-endian) whose layout changed:

* up to v6.3: ``sp_reg:4, bp_reg:4, type:2, [signal:1,] end:1`` with types
  CALL=0, REGS=1, REGS_PARTIAL=2 (``signal`` appeared in v5.19/6.0-era
  kernels, shifting ``end`` up a bit — told apart from the table itself);
* v6.4+ (objtool "ORC_TYPE_END_OF_STACK"): ``sp_reg:4, bp_reg:4, type:3,
  signal:1`` with UNDEFINED=0, END_OF_STACK=1, CALL=2, REGS=3, REGS_PARTIAL=4.

Types are normalized to strings so the unwinder does not care.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdumpkit.errors import KdumpkitError, KernelError
from kdumpkit.kernel.memory import KernelMemory
from kdumpkit.kernel.symbols import SymbolTable

__all__ = ["ORC_REG_NAMES", "OrcEntry", "OrcTable", "decode_orc_entry"]

ORC_REG_NAMES = {0: "undefined", 1: "prev_sp", 2: "dx", 3: "di", 4: "bp", 5: "sp", 6: "r10", 7: "r13",
                 8: "bp_indirect", 9: "sp_indirect"}
_OLD_TYPES = {0: "call", 1: "regs", 2: "regs_partial"}
_NEW_TYPES = {0: "undefined", 1: "end", 2: "call", 3: "regs", 4: "regs_partial"}
_MAX_ENTRIES = 4_000_000


@dataclass(frozen=True)
class OrcEntry:
    sp_offset: int
    bp_offset: int
    sp_reg: str
    bp_reg: str
    type: str
    """``call``, ``regs``, ``regs_partial``, ``end`` (end of stack) or ``undefined``."""
    signal: bool = False


def decode_orc_entry(sp_offset: int, bp_offset: int, bits: int, layout: str) -> OrcEntry:
    """One entry; ``layout`` is ``v6.4`` or ``old`` / ``old-signal`` (pre-6.4, with or without ``signal``)."""
    sp_reg = ORC_REG_NAMES.get(bits & 0xF, "?")
    bp_reg = ORC_REG_NAMES.get((bits >> 4) & 0xF, "?")
    if layout == "v6.4":
        return OrcEntry(sp_offset, bp_offset, sp_reg, bp_reg, _NEW_TYPES.get((bits >> 8) & 7, "undefined"),
                        bool(bits >> 11 & 1))
    end_bit = 11 if layout == "old-signal" else 10
    signal = layout == "old-signal" and bool(bits >> 10 & 1)
    if bits >> end_bit & 1:
        kind = "end"
    elif sp_reg == "undefined":
        kind = "undefined"
    else:
        kind = _OLD_TYPES.get((bits >> 8) & 3, "undefined")
    return OrcEntry(sp_offset, bp_offset, sp_reg, bp_reg, kind, signal)


class OrcTable:
    """The vmlinux ORC table, read once (a few MiB) and searched with NumPy."""

    def __init__(self, ips: np.ndarray, entries: np.ndarray, layout: str) -> None:
        self.ips = ips
        self.entries = entries
        self.layout = layout

    @classmethod
    def from_kernel(cls, mem: KernelMemory, symbols: SymbolTable) -> OrcTable:
        start_ip = symbols.address_of("__start_orc_unwind_ip")
        stop_ip = symbols.address_of("__stop_orc_unwind_ip")
        start_orc = symbols.address_of("__start_orc_unwind")
        if not (start_ip and stop_ip and start_orc):
            raise KernelError("no ORC tables (__start_orc_unwind_ip/__start_orc_unwind not in the symbol table)")
        count = (stop_ip - start_ip) // 4
        if not 0 < count <= _MAX_ENTRIES:
            raise KernelError(f"ORC table of {count} entries is impossible")
        try:
            rel = np.frombuffer(mem.read_virt(start_ip, 4 * count), dtype="<i4").astype(np.int64)
            raw = np.frombuffer(mem.read_virt(start_orc, 6 * count), dtype=np.dtype(
                [("sp", "<i2"), ("bp", "<i2"), ("bits", "<u2")]))
        except KdumpkitError as e:
            raise KernelError(f"ORC tables unreadable: {e}") from None
        # Self-relative: entry i describes code at &ip[i] + ip[i]; keep the unsigned
        # 64-bit arithmetic in Python ints' range by working relative to start_ip.
        ips = rel + 4 * np.arange(count, dtype=np.int64)
        ver = mem.vmcoreinfo.kernel_version()
        if ver is not None and ver >= (6, 4):
            layout = "v6.4"
        else:
            layout = "old-signal" if (raw["bits"] >> 11 & 1).any() else "old"
        table = cls(ips, raw, layout)
        table.base = start_ip
        return table

    base: int = 0

    def find(self, ip: int) -> OrcEntry | None:
        """The entry covering ``ip`` (the last one at or below it), or None outside the table."""
        rel = ip - self.base
        i = int(np.searchsorted(self.ips, rel, side="right")) - 1
        if i < 0 or rel - int(self.ips[i]) > 1 << 20:
            return None
        e = self.entries[i]
        return decode_orc_entry(int(e["sp"]), int(e["bp"]), int(e["bits"]), self.layout)
