"""The capture engine and ``kdumpkit save``: formats, .incomplete+rename, ENOSPC fallback, EIO, SIGKILL."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kdumpkit.capture.engine import FileOutput, Output, SaveOptions, save_dump, save_split, save_to_file
from kdumpkit.capture.tolerant import TolerantDump
from kdumpkit.cli.main import main
from kdumpkit.dump import open_dump
from kdumpkit.dump.base import Buffer, PageState
from kdumpkit.dump.convert import convert
from kdumpkit.dump.sink import Sink
from kdumpkit.dump.testing import SyntheticDump, assert_same_pages, synthetic_dump
from kdumpkit.errors import NoSpaceError, OutputError, UsageError

RAM = [(0, 1500), (2048, 3000)]


def src(**kw: object) -> SyntheticDump:
    return synthetic_dump(ram=RAM, **kw)  # type: ignore[arg-type]


class FaultySource(SyntheticDump):
    """A synthetic dump whose listed pages fail like /proc/vmcore with EIO."""

    def __init__(self, bad: set[int], **kw: object) -> None:
        base = synthetic_dump(ram=RAM)
        super().__init__(ram=RAM, notes=base.notes(), **kw)  # type: ignore[arg-type]
        self.bad = bad

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        if any(pfn <= b < pfn + count for b in self.bad):
            raise OSError(errno.EIO, "Input/output error")
        return super()._read_dumped(pfn, count)


class LimitedSink(Sink):
    """Raises NoSpaceError once a write would pass ``limit`` bytes (a tiny disk)."""

    def __init__(self, inner: Sink, limit: int) -> None:
        self.inner, self.limit = inner, limit

    def pwrite(self, offset: int, data: Buffer) -> None:
        if offset + len(data) > self.limit:
            raise NoSpaceError(f"limit {self.limit}")
        self.inner.pwrite(offset, data)


def limited_output(path: str, limit: int, attempts: list[str]) -> Output:
    out = FileOutput(path)
    attempts.append(out.part)
    out.sink = LimitedSink(out.sink, limit)
    return out


@pytest.mark.parametrize("fmt", ["kdump", "elf", "flat"])
def test_save_formats_round_trip(tmp_path: Path, fmt: str) -> None:
    s = src()
    out = tmp_path / "dump"
    r = save_to_file(s, str(out), SaveOptions(fmt=fmt, codec="zlib" if fmt != "elf" else None, dump_levels=(0,)))
    assert r.dump_level == 0 and not r.incomplete
    assert not (tmp_path / "dump.incomplete").exists()
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    with open_dump(str(out)) as d:
        assert not d.incomplete
        assert_same_pages(s, d)


def test_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "vmcore"
    out.write_bytes(b"previous dump")
    with pytest.raises(OutputError, match="will not overwrite"):
        save_to_file(src(), str(out), SaveOptions(dump_levels=(0,)))
    assert out.read_bytes() == b"previous dump"


def test_enospc_falls_back_to_next_level(tmp_path: Path) -> None:
    s = src(zero_fraction=0.6, random_fraction=0.3)
    full = save_to_file(s, str(tmp_path / "full"), SaveOptions(codec=None, dump_levels=(0,)))
    small = save_to_file(s, str(tmp_path / "small"), SaveOptions(codec=None, dump_levels=(1,)))
    limit = (full.stats.bytes_written + small.stats.bytes_written) // 2
    out = tmp_path / "vmcore"
    attempts: list[str] = []
    logs: list[str] = []
    r = save_dump(s, lambda: limited_output(str(out), limit, attempts), SaveOptions(codec=None, dump_levels=(0, 1)),
                  log=logs.append)
    assert r.dump_level == 1 and r.levels_tried == [0, 1]
    assert len(attempts) == 2 and any("no space" in m for m in logs)
    assert not (tmp_path / "vmcore.incomplete").exists()
    with open_dump(str(out)) as d:
        assert_same_pages(s, d)


def test_enospc_everywhere_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "vmcore"
    with pytest.raises(NoSpaceError, match="levels tried: 0, 1"):
        save_dump(src(), lambda: limited_output(str(out), 100_000, []), SaveOptions(dump_levels=(0, 1)))
    assert list(tmp_path.iterdir()) == []  # no silently truncated file


def test_enospc_on_a_real_small_tmpfs(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        s = src(zero_fraction=0.7, random_fraction=0.1)  # raw: 9.6 MiB at level 0, 2.9 MiB at level 1
        out = mnt / "vmcore"
        with pytest.raises(NoSpaceError):
            save_to_file(s, str(out), SaveOptions(codec=None, dump_levels=(0, 1)))
        assert list(mnt.iterdir()) == []
        r = save_to_file(s, str(out), SaveOptions(codec="zlib", dump_levels=(0, 1)))
        assert r.dump_level in (0, 1)
        with open_dump(str(out)) as d:
            assert_same_pages(s, d)
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("fmt", ["kdump", "flat"])
def test_unreadable_pages_become_missing(tmp_path: Path, fmt: str) -> None:
    bad = {5, 700, 2100}
    s = FaultySource(bad)
    out = tmp_path / "vmcore"
    r = save_to_file(s, str(out), SaveOptions(fmt=fmt, dump_levels=(1,)))
    assert r.incomplete and sorted(r.missing_pfns) == sorted(bad)
    ref = src()
    with open_dump(str(out)) as d:
        assert d.incomplete
        for pfn in bad:
            assert d.page_state(pfn) is PageState.MISSING
        for pfn in (4, 6, 699, 701, 2048, 2999):
            assert bytes(d.read_page(pfn)) == bytes(ref.read_page(pfn))
        assert len(d.dumped_runs()) > 0


def test_unreadable_pages_elf_flagged_incomplete(tmp_path: Path) -> None:
    s = FaultySource({10})
    out = tmp_path / "vmcore"
    r = save_to_file(s, str(out), SaveOptions(fmt="elf", codec=None, dump_levels=(0,)))
    assert r.incomplete and r.missing_pfns == [10]
    with open_dump(str(out)) as d:
        assert d.incomplete


def test_tolerant_layer_passes_through() -> None:
    t = TolerantDump(src())
    assert t.dumped_runs() == src().dumped_runs() and not t.incomplete
    assert bytes(t.read_page(3)) == bytes(src().read_page(3))


def test_split(tmp_path: Path) -> None:
    s = src()
    paths = [str(tmp_path / f"p{i}") for i in range(3)]
    r = save_split(s, paths, SaveOptions(dump_levels=(0,)))
    assert r.stats.pages_written == sum(e - b for b, e in s.dumped_runs())
    with open_dump(paths) as d:
        assert_same_pages(s, d)


def test_split_rejects_elf(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        save_split(src(), [str(tmp_path / "a"), str(tmp_path / "b")], SaveOptions(fmt="elf", dump_levels=(0,)))


KILLER = textwrap.dedent("""
    import os, signal, sys
    from kdumpkit.capture.engine import SaveOptions, save_to_file
    from kdumpkit.dump.testing import synthetic_dump
    fmt, out = sys.argv[1], sys.argv[2]
    s = synthetic_dump(ram=[(0, 8192)])
    def progress(done, total):
        if done >= total // 2:
            os.kill(os.getpid(), signal.SIGKILL)
    save_to_file(s, out, SaveOptions(fmt=fmt, codec=None if fmt == "elf" else "zlib", dump_levels=(0,)),
                 progress=progress)
