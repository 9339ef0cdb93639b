"""kdump-compressed against makedumpfile and crash on the real bookworm reference crash.

* makedumpfile's -c/-l/--split outputs and the in-guest -F stream read page-equal
  to the ELF /proc/vmcore copy;
* our kdump conversion of the vmcore is accepted by ``makedumpfile --dump-dmesg``
  (same log as from the ELF) and by ``crash --osrelease``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.dump.base import Dump
from kdumpkit.dump.elf import ElfDump
from kdumpkit.dump.fileio import MappedFile
from kdumpkit.dump.flattened import FlattenedFile
from kdumpkit.dump.kdump import KdumpFile, write_kdump
from kdumpkit.dump.sink import FileSink
from kdumpkit.dump.split import SplitDump
from kdumpkit.dump.testing import assert_kept_pages_equal

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not (shutil.which("makedumpfile") and shutil.which("crash")),
                       reason="makedumpfile/crash not installed (make apt)"),
]


@pytest.fixture(scope="module")
def elf(ref_bookworm: Any) -> Dump:
    return ElfDump(MappedFile(str(ref_bookworm.vmcore)))


@pytest.mark.parametrize("attr", ["kdump_c31", "kdump_l31"])
def test_makedumpfile_outputs_read_page_equal(ref_bookworm: Any, elf: Dump, attr: str) -> None:
    k = KdumpFile(MappedFile(str(getattr(ref_bookworm, attr))))
    assert not k.incomplete and k.info().details["dump_level"] == 31
    assert k.ram_runs() == elf.ram_runs()
    assert assert_kept_pages_equal(elf, k) > 10_000
    assert k.vmcoreinfo_raw() == elf.vmcoreinfo_raw()


@pytest.mark.slow
def test_makedumpfile_d0_reads_page_equal(ref_bookworm: Any, elf: Dump) -> None:
    k = KdumpFile(MappedFile(str(ref_bookworm.kdump_c0)))
    assert k.dumped_runs() == elf.dumped_runs()
    assert assert_kept_pages_equal(elf, k) == sum(e - s for s, e in elf.dumped_runs())


def test_in_guest_flattened_stream_read_in_place(ref_bookworm: Any, elf: Dump) -> None:
    ff = FlattenedFile(MappedFile(str(ref_bookworm.flat)))
    assert ff.complete
    k = KdumpFile(ff)
    assert k.utsname()["release"] == ref_bookworm.release
    assert assert_kept_pages_equal(elf, k) > 10_000


def test_makedumpfile_split_reads_page_equal(ref_bookworm: Any, elf: Dump) -> None:
    with SplitDump.open([str(p) for p in ref_bookworm.split]) as sd:
        assert len(sd.pieces) == 2
        whole = KdumpFile(MappedFile(str(ref_bookworm.kdump_c31)))
        assert sd.dumped_runs() == whole.dumped_runs()
        assert assert_kept_pages_equal(elf, sd) > 10_000


def test_makedumpfile_split_with_empty_pieces(ref_bookworm: Any, elf: Dump, tmp_path: Path) -> None:
    """Debian's makedumpfile puts every page of this dump into piece 1 at -d 0; the empty pieces end
    5 bytes before their bitmaps' padding does (nothing is written after them).  They still read."""
    import subprocess

    pieces = [tmp_path / f"p{i}" for i in range(3)]
    r = subprocess.run(["makedumpfile", "-d", "0", "-l", "--split", str(ref_bookworm.vmcore), *map(str, pieces)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    with SplitDump.open([str(p) for p in pieces]) as sd:
        assert sd.dumped_runs() == elf.dumped_runs()
        assert assert_kept_pages_equal(elf, sd) == sum(e - s for s, e in elf.dumped_runs())


@pytest.fixture(scope="module")
def ours(ref_bookworm: Any, elf: Dump, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ours") / "ours.kdump"
    sink = FileSink(str(path))
    write_kdump(elf, sink, codec="zlib", exclude_zero=True, workers=2)
    sink.close()
    return path


def test_our_kdump_reads_back(ours: Path, elf: Dump) -> None:
    k = KdumpFile(MappedFile(str(ours)))
    assert k.dumped_runs() == elf.dumped_runs() and k.ram_runs() == elf.ram_runs()
    assert k.notes() == elf.notes()
    assert assert_kept_pages_equal(elf, k) == sum(e - s for s, e in elf.dumped_runs())


def test_our_kdump_accepted_by_makedumpfile_and_crash(ours: Path, ref_bookworm: Any, tmp_path: Path) -> None:
    out = subprocess.run(["crash", "--osrelease", str(ours)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == ref_bookworm.release, out.stderr
    dmesg = tmp_path / "dmesg.txt"
    r = subprocess.run(["makedumpfile", "--dump-dmesg", str(ours), str(dmesg)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert dmesg.read_bytes() == Path(ref_bookworm.dmesg_makedumpfile).read_bytes()
