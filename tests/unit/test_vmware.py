"""VMware .vmss/.vmsn (+ .vmem): checkpoints built from the layout crash's vmware_vmss.c
parses (cptdumpheader, 80-byte cptgroupdesc, MAKE_TAG items, blocks with nbytes/nbytesinmem/padsize)."""

from __future__ import annotations

import struct

import pytest

from kdumpkit.cli.main import main
from kdumpkit.dump import open_dump
from kdumpkit.dump.base import PageState
from kdumpkit.dump.fileio import BytesSource
from kdumpkit.dump.qemu import parse_prstatus
from kdumpkit.dump.vmware import GPREGS, TAG_ISBLOCK, VmssDump, make_tag
from kdumpkit.errors import DumpError, KdumpkitError, UnsupportedError

PS = 4096


def _val(name: str, value: int, size: int, *idx: int) -> bytes:
    return (struct.pack("<H", make_tag(len(name), len(idx), size)) + name.encode()
            + b"".join(struct.pack("<i", i) for i in idx) + value.to_bytes(size, "little"))


def _block(name: str, data: bytes, *idx: int, pad: int = 2) -> bytes:
    return (struct.pack("<H", make_tag(len(name), len(idx), TAG_ISBLOCK)) + name.encode()
            + b"".join(struct.pack("<i", i) for i in idx) + struct.pack("<QQH", len(data), len(data), pad)
            + bytes(pad) + data)


def memory_image(pages: int) -> bytes:
    return b"".join(struct.pack("<Q", p) * (PS // 8) for p in range(pages))


def build_vmss(*, with_memory: bool = True, regions: bool = True, magic: int = 0xBED2BED2) -> bytes:
    """4 image pages; regions put image pages 0-1 at ppn 0 and pages 2-3 at ppn 0x100."""
    mem = b""
    if regions:
        mem += _val("regionsCount", 2, 4)
        for i, (pn, ppn, size) in enumerate([(0, 0, 2), (2, 0x100, 2)]):
            mem += _val("regionPageNum", pn, 4, i) + _val("regionPPN", ppn, 4, i) + _val("regionSize", size, 4, i)
    mem += _val("align_mask", 0xFFFF, 4)
    if with_memory:
        mem += _block("Memory", memory_image(4))
    mem += b"\0\0"
    cpu = _val("cpu:numVCPUs", 2, 4)
    cpu += _block("gpregs", struct.pack("<16Q", *range(0x100, 0x110)), 0)
    cpu += _block("CR64", struct.pack("<9Q", *(0x30 + n for n in range(9))), 0)
    cpu += _val("rip", 0xFFFFFFFF81000000, 8, 0) + _val("eflags", 0x246, 4, 0)
    cpu += _val("rsp", 0xFFFFC90000001000, 8, 1) + _val("rip", 0xFFFFFFFF81000100, 8, 1)
    cpu += _val("CR64", 0x5000, 8, 1, 3) + b"\0\0"
    groups = [("hdr", b"\0\0"), ("memory", mem), ("cpu", cpu)]
    pos = 12 + 80 * len(groups)
    desc, body = b"", b""
    for name, data in groups:
        desc += struct.pack("<64sQQ", name.encode(), pos + len(body), len(data))
        body += data
    return struct.pack("<III", magic, 1, len(groups)) + desc + body


def test_regions_and_registers() -> None:
    d = VmssDump(BytesSource(build_vmss()))
    assert d.ram_runs() == [(0, 2), (0x100, 0x102)]
    assert d.page_state(2) is PageState.NOT_RAM
    assert bytes(d.read_page(0x101))[:8] == struct.pack("<Q", 3)  # image page 3
    assert bytes(d.read_page(1))[:8] == struct.pack("<Q", 1)
    r0, r1 = d.registers()
    assert r0["rax"] == 0x100 and r0[GPREGS[-1]] == 0x10F and r0["cr3"] == 0x33 and r0["rflags"] == 0x246
    assert r1["cr3"] == 0x5000 and r1["rip"] == 0xFFFFFFFF81000100
    prs = [parse_prstatus(n.desc) for n in d.prstatus_notes()]
    assert prs[0] is not None and prs[0]["rip"] == 0xFFFFFFFF81000000 and prs[0]["eflags"] == 0x246
    assert prs[1] is not None and prs[1]["rsp"] == 0xFFFFC90000001000


def test_companion_vmem_and_linear(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "vm.vmss").write_bytes(build_vmss(with_memory=False, regions=False))
    (tmp_path / "vm.vmem").write_bytes(memory_image(4))
    with open_dump(str(tmp_path / "vm.vmss")) as d:
        assert d.format_name == "vmware" and d.ram_runs() == [(0, 4)]
        assert bytes(d.read_page(2))[:8] == struct.pack("<Q", 2)
    (tmp_path / "lonely.vmsn").write_bytes(build_vmss(with_memory=False))
    with pytest.raises(DumpError, match="vmem"):
        open_dump(str(tmp_path / "lonely.vmsn"))


def test_vmss2core(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "vm.vmss").write_bytes(build_vmss())
    out = tmp_path / "vm.core"
    assert main(["vmss2core", str(tmp_path / "vm.vmss"), "-o", str(out)]) == 0
    with open_dump(str(out)) as elf, open_dump(str(tmp_path / "vm.vmss")) as vm:
        assert elf.format_name == "elf" and elf.ram_runs() == vm.ram_runs()
        assert bytes(elf.read_page(0x100)) == bytes(vm.read_page(0x100))
        assert len(elf.prstatus_notes()) == 2


def test_old_and_corrupt() -> None:
    with pytest.raises(UnsupportedError):
        VmssDump(BytesSource(struct.pack("<III", 0xBED0BED0, 1, 0)))
    good = build_vmss()
    for cut in range(4, len(good) - PS * 4, 37):
        try:
            d = VmssDump(BytesSource(good[:cut]))
            for s, e in d.dumped_runs():
                d.read_pages(s, e - s)
        except KdumpkitError:
            pass
