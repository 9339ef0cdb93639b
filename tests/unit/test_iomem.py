"""/proc/iomem: the tree, the classes, and the RAM a vmcore must describe (kexec_file vs kexec-tools)."""

from __future__ import annotations

import pytest

from kdumpkit.errors import ConfigError, KdumpkitError
from kdumpkit.kexec.iomem import (
    Kind,
    classify,
    crash_memory_ranges,
    e820_from_console,
    from_e820,
    parse_iomem,
    subtract,
)

M = 1 << 20
HOST = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-bfffffff : System RAM
  01000000-02276f47 : Kernel code
  02400000-02e0cfff : Kernel rodata
  03000000-0327c17f : Kernel data
  03b32000-03c55fff : Kernel bss
  9f000000-aeffffff : Crash kernel
  b0000000-b3ffffff : GART
c0000000-c001ffff : ACPI Tables
c0020000-c00fffff : ACPI Non-volatile Storage
fec00000-fec003ff : IOAPIC 0
100000000-23fffffff : System RAM
  230000000-23fffffff : Crash kernel
240000000-2bfffffff : Persistent Memory
  240000000-27fffffff : dax0.0
    240000000-27fffffff : System RAM (kmem)
2c0000000-2ffffffff : Persistent Memory (legacy)
4000000000-7fffffffff : PCI Bus 0000:00
  4000000000-400007ffff : 0000:00:01.0
    4000000000-400007ffff : virtio-pci-modern
"""


def test_tree_and_classes() -> None:
    t = parse_iomem(HOST)
    assert [r.name for r in t.roots][:3] == ["Reserved", "System RAM", "Reserved"]
    ram = t.roots[3]
    assert ram.start == 0x100000 and ram.end == 0xBFFFFFFF and ram.size == 0xBFF00000
    assert [c.kind for c in ram.children] == [Kind.KERNEL_CODE, Kind.KERNEL_RODATA, Kind.KERNEL_DATA,
                                               Kind.KERNEL_BSS, Kind.CRASH_KERNEL, Kind.GART]
    pci = t.roots[-1]
    assert pci.children[0].children[0].name == "virtio-pci-modern" and pci.children[0].children[0].depth == 2
    assert classify("System RAM (virtio_mem)") is Kind.RAM
    assert classify("reserved") is Kind.RESERVED and classify("Reserved") is Kind.RESERVED
    assert classify("ACPI Tables") is Kind.ACPI_TABLES and classify("ACPI Non-volatile Storage") is Kind.ACPI_NVS
    assert classify("Persistent Memory (legacy)") is Kind.PMEM_LEGACY and classify("Persistent Memory") is Kind.PMEM
    assert classify("PCI Bus 0000:00") is Kind.OTHER
    assert t.crash_kernel() == [(0x9F000000, 0xAF000000), (0x230000000, 0x240000000)]
    assert t.kernel_code() == (0x1000000, 0x2276F48)
    assert t.kernel_image_size() == (0x2276F48 - 0x1000000) + 0xA0D000 + 0x27C180 + 0x124000
    assert t.system_ram_size() == (0x9FC00 - 0x1000) + 0xBFF00000 + 0x140000000


def test_file_mode_drops_first_mib_and_crash_kernels() -> None:
    got = crash_memory_ranges(parse_iomem(HOST), mode="file")
    assert got == [(0x100000, 0x9F000000), (0xAF000000, 0xC0000000), (0x100000000, 0x230000000),
                   (0x240000000, 0x280000000)]  # the kmem RAM under a PMEM device counts; GART is not cut


def test_classic_mode_is_kexec_tools() -> None:
    got = crash_memory_ranges(parse_iomem(HOST), mode="classic")
    assert got == [(0x1000, 0x9FC00), (0x100000, 0x9F000000), (0xAF000000, 0xB0000000), (0xB4000000, 0xC0000000),
                   (0x100000000, 0x230000000), (0x240000000, 0x280000000)]
    with pytest.raises(ConfigError):
        crash_memory_ranges(parse_iomem(HOST), mode="kdump")


def test_subtract_splits_and_trims() -> None:
    assert subtract([(0, 100)], (10, 20)) == [(0, 10), (20, 100)]
    assert subtract([(0, 100)], (0, 100)) == []
    assert subtract([(0, 100), (200, 300)], (50, 250)) == [(0, 50), (250, 300)]
    assert subtract([(0, 100)], (100, 200)) == [(0, 100)]


def test_zero_addresses_mean_not_root() -> None:
    with pytest.raises(KdumpkitError, match="root"):
        parse_iomem("00000000-00000000 : System RAM\n  00000000-00000000 : Kernel code\n")
    assert parse_iomem("00000000-00000000 : System RAM\n", allow_zero=True).roots[0].size == 1


@pytest.mark.parametrize("bad", ["garbage", "0000-zzzz : x", "00001000-00000fff : System RAM"])
def test_malformed_lines(bad: str) -> None:
    with pytest.raises(ConfigError, match="line 2"):
        parse_iomem("00000000-00000fff : Reserved\n" + bad + "\n")


CONSOLE = """\
[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
[    0.000000] BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved
[    0.000000] BIOS-e820: [mem 0x0000000000100000-0x000000003ffd6fff] usable
[    0.000000] BIOS-e820: [mem 0x000000003ffd7000-0x000000003fffffff] reserved
[    0.047990] Reserving 256MB of memory at 624MB for crashkernel (System RAM: 1023MB)
[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
"""


def test_iomem_from_a_qemu_boot_log() -> None:
    entries, crash = e820_from_console(CONSOLE)
    assert len(entries) == 4 and crash == [(624 * M, 880 * M)]
    t = parse_iomem(from_e820(entries, crash, {"Kernel code": (0x37000000, 0x38000000)}))
    assert t.roots[0].name == "Reserved" and t.roots[1].start == 0x1000
    assert t.crash_kernel() == [(624 * M, 880 * M)] and t.kernel_code() == (0x37000000, 0x38000000)
    assert t.system_ram_size() // M == 1023  # what the kernel printed
    assert crash_memory_ranges(t) == [(0x100000, 624 * M), (880 * M, 0x3FFD7000)]
