"""``kdumpkit save`` on a real crashed 6.1 kernel, checked by makedumpfile and crash.

The reference vmcore (``ref_bookworm``) is a raw ELF copy of /proc/vmcore
from the lab.  Each output must open in our reader with the kept pages
identical to the source, give makedumpfile the same kernel log, and satisfy
``crash --osrelease``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.cli.main import main
from kdumpkit.dump import open_dump
from kdumpkit.dump.base import PageState

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(not shutil.which("makedumpfile"), reason="makedumpfile not installed")]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _check_pages(out: str, vmcore: str, sample: int = 4000, *, elf: bool = False) -> None:
    """Every kept page sampled across the dump equals the source; dropped pages read as excluded."""
    with open_dump(out) as d, open_dump(vmcore) as s:
        assert not d.incomplete
        runs = d.dumped_runs()
        pfns = [p for a, b in runs for p in range(a, b)]
        step = max(1, len(pfns) // sample)
        for pfn in pfns[::step]:
            page = bytes(d.read_page(pfn))
            # ELF: short excluded runs are written as zero pages (makedumpfile -E does the same)
            assert page == bytes(s.read_page(pfn)) or (elf and not any(page)), f"pfn {pfn:#x}"
        for a, _b in s.dumped_runs()[:50]:
            assert d.page_state(a) in (PageState.DUMPED, PageState.EXCLUDED)


def _check_peers(out: str, ref: Any, tmp_path: Path, *, makedumpfile_reads: bool = True) -> None:
    if makedumpfile_reads:
        log = tmp_path / "dmesg.txt"
        r = _run(["makedumpfile", "--dump-dmesg", out, str(log)])
        assert r.returncode == 0, r.stderr
        expected = Path(ref.dir, "dmesg-makedumpfile.txt")
        if expected.exists():
            assert log.read_bytes() == expected.read_bytes()
    if shutil.which("crash"):
        r = _run(["crash", "--osrelease", out])
        assert r.returncode == 0 and r.stdout.strip() == ref.release, r.stdout + r.stderr


@pytest.mark.parametrize("args", [["-l", "-d", "31"], ["-z", "-d", "31", "--num-threads", "2"], ["-c", "-d", "11,31"]])
def test_save_kdump(ref_bookworm: Any, tmp_path: Path, args: list[str]) -> None:
    out = str(tmp_path / "vmcore")
    assert main(["save", *args, "--message-level", "0", str(ref_bookworm.vmcore), out]) == 0
    _check_pages(out, str(ref_bookworm.vmcore))
    # Debian's makedumpfile 1.7.2 is built without zstd ("zstd compression unsupported")
    _check_peers(out, ref_bookworm, tmp_path, makedumpfile_reads="-z" not in args)


def test_save_lzo_31_identical_to_makedumpfile(ref_bookworm: Any, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert main(["save", "-l", "-d", "31", "--message-level", "0", str(ref_bookworm.vmcore), str(ours)]) == 0
    r = _run(["makedumpfile", "-l", "-d", "31", str(ref_bookworm.vmcore), str(theirs)])
    assert r.returncode == 0, r.stderr
    assert ours.read_bytes() == theirs.read_bytes()


def test_save_elf(ref_bookworm: Any, tmp_path: Path) -> None:
    out = str(tmp_path / "vmcore.elf")
    assert main(["save", "-E", "-d", "31", "--message-level", "0", str(ref_bookworm.vmcore), out]) == 0
    _check_pages(out, str(ref_bookworm.vmcore), elf=True)
    _check_peers(out, ref_bookworm, tmp_path)


def test_save_flat_reassembled_by_makedumpfile(ref_bookworm: Any, tmp_path: Path) -> None:
    flat, out = tmp_path / "vmcore.flat", tmp_path / "vmcore"
    with open(flat, "wb") as f:
        p = subprocess.run([sys.executable, "-m", "kdumpkit.cli.main", "save", "-F", "-l", "-d", "31",
                            "--message-level", "0", str(ref_bookworm.vmcore)], stdout=f, stderr=subprocess.PIPE,
                           timeout=600)
    assert p.returncode == 0, p.stderr
    with open(flat, "rb") as f:
        r = subprocess.run(["makedumpfile", "-R", str(out)], stdin=f, capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr
    _check_pages(str(out), str(ref_bookworm.vmcore))
    _check_pages(str(flat), str(ref_bookworm.vmcore))  # and read in place
    _check_peers(str(out), ref_bookworm, tmp_path)


def test_dump_dmesg_like_makedumpfile(ref_bookworm: Any, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.txt", tmp_path / "theirs.txt"
    assert main(["save", "--dump-dmesg", "--message-level", "0", str(ref_bookworm.vmcore), str(ours)]) == 0
    r = _run(["makedumpfile", "--dump-dmesg", str(ref_bookworm.vmcore), str(theirs)])
    assert r.returncode == 0, r.stderr
    assert ours.read_bytes() == theirs.read_bytes()


def test_capture_real_to_local(ref_bookworm: Any, tmp_path: Path) -> None:
    conf = tmp_path / "k.toml"
    conf.write_text(f'dump_level = 31\ncodec = "lzo"\n[[target]]\ntype = "local"\npath = "{tmp_path}/crash"\n')
    assert main(["capture", "--config", str(conf), "--vmcore", str(ref_bookworm.vmcore), "--no-action"]) == 0
    (folder,) = list((tmp_path / "crash").iterdir())
    expected = Path(ref_bookworm.dir, "dmesg-makedumpfile.txt")
    if expected.exists():
        assert (folder / "dmesg.txt").read_bytes() == expected.read_bytes()
    import json

    m = json.loads((folder / "manifest.json").read_text())
    assert m["kernel"]["release"] == ref_bookworm.release and m["dump"]["page_counts"]["free"] > 0
    _check_pages(str(folder / "vmcore"), str(ref_bookworm.vmcore))
