"""struct page lookup on synthetic kernels: SPARSEMEM (+EXTREME, +VMEMMAP) and FLATMEM.

:class:`Machine` builds a small x86_64 kernel image in memory (page tables,
direct map, ``mem_section`` or ``mem_map``, a vmemmap mapped with 2 MiB
pages, zones with vm_stat) whose VMCOREINFO points into it; test_filter
reuses it for end-to-end filtering.
"""

from __future__ import annotations

import struct

import pytest

from kdumpkit.kernel.memory import kernel_memory
from kdumpkit.kernel.mm import struct_page_map
from kdumpkit.kernel.testing import PAGE, SparseDump, SyntheticKernel

PAGE_KEYS = {
    "SIZE(page)": 64, "OFFSET(page.flags)": 0, "OFFSET(page._refcount)": 52, "OFFSET(page.mapping)": 24,
    "OFFSET(page.lru)": 8, "OFFSET(page._mapcount)": 48, "OFFSET(page.private)": 40,
    "OFFSET(page.compound_dtor)": 16, "OFFSET(page.compound_order)": 17, "OFFSET(page.compound_head)": 8,
    "LENGTH(zone.free_area)": 11, "NUMBER(NR_FREE_PAGES)": 0, "NUMBER(PG_lru)": 4, "NUMBER(PG_private)": 13,
    "NUMBER(PG_swapcache)": 10, "NUMBER(PG_swapbacked)": 19, "NUMBER(PG_slab)": 9, "NUMBER(PG_hwpoison)": 23,
    "NUMBER(PG_head_mask)": 65536, "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": -129, "NUMBER(HUGETLB_PAGE_DTOR)": 2,
    "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)": -257,
    "SIZE(zone)": 256, "OFFSET(zone.vm_stat)": 128, "OFFSET(pglist_data.node_zones)": 0,
    "OFFSET(pglist_data.nr_zones)": 2048, "SIZE(nodemask_t)": 8, "LENGTH(node_data)": 1,
}
VMEMMAP_VA = 0xFFFF_EA00_0000_0000
VMEMMAP_PA = 0x600_0000          # 4 MiB of struct pages (65536 pfns), two 2 MiB pages
RAM_START, RAM_PAGES = 0x4000, 4096   # the "user" RAM the tests classify (64 MiB .. 80 MiB)
SECTION_FLAGS = 0b101111         # present, has mem_map, online, early, + bit 5 (vmemmap preinit on new kernels)


