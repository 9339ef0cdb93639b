"""The kernel helpers against a real crashed Debian kernel (the lab's reference set).

makedumpfile 1.7.2 is the oracle for the log bytes; the guest's own ``dmesg``
(printed right before the crash) is the ground truth for content; the ELF
vmcore's PT_LOAD ``p_vaddr - p_paddr`` is the oracle for the direct map.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.dump import open_dump
from kdumpkit.dump.base import Dump
from kdumpkit.kernel.facts import crash_facts
from kdumpkit.kernel.memory import kernel_memory
from kdumpkit.kernel.printk import format_makedumpfile, format_plain, get_printk_log
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo
from kdumpkit.kernel.x86_64 import START_KERNEL_MAP, X86_64Memory

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def ref(ref_bookworm: Any) -> Any:
    """The bookworm reference set (tests/conftest.py; built on first use)."""
    return ref_bookworm


@pytest.fixture(scope="module")
def vmcore(ref: Any) -> Iterator[Dump]:
    with open_dump(str(ref.vmcore)) as d:
        yield d


def test_dmesg_matches_makedumpfile_byte_for_byte(ref: Any, vmcore: Dump) -> None:
    expected = Path(ref.dmesg_makedumpfile).read_bytes()
    log = get_printk_log(kernel_memory(vmcore))
    assert log.format == "lockless" and not log.partial
    assert format_makedumpfile(log, vmcore.arch) == expected


def test_dmesg_cli_on_flattened_and_compressed(ref: Any, tmp_path: Path) -> None:
    """The same bytes whatever container the dump is in (ELF, kdump-compressed, flattened)."""
    from kdumpkit.cli.main import main

    expected = Path(ref.dmesg_makedumpfile).read_bytes()
    for name in ("kdump_c31", "flat"):
        try:
            path = getattr(ref, name)
        except Exception as e:  # a lazily made format may be unavailable
            pytest.skip(f"{name}: {e}")
        out = tmp_path / f"{name}.txt"
        assert main(["dmesg", str(path), "-o", str(out)]) == 0, name
        assert out.read_bytes() == expected, name


def test_every_ground_truth_line_is_in_our_log(ref: Any, vmcore: Dump) -> None:
    # dmesg(1) trims trailing blanks; the guest's dmesg was taken before the
    # crash, so our log is a superset.
    ours = {line.rstrip() for line in format_plain(get_printk_log(kernel_memory(vmcore))).splitlines()}
    truth = Path(ref.dmesg).read_text(encoding="utf-8", errors="replace").splitlines()
    missing = [line for line in truth if line.rstrip() and line.rstrip() not in ours]
    assert not missing, missing[:10]


def test_direct_map_derived_equals_elf_mapping(vmcore: Dump) -> None:
    info = VmcoreInfo.from_dump(vmcore)
    derived = X86_64Memory(vmcore.read, info, max_phys=vmcore.max_pfn * vmcore.page_size).direct_map_base
    elf_base = vmcore.direct_map_base()  # type: ignore[attr-defined]
    assert derived is not None and derived == elf_base


def test_vtop_of_symbols_lands_where_elf_says(vmcore: Dump) -> None:
    info = VmcoreInfo.from_dump(vmcore)
    mem = kernel_memory(vmcore, info)
    assert isinstance(mem, X86_64Memory)
    base = vmcore.direct_map_base()  # type: ignore[attr-defined]
    for name in ("init_uts_ns", "prb", "printk_rb_static", "swapper_pg_dir", "_stext", "node_online_map"):
        va = info.symbol(name)
        if va is None:
            continue
        t = mem.vtop(va)
        assert t.pa == va - START_KERNEL_MAP + mem.phys_base, name
        # the same bytes through the direct map (ELF p_vaddr mapping) and the kernel text mapping
        assert mem.read_virt(base + t.pa, 64) == mem.read_virt(va, 64), name
    # direct-map pointers (memblock allocations): the walk agrees with p_vaddr - p_paddr
    mem_section = info.require_symbol("mem_section")
    section0 = mem.read_pointer(mem_section)
    for va in (mem_section, section0):
        assert mem.vtop(va).pa == va - base
        assert mem.region(va) == "direct map"
    # init_uts_ns holds the release string VMCOREINFO reports
    uts = info.require_symbol("init_uts_ns") + (info.offset("uts_namespace.name") or 0)
    release = mem.read_virt(uts + 65 * 2, 65).split(b"\0")[0].decode()
    assert release == info.osrelease


def test_crash_facts_real(ref: Any, vmcore: Dump) -> None:
    f = crash_facts(vmcore)
    assert f.release == ref.release
    assert f.panic_message == "Kernel panic - not syncing: sysrq triggered crash"
    assert f.crashing_cpu is not None and f.registers["rip"] >> 47  # a kernel address
    assert f.cpus and f.cpus >= 1 and not f.missing


def test_vtop_cli_matches_crash(vmcore: Dump, ref: Any, request: pytest.FixtureRequest) -> None:
    """crash's ``vtop`` with Debian's debuginfo vmlinux (when cached) agrees on the PA."""
    if shutil.which("crash") is None:
        pytest.skip("crash not installed")
    vmlinux = request.getfixturevalue("debug_vmlinux_bookworm")
    info = VmcoreInfo.from_dump(vmcore)
    va = info.require_symbol("init_uts_ns")
    p = subprocess.run(["crash", "-s", str(vmlinux), str(ref.vmcore)], input=f"vtop {va:x}\nquit\n",
                       capture_output=True, text=True, timeout=300)
    m = re.search(rf"^{va:x}\s+([0-9a-f]+)", p.stdout, re.M)
    if m is None:
        pytest.skip(f"crash did not run: {p.stderr.strip()[-200:]}")
    assert int(m.group(1), 16) == kernel_memory(vmcore, info).vtop(va).pa
