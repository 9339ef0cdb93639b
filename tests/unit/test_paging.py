"""x86_64 translation on synthetic page tables: 4/5 levels, large pages, masks, faults."""

from __future__ import annotations

import struct

import pytest

from kdumpkit.errors import KernelError, TranslationError, UnsupportedError
from kdumpkit.kernel.memory import kernel_memory
from kdumpkit.kernel.paging import PageTableFault, PagingMode, walk
from kdumpkit.kernel.testing import P_NX, P_PAT_LARGE, PageTables, PhysMem, SparseDump, SyntheticKernel
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo
from kdumpkit.kernel.x86_64 import START_KERNEL_MAP, X86_64_4LEVEL, X86_64_5LEVEL, X86_64Memory

VMALLOC = 0xFFFF_C900_0000_0000


def _mem(k: SyntheticKernel, **kw: object) -> X86_64Memory:
    kw.setdefault("max_phys", 1 << 30)
    return X86_64Memory(k.mem.read, k.vmcoreinfo(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("levels", [4, 5])
def test_4k_2m_1g_pages(levels: int) -> None:
    direct = 0xFF11_0000_0000_0000 if levels == 5 else 0xFFFF_8880_0000_0000
    k = SyntheticKernel(levels=levels, direct_map=direct)
    k.pt.map(VMALLOC + 0x5000, 0x1234000)
    m = _mem(k)
    assert m.mode is (X86_64_5LEVEL if levels == 5 else X86_64_4LEVEL)
    t = m.vtop(VMALLOC + 0x5123)
    assert (t.pa, t.page_size, len(t.steps)) == (0x1234123, 4096, levels)
    assert [s.level for s in t.steps][-2:] == ["PMD", "PTE"]
    t2 = m.vtop(k.TEXT_VA + 0x20_1234)  # 2 MiB text page
    assert (t2.pa, t2.page_size, len(t2.steps)) == (k.text_pa + 0x20_1234, 1 << 21, levels - 1)
    t3 = m.vtop(direct + 0x3456_7890)  # 1 GiB direct-map page
    assert (t3.pa, t3.page_size, t3.steps[-1].level) == (0x3456_7890, 1 << 30, "PUD")
    # each step records the entry's physical address and raw value
    assert t.steps[0].entry_addr == m.root + ((VMALLOC >> m.mode.shift(0)) & 511) * 8
    assert struct.unpack("<Q", k.mem.read(t.steps[-1].entry_addr, 8))[0] == t.steps[-1].entry


def test_root_translated_without_walking_and_phys_base() -> None:
    k = SyntheticKernel(phys_base=0x5600_0000)
    m = _mem(k)
    assert m.phys_base == 0x5600_0000
    assert m.root == k.root_va - START_KERNEL_MAP + 0x5600_0000
    assert m.to_phys(k.TEXT_VA) == k.text_pa


def test_direct_map_base_derived_from_mem_section() -> None:
    k = SyntheticKernel(direct_map=0xFFFF_A1B2_C000_0000)
    m = _mem(k)
    assert m.direct_map_base == 0xFFFF_A1B2_C000_0000
    assert m.region(0xFFFF_A1B2_C000_1000) == "direct map"
    assert m.to_phys(0xFFFF_A1B2_C000_1000) == 0x1000


def test_direct_map_base_from_dump_hook() -> None:
    k = SyntheticKernel()
    m = kernel_memory(k.dump(with_direct_map_hook=True))
    assert isinstance(m, X86_64Memory)
    assert m.direct_map_base == k.direct_map
    assert m._direct_map_tried


def test_no_direct_map_candidate_falls_back_to_walk() -> None:
    k = SyntheticKernel()
    del k.symbols["mem_section"]
    m = _mem(k)
    assert m.direct_map_base is None
    assert m.to_phys(k.direct_map + 0x4242) == 0x4242  # via the page tables


def test_large_page_drops_pat_nx_and_sme() -> None:
    sme = 1 << 47
    k = SyntheticKernel(sme_mask=sme)
    k.pt.map(VMALLOC, 0x4000_0000, 1 << 21, extra=P_PAT_LARGE | P_NX | sme)
    k.pt.map(VMALLOC + (1 << 30), 0x8000_0000, 1 << 30, extra=P_PAT_LARGE | P_NX | sme)
    k.pt.map(VMALLOC + (2 << 30), 0x1235000, extra=P_NX | sme)
    m = _mem(k)
    assert m.sme_mask == sme
    assert m.vtop(VMALLOC + 0x1F_FFFF).pa == 0x4000_0000 + 0x1F_FFFF
    assert m.vtop(VMALLOC + (1 << 30) + 0x1234).pa == 0x8000_1234
    assert m.vtop(VMALLOC + (2 << 30) + 8).pa == 0x1235008


def test_not_present_raises_translation_error_with_steps() -> None:
    k = SyntheticKernel()
    m = _mem(k)
    with pytest.raises(TranslationError) as ei:
        m.vtop(VMALLOC + 0x10_0000_0000)
    assert isinstance(ei.value, PageTableFault)
    assert ei.value.steps and "not present" in str(ei.value)


def test_non_canonical_address() -> None:
    k = SyntheticKernel()
    with pytest.raises(TranslationError, match="canonical"):
        _mem(k).vtop(0x0000_8000_0000_0000)
    with pytest.raises(TranslationError, match="canonical"):
        _mem(k).vtop(-1)


def test_corrupt_entry_pointing_outside_ram_is_clear_error() -> None:
    k = SyntheticKernel()
    k.pt.map(VMALLOC, 0x1000)
    m = _mem(k)
    pmd = m.vtop(VMALLOC).steps[-2]
    k.mem.write_u64(pmd.entry_addr, 0x7_0000_0000_0063)  # a table far outside RAM
    dump = k.dump()
    m2 = X86_64Memory(dump.read, k.vmcoreinfo())
    with pytest.raises(TranslationError, match="unreadable"):
        m2.vtop(VMALLOC)


def test_read_virt_spans_pages_and_mappings() -> None:
    k = SyntheticKernel()
    k.mem.write(0x50_0000, b"A" * 4096)
    k.mem.write(0x90_0000, b"B" * 4096)
    k.pt.map(VMALLOC, 0x50_0000)
    k.pt.map(VMALLOC + 0x1000, 0x90_0000)  # virtually contiguous, physically not
    m = _mem(k)
    assert m.read_virt(VMALLOC + 4090, 12) == b"A" * 6 + b"B" * 6
    k.write_ulong(k.variable("answer"), 42)
    assert m.read_u64(k.symbols["answer"]) == 42


def test_missing_root_symbol() -> None:
    info = VmcoreInfo.from_text(b"OSRELEASE=6.1\nNUMBER(phys_base)=0\n")
    with pytest.raises(KernelError, match="init_top_pgt"):
        X86_64Memory(PhysMem().read, info)


def test_unsupported_arch() -> None:
    k = SyntheticKernel()
    d = SparseDump(k.mem, notes=k.dump().notes(), arch="aarch64")
    with pytest.raises(UnsupportedError):
        kernel_memory(d)


def test_phys_base_absent_is_noted() -> None:
    k = SyntheticKernel(phys_base=0)
    text = k.vmcoreinfo_text().replace(b"NUMBER(phys_base)=0\n", b"")
    m = X86_64Memory(k.mem.read, VmcoreInfo.from_text(text))
    assert m.phys_base == 0 and m.notes


def test_paging_mode_is_data() -> None:
    """Another paging form is another table row: a 3-level, 4 KiB, 39-bit mode."""
    mode = PagingMode("sv39-like", ("L2", "L1", "L0"), (9, 9, 9), 12, frozenset({"L2", "L1"}),
                      addr_mask=0x003F_FFFF_FFFF_F000)
    assert mode.va_bits == 39 and mode.is_canonical(0xFFFF_FFC0_0000_0000)
    mem = PhysMem()
    pt = PageTables(mem, 0x1000, alloc_base=0x10000, levels=3)
    pt.map(0x4000_1000, 0x777000)
    assert walk(mode, 0x1000, 0x4000_1abc, mem.read).pa == 0x777ABC


def test_translation_to_dict() -> None:
    k = SyntheticKernel()
    d = _mem(k).vtop(k.TEXT_VA).to_dict()
    assert d["physical"] == hex(k.text_pa) and len(d["levels"]) == 3  # type: ignore[arg-type]
