"""x86_64 kernel address translation from VMCOREINFO alone.

Three regions matter without vmlinux (formats.md §6):

* kernel text/data at ``__START_KERNEL_map``: ``pa = va - 0xffffffff80000000
  + phys_base``; every ``SYMBOL()`` (already KASLR-relocated) lives here, so
  the page-table root itself is translated this way, never by walking;
* the direct map at ``page_offset_base`` (randomized since 4.8 by
  CONFIG_RANDOMIZE_MEMORY): ``pa = va - page_offset_base``.  The base comes
  from the dump when it knows it (ELF ``p_vaddr - p_paddr``); otherwise it is
  derived by walking the page tables for a pointer VMCOREINFO guarantees to be
  in the direct map (``mem_section``'s root array, or ``node_data[0]``);
* everything else (vmalloc, vmemmap, modules) through the 4- or 5-level
  page-table walk from ``init_top_pgt``.
"""

from __future__ import annotations

from kdumpkit.errors import KdumpkitError, KernelError, TranslationError
from kdumpkit.kernel.memory import KernelMemory
from kdumpkit.kernel.paging import PagingMode, ReadPhys, Translation, walk
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

__all__ = [
    "START_KERNEL_MAP",
    "X86_64_4LEVEL",
    "X86_64_5LEVEL",
    "X86_64Memory",
]

START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
"""``__START_KERNEL_map``: virtual base of the kernel image mapping."""

# Bits 52-62 are software bits and bit 63 is NX: none is an address bit.
_ADDR_MASK = 0x000F_FFFF_FFFF_F000

X86_64_4LEVEL = PagingMode(
    name="x86_64 4-level",
    level_names=("PGD", "PUD", "PMD", "PTE"),
    level_bits=(9, 9, 9, 9),
    page_shift=12,
    large_levels=frozenset({"PUD", "PMD"}),
    addr_mask=_ADDR_MASK,
)

X86_64_5LEVEL = PagingMode(
    name="x86_64 5-level",
    level_names=("PGD", "P4D", "PUD", "PMD", "PTE"),
    level_bits=(9, 9, 9, 9, 9),
    page_shift=12,
    large_levels=frozenset({"PUD", "PMD"}),
    addr_mask=_ADDR_MASK,
)

_GIB = 1 << 30
# Size of the direct-map region (max physical memory it can cover).
_DIRECT_MAP_SPAN = {4: 1 << 46, 5: 1 << 52}
_DEFAULT_KERNEL_IMAGE_SIZE = 1 << 30  # with KASLR; 512 MiB without, and modules follow


