"""Live dumps: a synthetic kcore-shaped ELF (fs/proc/kcore.c: KCORE_TEXT, KCORE_VMALLOC with
p_paddr = -1, KCORE_RAM direct-map segments with p_paddr set, a VMCOREINFO note)."""

from __future__ import annotations

import json
import struct

import pytest

from kdumpkit.capture.live import CONSISTENCY_WARNING, KcoreDump, direct_map_segments, live_dump
from kdumpkit.dump import open_dump
from kdumpkit.dump.base import Note
from kdumpkit.dump.elf import EHDR64, EHDR_IDENT, PHDR64, PT_LOAD, PT_NOTE
from kdumpkit.dump.elfnotes import build_notes
from kdumpkit.dump.fileio import BytesSource
from kdumpkit.dump.segments import Segment
from kdumpkit.dump.testing import default_vmcoreinfo
from kdumpkit.errors import DumpError

PAGE_OFFSET = 0xFFFF888000000000
PS = 4096


def kcore_bytes(ram: list[tuple[int, int]], *, with_paddr: bool = True) -> bytes:
    """ELF64 with a note, text, vmalloc and RAM PT_LOADs; page ``p`` holds ``p`` in every word."""
    notes = build_notes([Note("CORE", 1, bytes(336)), Note("VMCOREINFO", 0, default_vmcoreinfo().encode())])
    phdrs = [(PT_NOTE, 0, 0, 0, len(notes))]
    phdrs.append((PT_LOAD, 0xFFFFFFFF81000000, 0x1000000 if with_paddr else 0, -1, 0x2000))  # text
    phdrs.append((PT_LOAD, 0xFFFFC90000000000, 0xFFFFFFFFFFFFFFFF if with_paddr else 0, -1, 0x10000))  # vmalloc
    for s, e in ram:
        phdrs.append((PT_LOAD, PAGE_OFFSET + s * PS, s * PS if with_paddr else 0, s, (e - s) * PS))
    n = len(phdrs)
    off = EHDR64.size + n * PHDR64.size
    note_off = off
    off += len(notes)
    data_start = -(-off // PS) * PS
    table = b""
    body = bytearray()
    cur = data_start
    for ptype, vaddr, paddr, first, size in phdrs:
        if ptype == PT_NOTE:
            table += PHDR64.pack(p_type=PT_NOTE, p_offset=note_off, p_filesz=size)
            continue
        table += PHDR64.pack(p_type=PT_LOAD, p_flags=7, p_offset=cur, p_vaddr=vaddr, p_paddr=paddr, p_filesz=size,
                             p_memsz=size, p_align=PS)
        pages = size // PS
        if first >= 0:
            body += b"".join(struct.pack("<Q", first + i) * (PS // 8) for i in range(pages))
        else:
            body += bytes(size)
        cur += size
    ident = EHDR_IDENT.pack(magic=b"\x7fELF", ei_class=2, ei_data=1, ei_version=1)
    eh = EHDR64.pack(ident=ident, e_type=4, e_machine=62, e_version=1, e_phoff=EHDR64.size, e_ehsize=EHDR64.size,
                     e_phentsize=PHDR64.size, e_phnum=n)
    head = (eh + table + notes).ljust(data_start, b"\0")
    return bytes(head + body)


def test_kcore_physical_view() -> None:
    d = KcoreDump(BytesSource(kcore_bytes([(1, 16), (32, 48)]), name="kcore"))
    assert d.ram_runs() == [(1, 16), (32, 48)] and d.direct_map_base() == PAGE_OFFSET
    assert bytes(d.read_page(40))[:8] == struct.pack("<Q", 40)
    assert d.vmcoreinfo_raw() is not None and d.vmcoreinfo_source == "kcore note"
    assert d.prstatus_notes() == []  # a live system has no crashed CPU state
    assert d.info().details["consistent"] is False


def test_old_kcore_without_paddr_is_refused() -> None:
    with pytest.raises(DumpError, match="direct-map"):
        KcoreDump(BytesSource(kcore_bytes([(1, 4)], with_paddr=False)))


def test_direct_map_vote_ignores_text() -> None:
    segs = [Segment(0x1000000, 0, 0, 0x1000, 0xFFFFFFFF81000000), Segment(0x1000, 0, 0, 0x1000, PAGE_OFFSET + 0x1000),
            Segment(0x100000, 0, 0, 0x1000, PAGE_OFFSET + 0x100000)]
    ram, base = direct_map_segments(segs)
    assert base == PAGE_OFFSET and [s.paddr for s in ram] == [0x1000, 0x100000]


@pytest.mark.parametrize("fmt", ["kdump", "elf"])
def test_live_dump_pipeline(tmp_path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    src = KcoreDump(BytesSource(kcore_bytes([(1, 16), (32, 48)]), name="kcore"))
    res = live_dump(str(tmp_path), fmt=fmt, dump_levels=(1,), source=src)
    m = json.loads(open(res.manifest).read())
    assert m["status"] == "live-inconsistent" and m["live"]["consistent"] is False
    assert CONSISTENCY_WARNING in m["problems"]
    with open_dump(res.vmcore) as d:
        assert bytes(d.read_page(33))[:8] == struct.pack("<Q", 33)
        assert d.vmcoreinfo_raw() is not None


def test_live_cli_without_kcore(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kdumpkit.cli.main import main

    assert main(["live", "--out", str(tmp_path), "--kcore", str(tmp_path / "no-kcore"), "-d", "1"]) == 1