""")


@pytest.mark.parametrize("fmt", ["kdump", "elf", "flat"])
def test_killed_mid_write_is_readable_and_incomplete(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "vmcore"
    p = subprocess.run([sys.executable, "-c", KILLER, fmt, str(out)], capture_output=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    part = tmp_path / "vmcore.incomplete"
    assert part.exists() and not out.exists()
    ref = synthetic_dump(ram=[(0, 8192)])
    with open_dump(str(part)) as d:
        assert d.incomplete
        dumped = d.dumped_runs()
        have = sum(e - s for s, e in dumped)
        assert 0 < have < 8192
        for s, e in dumped[:4]:
            for pfn in (s, e - 1):
                assert bytes(d.read_page(pfn)) == bytes(ref.read_page(pfn))
        assert d.page_state(8191) is PageState.MISSING


# -- the CLI ------------------------------------------------------------------------------
@pytest.fixture()
def elf_vmcore(tmp_path: Path) -> str:
    path = str(tmp_path / "src.elf")
    convert(src(), path, "elf")
    return path


def test_cli_save_kdump(tmp_path: Path, elf_vmcore: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    assert main(["save", "-l", "-d", "1", "--message-level", "0", elf_vmcore, out]) == 0
    with open_dump(out) as d, open_dump(elf_vmcore) as s:
        assert_same_pages(s, d)
    assert main(["save", "-l", "-d", "1", "--message-level", "0", elf_vmcore, out]) == 1  # exists
    assert main(["save", "-f", "-z", "-d", "1", "--message-level", "0", elf_vmcore, out]) == 0


def test_cli_save_fallback_levels_syntax(tmp_path: Path, elf_vmcore: str) -> None:
    out = str(tmp_path / "out")
    assert main(["save", "-c", "-d", "0,1", "--message-level", "0", elf_vmcore, out]) == 0
    assert main(["save", "-d", "0,99", elf_vmcore, str(tmp_path / "x")]) == 2


def test_cli_save_json(tmp_path: Path, elf_vmcore: str, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    out = str(tmp_path / "out")
    assert main(["save", "-E", "--json", elf_vmcore, out]) == 0
    cap = capsys.readouterr()
    result = json.loads(cap.out)
    assert result["format"] == "elf" and result["incomplete"] is False
    assert all(json.loads(line)["event"] == "progress" for line in cap.err.splitlines() if line.strip())


def test_cli_save_flat_to_stdout(tmp_path: Path, elf_vmcore: str) -> None:
    out = tmp_path / "out.flat"
    with open(out, "wb") as f:
        p = subprocess.run([sys.executable, "-m", "kdumpkit.cli.main", "save", "-F", "-l", "-d", "1",
                            "--message-level", "0", elf_vmcore], stdout=f, stderr=subprocess.PIPE, timeout=120)
    assert p.returncode == 0, p.stderr
    with open_dump(str(out)) as d, open_dump(elf_vmcore) as s:
        for pfn in (1, 100, 2500):
            assert bytes(d.read_page(pfn)) == bytes(s.read_page(pfn))


def test_cli_save_usage_errors(tmp_path: Path, elf_vmcore: str) -> None:
    assert main(["save", elf_vmcore]) == 2
    assert main(["save", "-F", elf_vmcore, str(tmp_path / "x")]) == 2
    assert main(["save", "-E", "-c", elf_vmcore, str(tmp_path / "x")]) == 2
    assert main(["save", "--split", elf_vmcore, str(tmp_path / "x")]) == 2


def test_cli_save_split(tmp_path: Path, elf_vmcore: str) -> None:
    outs = [str(tmp_path / f"s{i}") for i in range(2)]
    assert main(["save", "--split", "-z", "-d", "1", "--message-level", "0", elf_vmcore, *outs]) == 0
    with open_dump(outs) as d, open_dump(elf_vmcore) as s:
        assert bytes(d.read_page(2999)) == bytes(s.read_page(2999))


def test_cli_incomplete_exit_code(tmp_path: Path) -> None:
    path = str(tmp_path / "inc.elf")
    convert(synthetic_dump(ram=RAM, missing=[(100, 110)]), path, "elf")
    assert main(["save", "-d", "0", "--message-level", "0", path, str(tmp_path / "out")]) == 3
    with open_dump(str(tmp_path / "out")) as d:
        assert d.incomplete


def test_cli_dump_dmesg_needs_a_log(tmp_path: Path, elf_vmcore: str) -> None:
    assert main(["save", "--dump-dmesg", elf_vmcore, str(tmp_path / "log")]) != 0
    assert not (tmp_path / "log").exists()


def test_elf_short_gaps_written_as_zeros(tmp_path: Path) -> None:
    from kdumpkit.capture.elfgaps import ElfGapFill, fill_short_gaps

    assert fill_short_gaps([(0, 10), (20, 30), (400, 500)], [(0, 1000)]) == [(0, 30), (400, 500)]
    assert fill_short_gaps([(0, 10), (20, 30)], [(0, 15), (15, 40)]) == [(0, 10), (20, 30)]
    s = synthetic_dump(ram=[(0, 1000)], excluded=[(10, 20), (300, 700)])
    layer = ElfGapFill(s, exclude_zero=False)
    assert layer.dumped_runs() == [(0, 300), (700, 1000)]
    assert not any(bytes(layer.read_page(15))) and bytes(layer.read_page(9)) == bytes(s.read_page(9))
    out = tmp_path / "e"
    save_to_file(s, str(out), SaveOptions(fmt="elf", codec=None, dump_levels=(1,)))
    with open_dump(str(out)) as d:
        assert len(d.dumped_runs()) <= 2 and d.page_state(500) is PageState.EXCLUDED