class X86_64Memory(KernelMemory):
    """The x86_64 kernel address space of one crashed kernel."""

    arch = "x86_64"
    byteorder = "little"
    pointer_size = 8

    def __init__(
        self,
        read_phys: ReadPhys,
        vmcoreinfo: VmcoreInfo,
        *,
        direct_map_base: int | None = None,
        phys_base: int | None = None,
        page_size: int | None = None,
        max_phys: int | None = None,
    ) -> None:
        super().__init__(read_phys, vmcoreinfo)
        info = vmcoreinfo
        self.page_size = page_size or info.page_size or 4096
        if phys_base is None:
            phys_base = info.number("phys_base")  # decimal value, >= 4.10
        if phys_base is None:
            # Before 4.10 only SYMBOL(phys_base) (an address) was exported;
            # reading it needs phys_base itself.  Non-relocated kernels use 0.
            phys_base = 0
            self.notes.append("NUMBER(phys_base) absent: assuming phys_base = 0")
        self.phys_base: int = phys_base
        self.mode = X86_64_5LEVEL if info.number("pgtable_l5_enabled") == 1 else X86_64_4LEVEL
        # AMD SME sets the encryption bit in page-table entries; it is not an address bit.
        self.sme_mask: int = (info.number("sme_mask") or 0) & ((1 << 64) - 1)
        self.kernel_image_size: int = info.number("KERNEL_IMAGE_SIZE") or _DEFAULT_KERNEL_IMAGE_SIZE
        root_va = None
        for name in ("init_top_pgt", "swapper_pg_dir", "init_level4_pgt"):
            root_va = info.symbol(name)
            if root_va:
                break
        if not root_va:
            raise KernelError("VMCOREINFO has no SYMBOL(init_top_pgt) or SYMBOL(swapper_pg_dir): cannot walk page tables")
        if not self.is_kernel_text(root_va):
            raise KernelError(f"page-table root {root_va:#x} is outside the kernel image mapping")
        self.root_va: int = root_va
        self.root: int = self._text_to_phys(root_va)
        self._direct_map_base: int | None = direct_map_base
        # The direct map covers RAM only; vmalloc may start right after it
        # (KASLR), so without the top of RAM the linear rule is not used.
        self.max_phys: int | None = max_phys
        self._direct_map_tried = direct_map_base is not None
        self._vmemmap_base: int | None = None
        self._vmemmap_tried = False

    # -- linear regions -----------------------------------------------------
    def is_kernel_text(self, va: int) -> bool:
        return START_KERNEL_MAP <= va < START_KERNEL_MAP + self.kernel_image_size

    def _text_to_phys(self, va: int) -> int:
        return va - START_KERNEL_MAP + self.phys_base

    @property
    def direct_map_base(self) -> int | None:
        """``page_offset_base``: from the dump, else derived once by a page-table walk."""
        if not self._direct_map_tried:
            self._direct_map_tried = True
            self._direct_map_base = self._derive_direct_map_base()
        return self._direct_map_base

    def _direct_map_candidates(self) -> list[int]:
        """Pointers VMCOREINFO promises are in the direct map (memblock allocations)."""
        info = self.vmcoreinfo
        out: list[int] = []
        ms = info.symbol("mem_section")  # SYMBOL_ARRAY: the root array's address (SPARSEMEM_EXTREME)
        if ms and not self.is_kernel_text(ms):
            out.append(ms)
        nd = info.symbol("node_data")  # &node_data[0] in .data; node_data[0] points to memblock memory
        if nd and self.is_kernel_text(nd):
            try:
                p = int.from_bytes(self.read_phys(self._text_to_phys(nd), 8), "little")
                if p:
                    out.append(p)
            except KdumpkitError:
                pass
        return out

    def _derive_direct_map_base(self) -> int | None:
        for va in self._direct_map_candidates():
            try:
                t = walk(self.mode, self.root, va, self.read_phys, clear_mask=self.sme_mask)
            except TranslationError:
                continue
            base = va - t.pa
            # page_offset_base is randomized in PUD (1 GiB) steps.
            if base % _GIB == 0 and base >> 63:
                return base
        return None

    @property
    def vmemmap_base(self) -> int | None:
        """Virtual address of ``struct page`` for pfn 0 (SPARSEMEM_VMEMMAP)."""
        if not self._vmemmap_tried:
            self._vmemmap_tried = True
            self._vmemmap_base = self._derive_vmemmap_base()
        return self._vmemmap_base

    def _derive_vmemmap_base(self) -> int | None:
        info = self.vmcoreinfo
        v = info.symbol("vmemmap")  # ~6.10+: SYMBOL_ARRAY prints the value
        if v:
            return v
        # mem_section[0][0].section_mem_map encodes mem_map - start_pfn(0) = vmemmap_base
        # plus flag bits in the low bits (page aligned, so clearing 12 bits is enough).
        root = info.symbol("mem_section")
        off = info.offset("mem_section.section_mem_map")
        if not root or off is None:
            return None
        try:
            first = self.read_ulong(root)
            if not first:
                return None
            enc = self.read_ulong(first + off)
        except KdumpkitError:
            return None
        base = enc & ~0xFFF
        return base if base >> 63 else None

    # -- translation --------------------------------------------------------
    def to_phys(self, va: int) -> int:
        if self.is_kernel_text(va):
            return self._text_to_phys(va)
        if self._in_direct_map(va):
            return va - (self.direct_map_base or 0)
        return self.vtop(va).pa

    def _in_direct_map(self, va: int) -> bool:
        base = self.direct_map_base
        if base is None or self.max_phys is None:
            return False
        return base <= va < base + min(self.max_phys, _DIRECT_MAP_SPAN[self.mode.levels])

    def vtop(self, va: int) -> Translation:
        return walk(self.mode, self.root, va, self.read_phys, clear_mask=self.sme_mask)

    def region(self, va: int) -> str:
        """Which linear rule (if any) applies to ``va``: for ``vtop`` output."""
        if self.is_kernel_text(va):
            return "kernel text"
        if self._in_direct_map(va):
            return "direct map"
        return "page tables"