class Machine:
    """A synthetic kernel with struct pages; ``model`` is vmemmap | sparse | static | flat."""

    def __init__(self, model: str = "vmemmap", *, free_kernel: int | None = None, nr_zones: int = 2) -> None:
        self.model = model
        k = self.k = SyntheticKernel(ram=1 << 30)
        for pfn in range(RAM_START, RAM_START + RAM_PAGES):  # RAM pages with some content
            k.mem.write(pfn * PAGE, struct.pack("<Q", pfn) * 8)
        k.keys.update({key: str(v) for key, v in PAGE_KEYS.items()})
        self.max_pfn = 0x800_0000 // PAGE + 64  # the heap (mem_section, node data) lies above
        if model == "vmemmap":
            k.pt.map_range(VMEMMAP_VA, VMEMMAP_PA, 4 << 20, 1 << 21)
            k.mem.write(VMEMMAP_PA, bytes(4 << 20))
            self._sections(VMEMMAP_VA, extreme=True, per_section_map=False)
        elif model == "sparse":
            self._sections(None, extreme=True, per_section_map=True)
        elif model == "static":
            self._sections(None, extreme=False, per_section_map=True)
        elif model == "flat":
            self.mem_map = k.kmalloc(65536 * 64, align=PAGE)
            var = k.variable("mem_map")
            k.write_ulong(var, self.mem_map)
            del k.symbols["mem_section"]
            k.symbols["mem_section_unused"] = 0
        # zones: node_data[0] -> pglist_data with nr_zones zones; NR_FREE_PAGES written by set_free_counter
        self.pgdat = k.kmalloc(4096)
        nd = k.variable("node_data")
        k.write_ulong(nd, self.pgdat)
        om = k.variable("node_online_map")
        k.write_ulong(om, 1)
        k.write_u32(self.pgdat + 2048, nr_zones)
        self.nr_zones = nr_zones
        if free_kernel is not None:
            self.set_free_counter(free_kernel)
        # default struct page for every pfn we will classify: _mapcount = -1
        for pfn in range(RAM_START, RAM_START + RAM_PAGES + 1):
            self.page(pfn, mapcount=-1)

    def _sections(self, vmemmap: int | None, *, extreme: bool, per_section_map: bool) -> None:
        k = self.k
        k.keys.update({"SIZE(mem_section)": "16", "NUMBER(SECTION_SIZE_BITS)": "27", "NUMBER(MAX_PHYSMEM_BITS)": "46"})
        nsec = 2  # 2 x 32768 pfns cover max_pfn
        if per_section_map:
            self.maps = []
            for _ in range(nsec):
                self.maps.append(k.kmalloc(32768 * 64, align=PAGE))
                k.kmalloc(PAGE)  # a gap: the sections' maps are not virtually contiguous
        if extreme:
            k.keys["LENGTH(mem_section)"] = str((1 << 19) // 256)
            secs = k.kmalloc(PAGE, align=PAGE)
            k.write_ulong(k.symbols["mem_section"], secs)
        else:
            k.keys["LENGTH(mem_section)"] = str(1 << 19)
            secs = k.symbols["mem_section"]
        for nr in range(nsec):
            if vmemmap is not None:
                enc = vmemmap
            else:
                enc = self.maps[nr] - nr * 32768 * 64
            k.write_ulong(secs + nr * 16, enc | SECTION_FLAGS)

    def set_free_counter(self, n: int) -> None:
        for z in range(self.nr_zones):
            self.k.write_ulong(self.pgdat + z * 256 + 128, n if z == self.nr_zones - 1 else 0)

    def page_pa(self, pfn: int) -> int:
        if self.model == "vmemmap":
            return VMEMMAP_PA + pfn * 64
        if self.model == "flat":
            return self.mem_map - self.k.direct_map + pfn * 64
        return self.maps[pfn >> 15] - self.k.direct_map + (pfn & 32767) * 64

    def page(self, pfn: int, *, flags: int | None = None, mapping: int | None = None, mapcount: int | None = None,
             private: int | None = None, chead: int | None = None, order: int | None = None,
             dtor: int | None = None) -> None:
        pa = self.page_pa(pfn)
        mem = self.k.mem
        if flags is not None:
            mem.write(pa, struct.pack("<Q", flags))
        if chead is not None:
            mem.write(pa + 8, struct.pack("<Q", chead))
        if dtor is not None:
            mem.write(pa + 16, bytes([dtor]))
        if order is not None:
            mem.write(pa + 17, bytes([order]))
        if mapping is not None:
            mem.write(pa + 24, struct.pack("<Q", mapping))
        if private is not None:
            mem.write(pa + 40, struct.pack("<Q", private))
        if mapcount is not None:
            mem.write(pa + 48, struct.pack("<i", mapcount))

    def dump(self, **kw: object) -> SparseDump:
        d = self.k.dump(**kw)  # type: ignore[arg-type]
        return d


@pytest.mark.parametrize("model", ["vmemmap", "sparse", "static", "flat"])
def test_struct_page_lookup(model: str) -> None:
    m = Machine(model)
    m.page(RAM_START + 5, flags=0x1234, private=77)
    d = m.dump()
    km = kernel_memory(d)
    spm = struct_page_map(km, d)
    expected = {"vmemmap": "sparsemem_vmemmap", "sparse": "sparsemem", "static": "sparsemem", "flat": "flatmem"}
    assert spm.model == expected[model]
    if model == "vmemmap":
        assert spm.vmemmap == VMEMMAP_VA
        assert spm.address(RAM_START) == VMEMMAP_VA + RAM_START * 64
    pages, valid = spm.read(RAM_START, RAM_START + 16)
    assert valid.all()
    row = bytes(pages[5])
    assert struct.unpack_from("<Q", row, 0)[0] == 0x1234
    assert struct.unpack_from("<Q", row, 40)[0] == 77
    assert struct.unpack_from("<i", row, 48)[0] == -1


def test_vmemmap_reads_translate_once_per_2mib() -> None:
    m = Machine("vmemmap")
    d = m.dump()
    spm = struct_page_map(kernel_memory(d), d)
    spm.read(0, 65536)
    assert spm.translations == 2


def test_vmemmap_hole_is_unreadable_not_an_error() -> None:
    m = Machine("vmemmap")
    d = m.dump()
    spm = struct_page_map(kernel_memory(d), d)
    # pfns beyond the mapped 4 MiB of vmemmap: the PMD is not present
    spm.runs[0] = type(spm.runs[0])(0, 70000, VMEMMAP_VA)
    pages, valid = spm.read(65536 - 4, 65536 + 4)
    assert valid.tolist() == [True] * 4 + [False] * 4


def test_missing_section_is_not_mapped() -> None:
    m = Machine("vmemmap")
    # clear section 1's present bit
    secs = m.k.mem.read(m.k.symbols["mem_section"] - m.k.direct_map, 8)
    secs_va = struct.unpack("<Q", secs)[0]
    m.k.write_ulong(secs_va + 16, 0)
    d = m.dump()
    spm = struct_page_map(kernel_memory(d), d)
    assert [(r.start, r.end) for r in spm.runs] == [(0, 32768)]
    _, valid = spm.read(32760, 32776)
    assert valid.tolist() == [True] * 8 + [False] * 8


def test_mem_section_pointer_is_dereferenced_once() -> None:
    """Some exports give the address of the ``mem_section`` pointer, not its value."""
    m = Machine("vmemmap")
    k = m.k
    ptr = k.variable("mem_section_ptr")
    k.write_ulong(ptr, k.symbols["mem_section"])
    k.symbols["mem_section"] = ptr
    d = m.dump(with_direct_map_hook=True)
    spm = struct_page_map(kernel_memory(d), d)
    assert spm.model == "sparsemem_vmemmap"
