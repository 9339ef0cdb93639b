"""Page-table walks, described as data.

A paging mode is a table (levels, index bits, which levels may map a large
page, entry masks), the idea of volatility's ``Intel._structure`` and
libkdumpfile's ``paging_form``: one generic walker serves x86_64 4- and
5-level paging, and another architecture is another :class:`PagingMode` row
(plus, where its descriptors are not "present bit + large bit + frame mask",
an override of :meth:`PagingMode.decode`).

The walker sees only a ``read_phys(paddr, n) -> bytes`` function, never a
dump file, so address translation stays independent of file formats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kdumpkit.errors import KdumpkitError, TranslationError

__all__ = [
    "PageTableFault",
    "PagingMode",
    "PagingStep",
    "ReadPhys",
    "Translation",
    "walk",
]

ReadPhys = Callable[[int, int], bytes]
"""``read_phys(paddr, length) -> bytes``; raises a kdumpkit error when unreadable."""


@dataclass(frozen=True)
class PagingMode:
    """One paging form: everything a generic walker needs to know."""

    name: str
    level_names: tuple[str, ...]
    """Names of the table levels, top (root) first, e.g. ``("PGD", "PUD", "PMD", "PTE")``."""
    level_bits: tuple[int, ...]
    """Index bits each level consumes, top first."""
    page_shift: int
    """log2 of the base page size."""
    large_levels: frozenset[str]
    """Levels whose entry may map a page directly (x86_64: PUD = 1 GiB, PMD = 2 MiB)."""
    entry_size: int = 8
    present_mask: int = 1
    large_mask: int = 1 << 7
    """Bit that makes an entry at a large level a leaf (x86 PSE)."""
    addr_mask: int = 0x000F_FFFF_FFFF_F000
    """Bits of an entry that hold the next table's or the page's physical address."""
    byteorder: str = "little"
    sign_extend: bool = True
    """Virtual addresses must be canonical (bits above ``va_bits`` copy the top bit)."""

    @property
    def va_bits(self) -> int:
        return self.page_shift + sum(self.level_bits)

    @property
    def levels(self) -> int:
        return len(self.level_names)

    def shift(self, level: int) -> int:
        """Lowest virtual-address bit that indexes table ``level`` (0 = root)."""
        return self.page_shift + sum(self.level_bits[level + 1:])

    def index(self, va: int, level: int) -> int:
        return (va >> self.shift(level)) & ((1 << self.level_bits[level]) - 1)

    def is_canonical(self, va: int) -> bool:
        if va < 0 or va >= 1 << 64:
            return False
        if not self.sign_extend:
            return va < 1 << self.va_bits
        top = va >> (self.va_bits - 1)
        return top == 0 or top == (1 << (65 - self.va_bits)) - 1

    def decode(self, entry: int, level: int, clear_mask: int = 0) -> tuple[bool, bool, int]:
        """``(present, leaf, address)`` of one entry.

        ``clear_mask`` holds bits that are set in entries but are not address
        bits (AMD SME's encryption bit).  For a large page the address is
        masked with the page size, which also drops the x86 PAT bit (bit 12).
        """
        if not entry & self.present_mask:
            return False, False, 0
        addr = entry & self.addr_mask & ~clear_mask
        last = level == self.levels - 1
        if last:
            return True, True, addr
        if self.level_names[level] in self.large_levels and entry & self.large_mask:
            size = 1 << self.shift(level)
            return True, True, addr & ~(size - 1)
        return True, False, addr


@dataclass(frozen=True)
class PagingStep:
    """One table entry visited by a walk (what crash's ``vtop`` prints per level)."""

    level: str
    entry_addr: int
    """Physical address of the entry."""
    entry: int
    """Raw entry value."""


@dataclass(frozen=True)
class Translation:
    """A virtual address, where it lands, and how it got there."""

    va: int
    pa: int
    page_size: int
    root: int
    """Physical address of the top-level table."""
    mode: str
    steps: tuple[PagingStep, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "virtual": f"{self.va:#x}",
            "physical": f"{self.pa:#x}",
            "page_size": self.page_size,
            "root": f"{self.root:#x}",
            "mode": self.mode,
            "levels": [
                {"level": s.level, "entry_address": f"{s.entry_addr:#x}", "entry": f"{s.entry:#x}"}
                for s in self.steps
            ],
        }


class PageTableFault(TranslationError):
    """The walk stopped: an entry is not present or a table is unreadable."""

    def __init__(self, va: int, reason: str, steps: tuple[PagingStep, ...] = ()) -> None:
        super().__init__(f"{va:#x}: {reason}")
        self.va = va
        self.reason = reason
        self.steps = steps


def walk(mode: PagingMode, root: int, va: int, read_phys: ReadPhys, *, clear_mask: int = 0) -> Translation:
    """Translate ``va`` by walking the tables from physical ``root``.

    Raises :class:`PageTableFault` (a :class:`TranslationError`) for a
    non-canonical address, a non-present entry, or a table page the dump
    does not hold; the steps walked so far ride along for diagnostics.
    """
    if not mode.is_canonical(va):
        raise PageTableFault(va, f"not a canonical {mode.va_bits}-bit address")
    steps: list[PagingStep] = []
    table = root
    for level in range(mode.levels):
        name = mode.level_names[level]
        entry_addr = table + mode.index(va, level) * mode.entry_size
        try:
            raw = read_phys(entry_addr, mode.entry_size)
        except KdumpkitError as e:
            raise PageTableFault(va, f"{name} entry at {entry_addr:#x} unreadable: {e}", tuple(steps)) from None
        if len(raw) != mode.entry_size:
            raise PageTableFault(va, f"{name} entry at {entry_addr:#x}: short read", tuple(steps))
        entry = int.from_bytes(raw, "little" if mode.byteorder == "little" else "big")
        steps.append(PagingStep(name, entry_addr, entry))
        present, leaf, addr = mode.decode(entry, level, clear_mask)
        if not present:
            raise PageTableFault(va, f"{name} entry {entry:#x} at {entry_addr:#x} not present", tuple(steps))
        if leaf:
            size = 1 << mode.shift(level)
            return Translation(va, addr + (va & (size - 1)), size, root, mode.name, tuple(steps))
        table = addr
    raise AssertionError("unreachable: the last level is always a leaf")  # pragma: no cover
