"""Console parsing: markers, ground-truth blocks, phase durations; dump extraction sizes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kdumpkit.errors import LabError
from kdumpkit.lab.console import Line, block, last_phase, marker, phase_times
from kdumpkit.lab.extract import FLAT_SIGNATURE, elf_size, extract_flat, flat_size

CONSOLE = [
    Line(0.5, "SeaBIOS (version 1.16.2-debian-1.16.2-1)"),
    Line(5.0, "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)"),
    Line(9.9, "@@KDUMPKIT-LAB phase=boot-done release=6.1.0-56-amd64 uptime=3.90"),
    Line(14.0, "@@KDUMPKIT-LAB begin dmesg"),
    Line(14.0, "[    0.000000] Linux version 6.1.0-56-amd64"),
    Line(14.1, "@@KDUMPKIT-LAB end dmesg"),
    Line(15.0, "@@KDUMPKIT-LAB phase=trigger scenario=sysrq uptime=9.0"),
    Line(15.1, "[    9.100000] sysrq: Trigger a crash"),
    Line(22.0, "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)"),
    Line(26.5, "@@KDUMPKIT-LAB phase=capture-start release=6.1.0-56-amd64 uptime=4.4"),
    Line(68.0, "@@KDUMPKIT-LAB phase=capture-done uptime=46"),
]


def test_marker_parsing() -> None:
    assert marker("noise") is None
    assert marker("@@KDUMPKIT-LAB phase=boot-done release=6.1.0-56-amd64 uptime=3.9") == {
        "phase": "boot-done", "release": "6.1.0-56-amd64", "uptime": "3.9"}
    assert marker("@@KDUMPKIT-LAB fail reason=kexec -p -s failed") == {"fail": "kexec -p -s failed"}
    assert marker("@@KDUMPKIT-LAB begin dmesg") == {"begin": "dmesg"}


def test_block_and_phases() -> None:
    texts = [ln.text for ln in CONSOLE]
    assert block(texts, "dmesg") == "[    0.000000] Linux version 6.1.0-56-amd64\n"
    assert block(texts, "meminfo") is None
    assert phase_times(CONSOLE) == {"boot": 9.9, "prepare": 5.1, "crash": 7.0, "capture_boot": 4.5,
                                    "capture": 41.5}
    assert last_phase(CONSOLE) == "capture-done"
    assert phase_times(CONSOLE[:7]) == {"boot": 9.9, "prepare": 5.1}


def _elf(loads: list[tuple[int, int]]) -> bytes:
    phoff, phnum = 64, len(loads)
    eh = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    eh += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, 0, 0, 64, 56, phnum, 0, 0, 0)
    ph = b"".join(struct.pack("<IIQQQQQQ", 1, 7, off, 0, 0, size, size, 4096) for off, size in loads)
    return eh + ph


def test_elf_size_is_largest_segment_end() -> None:
    assert elf_size(_elf([(4096, 8192), (0x10000, 4096), (8192, 100)])) == 0x11000
    with pytest.raises(LabError):
        elf_size(b"\0" * 64)


def test_flat_size_walks_to_the_end_marker(tmp_path: Path) -> None:
    head = FLAT_SIGNATURE + struct.pack(">qq", 1, 1)
    head += bytes(4096 - len(head))
    recs = struct.pack(">qq", 0, 5) + b"hello" + struct.pack(">qq", 4096, 3) + b"abc"
    end = struct.pack(">qq", -1, -1)
    disk = tmp_path / "disk"
    disk.write_bytes(head + recs + end + b"\xff" * 1000)
    assert flat_size(disk) == 4096 + len(recs) + 16
    extract_flat(disk, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == head + recs + end
    disk.write_bytes(head + recs + bytes(8))
    with pytest.raises(LabError):
        flat_size(disk)
