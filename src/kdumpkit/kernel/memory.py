"""Kernel virtual memory on top of a dump's physical memory.

:class:`KernelMemory` is what the helper modules (``printk``, ``facts`` …)
read through: ``read_virt``, integer readers, ``vtop``.  Each architecture
supplies ``to_phys`` (fast linear maps where they are known, page tables
otherwise) and ``vtop`` (always the page-table walk, for diagnostics).
:func:`kernel_memory` picks the architecture from the dump.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from kdumpkit.errors import KdumpkitError, UnsupportedError
from kdumpkit.kernel.paging import ReadPhys, Translation
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

if TYPE_CHECKING:
    from kdumpkit.dump.base import Dump

__all__ = ["KernelMemory", "kernel_memory"]


class KernelMemory(ABC):
    """Read the crashed kernel's virtual address space."""

    arch: str
    page_size: int
    byteorder: str
    pointer_size: int

    def __init__(self, read_phys: ReadPhys, vmcoreinfo: VmcoreInfo) -> None:
        self.read_phys = read_phys
        self.vmcoreinfo = vmcoreinfo
        self.notes: list[str] = []
        """Assumptions made while setting up (e.g. a defaulted phys_base)."""
        self.source_path: str | None = None
        """The dump file this memory comes from (symbols look for a ``kallsyms.gz`` beside it)."""

    @abstractmethod
    def to_phys(self, va: int) -> int:
        """Physical address of ``va``; raises :class:`TranslationError`."""

    @abstractmethod
    def vtop(self, va: int) -> Translation:
        """Walk the kernel page tables for ``va``, recording each level."""

    def read_virt(self, va: int, length: int) -> bytes:
        """``length`` bytes at kernel virtual ``va``, translated page by page."""
        out = bytearray()
        ps = self.page_size
        addr = va
        end = va + length
        while addr < end:
            n = min(ps - (addr % ps), end - addr)
            out += self.read_phys(self.to_phys(addr), n)
            addr += n
        return bytes(out)

    def _int(self, va: int, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.read_virt(va, size), "little" if self.byteorder == "little" else "big", signed=signed)

    def read_u8(self, va: int) -> int:
        return self._int(va, 1)

    def read_u16(self, va: int) -> int:
        return self._int(va, 2)

    def read_u32(self, va: int) -> int:
        return self._int(va, 4)

    def read_s32(self, va: int) -> int:
        return self._int(va, 4, signed=True)

    def read_u64(self, va: int) -> int:
        return self._int(va, 8)

    def read_ulong(self, va: int) -> int:
        return self._int(va, self.pointer_size)

    read_pointer = read_ulong


def kernel_memory(dump: Dump, vmcoreinfo: VmcoreInfo | None = None) -> KernelMemory:
    """The kernel address space of a dump, for the dump's architecture."""
    info = vmcoreinfo if vmcoreinfo is not None else VmcoreInfo.from_dump(dump)
    arch = getattr(dump, "arch", "")
    if arch == "x86_64":
        from kdumpkit.kernel.x86_64 import X86_64Memory

        base_fn = getattr(dump, "direct_map_base", None)
        base: int | None = None
        if callable(base_fn):
            try:
                b = base_fn()
            except KdumpkitError:  # an optional hook must never break opening the kernel
                b = None
            base = b if isinstance(b, int) else None
        mem = X86_64Memory(lambda pa, n: dump.read(pa, n), info, direct_map_base=base, page_size=dump.page_size,
                           max_phys=dump.max_pfn * dump.page_size)
        path = getattr(dump, "path", None)
        mem.source_path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
        return mem
    raise UnsupportedError(f"kernel address translation for {arch or 'unknown architecture'}")
