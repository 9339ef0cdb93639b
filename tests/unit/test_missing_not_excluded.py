"""Issue #19: never a silently wrong output — missing pages are not excluded, anywhere.

A truncated ELF dump (built from a synthetic dump) has MISSING pages.  verify
fails and names them; info counts them apart from excluded pages; every
convert output either records them (so info on the output still counts them)
or is refused with one line; a flattened stream cut short reads incomplete
and reassembles flagged incomplete or not at all; raw side files are created
safely; a broken AVML/LKCD input never leaves an empty, unopenable LiME file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kdumpkit.cli.main import main
from kdumpkit.dump import open_dump
from kdumpkit.dump.avml import write_avml
from kdumpkit.dump.base import Buffer, PageState
from kdumpkit.dump.convert import convert
from kdumpkit.dump.elf import write_elf
from kdumpkit.dump.flattened import FLAT_RECORD, FlattenedSink
from kdumpkit.dump.lime import write_lime
from kdumpkit.dump.lkcd import OFFSET_TO_FIRST_PAGE, write_lkcd
from kdumpkit.dump.sink import FileSink
from kdumpkit.dump.testing import SyntheticDump, assert_kept_pages_equal, synthetic_dump
from kdumpkit.errors import DumpError

PS = 4096
RAM = [(0, 300), (400, 700)]
EXCLUDED = [(50, 60)]
CUT = 20  # pages cut off the end of the ELF file
MARKING = ["kdump", "flat", "elf", "raw"]
REFUSING = ["lime", "lkcd"]


def _source(**kw: object) -> SyntheticDump:
    return synthetic_dump(ram=RAM, excluded=EXCLUDED, **kw)  # type: ignore[arg-type]


def _write_elf(src: SyntheticDump, path: Path) -> Path:
    with FileSink(str(path)) as sink:
        write_elf(src, sink)
    return path


@pytest.fixture()
def cut_elf(tmp_path: Path) -> Path:
    """An ELF dump whose last CUT pages were never written (a killed copy)."""
    whole = _write_elf(_source(), tmp_path / "whole")
    cut = tmp_path / "cut"
    cut.write_bytes(whole.read_bytes()[:-CUT * PS])
    return cut


def _info(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert main(["info", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _pages(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    return _info(path, capsys)["pages"]  # type: ignore[return-value]


def _leftovers(tmp_path: Path, name: str) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(name))


# -- the input: reader, verify, info ---------------------------------------------------------------

def test_truncated_elf_has_missing_pages_not_excluded(cut_elf: Path) -> None:
    with open_dump(str(cut_elf)) as d:
        assert d.incomplete
        assert d.missing_runs() == [(700 - CUT, 700)]
        assert d.page_state(699) is PageState.MISSING and d.page_state(55) is PageState.EXCLUDED
        assert d.page_counts() == {"ram": 600, "dumped": 570, "excluded": 10, "missing": CUT}


def test_verify_fails_and_names_missing_pages(cut_elf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(cut_elf)]) == 1
    out = capsys.readouterr().out
    assert f"{CUT} pages are missing" in out and "OK" not in out
    assert main(["verify", str(cut_elf), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert not rep["ok"] and rep["missing_pages"] == CUT and rep["incomplete"]


def test_info_counts_missing_apart_from_excluded(cut_elf: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    info = _info(cut_elf, capsys)
    assert info["incomplete"] is True
    assert info["pages"] == {"ram": 600, "dumped": 570, "excluded": 10, "missing": CUT}
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["info", str(cut_elf)]) == 0
    text = capsys.readouterr().out
    assert "570 dumped, 10 excluded, 20 MISSING" in text and "INCOMPLETE" in text


def test_complete_dump_still_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = _write_elf(_source(), tmp_path / "whole")
    assert main(["verify", str(whole)]) == 0
    assert _pages(whole, capsys) == {"ram": 600, "dumped": 590, "excluded": 10, "missing": 0}


# -- convert: every format records the missing pages, or refuses ------------------------------------

@pytest.mark.parametrize("fmt", MARKING)
def test_convert_records_missing_pages(cut_elf: Path, tmp_path: Path, fmt: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"out.{fmt}"
    assert main(["convert", str(cut_elf), str(out), "--format", fmt]) == 3
    assert f"{CUT} pages missing" in capsys.readouterr().err
    info = _info(out, capsys)
    assert info["incomplete"] is True
    assert info["pages"] == {"ram": 600, "dumped": 570, "excluded": 10, "missing": CUT}
    assert main(["verify", str(out)]) == 1
    with open_dump(str(cut_elf)) as a, open_dump(str(out)) as b:
        assert b.missing_runs() == a.missing_runs()
        assert b.page_state(690) is PageState.MISSING and b.page_state(55) is PageState.EXCLUDED
        assert assert_kept_pages_equal(a, b) == 570


@pytest.mark.parametrize("fmt", MARKING)
def test_missing_pages_in_the_middle_survive_every_format(tmp_path: Path, fmt: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Missing runs anywhere (not only a cut-off tail), through a chain of conversions."""
    src = _source(missing=[(100, 110), (450, 451)])
    elf = _write_elf(src, tmp_path / "holes.elf")
    assert _pages(elf, capsys) == {"ram": 600, "dumped": 579, "excluded": 10, "missing": 11}
    out = tmp_path / f"out.{fmt}"
    assert main(["convert", str(elf), str(out), "--format", fmt]) == 3
    back = tmp_path / "back.elf"
    assert main(["convert", str(out), str(back), "--format", "elf"]) == 3
    for path in (out, back):
        assert _pages(path, capsys) == {"ram": 600, "dumped": 579, "excluded": 10, "missing": 11}
        with open_dump(str(path)) as d:
            assert d.missing_runs() == [(100, 110), (450, 451)]
            assert assert_kept_pages_equal(src, d) == 579


@pytest.mark.parametrize("fmt", REFUSING)
def test_convert_refuses_formats_that_cannot_mark_missing(cut_elf: Path, tmp_path: Path, fmt: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"out.{fmt}"
    assert main(["convert", str(cut_elf), str(out), "--format", fmt]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot mark missing pages" in err and f"{CUT} pages missing" in err
    assert _leftovers(tmp_path, "out.") == []


def test_lime_writer_itself_refuses_an_incomplete_source() -> None:
    from kdumpkit.dump.sink import MemorySink

    with pytest.raises(DumpError, match="cannot mark missing pages"):
        write_lime(_source(missing=[(10, 12)]), MemorySink())


# -- flattened streams cut short ------------------------------------------------------------------

def _flat(tmp_path: Path, fmt: str = "flat") -> Path:
    whole = _write_elf(_source(), tmp_path / "whole")
    flat = tmp_path / "whole.flat"
    assert main(["convert", str(whole), str(flat), "--format", fmt]) == 0
    return flat


def test_flattened_stream_without_end_marker_reads_incomplete(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    flat = _flat(tmp_path)
    data = flat.read_bytes()
    assert data[-FLAT_RECORD.size:] == FLAT_RECORD.pack(offset=-1, buf_size=-1)
    no_marker = tmp_path / "no-marker.flat"
    no_marker.write_bytes(data[:-FLAT_RECORD.size])  # every page there, only the end marker lost
    assert _info(no_marker, capsys)["incomplete"] is True
    assert main(["verify", str(no_marker)]) == 1
    half = tmp_path / "half.flat"
    half.write_bytes(data[:len(data) // 2])
    info = _info(half, capsys)
    assert info["incomplete"] is True and info["pages"]["missing"] > 0  # type: ignore[index]


@pytest.mark.parametrize("keep", ["all-but-marker", "half"])
def test_reassemble_of_cut_stream_flags_out_incomplete(tmp_path: Path, keep: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = _flat(tmp_path).read_bytes()
    cut = tmp_path / "cut.flat"
    cut.write_bytes(data[:-FLAT_RECORD.size] if keep == "all-but-marker" else data[:len(data) // 2])
    out = tmp_path / "vmcore"
    capsys.readouterr()
    assert main(["reassemble", str(cut), str(out)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "flagged incomplete" in err
    assert not Path(str(out) + ".part").exists()
    assert _info(out, capsys)["incomplete"] is True
    assert main(["verify", str(out)]) == 1


def test_reassemble_of_cut_stream_that_cannot_be_flagged_leaves_nothing(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    stream = tmp_path / "lime.flat"
    with open(stream, "wb") as f:
        sink = FlattenedSink(f)
        write_lime(synthetic_dump(ram=RAM), sink)
        sink.abort()  # no end marker
    out = tmp_path / "mem.lime"
    assert main(["reassemble", str(stream), str(out)]) == 1
    assert "not written" in capsys.readouterr().err
    assert _leftovers(tmp_path, "mem.lime") == []


def test_reassemble_of_complete_stream_is_complete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vmcore"
    assert main(["reassemble", str(_flat(tmp_path)), str(out)]) == 0
    assert _info(out, capsys)["incomplete"] is False
    assert (out.stat().st_mode & 0o777) == 0o600


# -- raw side files -------------------------------------------------------------------------------

@pytest.mark.parametrize("side", [".memmap", ".notes"])
def test_raw_side_file_symlink_is_never_followed(tmp_path: Path, side: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    whole = _write_elf(_source(), tmp_path / "whole")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "mem.raw"
    os.symlink(victim, str(out) + side)
    assert main(["convert", str(whole), str(out), "--format", "raw"]) == 1
    assert "exists" in capsys.readouterr().err
    assert not out.exists() and victim.read_bytes() == b"precious"
    assert main(["convert", str(whole), str(out), "--format", "raw", "--force"]) == 0
    assert victim.read_bytes() == b"precious"
    link = Path(str(out) + side)
    assert not link.is_symlink() and (link.stat().st_mode & 0o777) == 0o600


def test_raw_side_files_refused_without_force_replaced_with_it(tmp_path: Path) -> None:
    whole = _write_elf(_source(), tmp_path / "whole")
    out = tmp_path / "mem.raw"
    memmap = Path(str(out) + ".memmap")
    memmap.write_text("old\n")
    memmap.chmod(0o644)
    assert main(["convert", str(whole), str(out), "--format", "raw"]) == 1
    assert memmap.read_text() == "old\n" and not out.exists()
    old_umask = os.umask(0)
    try:
        assert main(["convert", str(whole), str(out), "--format", "raw", "--force"]) == 0
    finally:
        os.umask(old_umask)
    for p in (out, memmap, Path(str(out) + ".notes")):
        assert (p.stat().st_mode & 0o777) == 0o600
    assert "System RAM" in memmap.read_text()


def test_part_file_symlink_is_never_followed(tmp_path: Path) -> None:
    whole = _write_elf(_source(), tmp_path / "whole")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.kdump"
    os.symlink(victim, str(out) + ".part")
    assert main(["convert", str(whole), str(out), "--format", "kdump"]) == 0
    assert victim.read_bytes() == b"precious" and (out.stat().st_mode & 0o777) == 0o600


class _FailingDump(SyntheticDump):
    """Fails to read pages past pfn 200: a read error in the middle of a conversion."""

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        if pfn + count > 200:
            raise DumpError("simulated read error")
        return super()._read_dumped(pfn, count)


def test_raw_side_files_removed_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "mem.raw"
    with pytest.raises(DumpError):
        convert(_FailingDump(ram=RAM), str(out), "raw")
    assert _leftovers(tmp_path, "mem.raw") == []
    real_replace = os.replace

    def failing_replace(a: str, b: str) -> None:
        if str(b).endswith(".notes"):
            raise OSError(28, "No space left on device")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        convert(_source(), str(out), "raw")
    assert _leftovers(tmp_path, "mem.raw") == []


# -- broken AVML / LKCD inputs never leave an unopenable LiME file ----------------------------------

def _broken_avml(tmp_path: Path) -> Path:
    from kdumpkit.dump.sink import MemorySink

    sink = MemorySink()
    write_avml(synthetic_dump(ram=[(0, 64)], zero_fraction=0), sink)
    p = tmp_path / "broken.avml"
    p.write_bytes(bytes(sink.buf[:len(sink.buf) // 2]))  # cut inside the only block
    return p


def _broken_lkcd(tmp_path: Path) -> Path:
    from kdumpkit.dump.sink import MemorySink

    sink = MemorySink()
    write_lkcd(synthetic_dump(ram=[(0, 64)]), sink)
    p = tmp_path / "broken.lkcd"
    p.write_bytes(bytes(sink.buf[:OFFSET_TO_FIRST_PAGE + 8]))  # the header, then half a page record
    return p


@pytest.mark.parametrize("make", [_broken_avml, _broken_lkcd])
def test_broken_input_to_lime_leaves_no_output(tmp_path: Path, make: object,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    broken = make(tmp_path)  # type: ignore[operator]
    with open_dump(str(broken)) as d:
        assert d.incomplete and not d.dumped_runs()
    assert main(["verify", str(broken)]) == 1
    out = tmp_path / "out.lime"
    capsys.readouterr()
    assert main(["convert", str(broken), str(out), "--format", "lime"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert _leftovers(tmp_path, "out.lime") == []


def test_lime_of_a_dump_without_ram_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kdumpkit.dump.sink import MemorySink

    sink = MemorySink()
    write_lkcd(synthetic_dump(ram=[]), sink)  # complete (END record) but empty
    empty = tmp_path / "empty.lkcd"
    empty.write_bytes(bytes(sink.buf))
    out = tmp_path / "out.lime"
    assert main(["convert", str(empty), str(out), "--format", "lime"]) == 1
    assert "no RAM" in capsys.readouterr().err
    assert _leftovers(tmp_path, "out.lime") == []


def test_avml_block_cut_short_is_missing(tmp_path: Path) -> None:
    with open_dump(str(_broken_avml(tmp_path))) as d:
        assert d.missing_runs() == [(0, 64)] and d.page_state(3) is PageState.MISSING
        assert d.page_counts()["missing"] == 64


def test_peer_reading_elf_output_faults_on_missing_pages(tmp_path: Path) -> None:
    """drgn (libdrgn's ELF reader) sees a missing page as unreadable, not as zeros."""
    drgn = pytest.importorskip("drgn")
    src = synthetic_dump(ram=[(0, 64)], missing=[(40, 44)], vmcoreinfo="")
    core = _write_elf(src, tmp_path / "core")
    prog = drgn.Program()
    prog.set_core_dump(str(core))
    assert prog.read(10 * PS, 8, True) == bytes(src.read_page(10))[:8]
    with pytest.raises(drgn.FaultError):
        prog.read(41 * PS, 8, True)


@pytest.mark.parametrize("fmt", [*MARKING, *REFUSING])
def test_incomplete_input_with_unknown_missing_pages(tmp_path: Path, fmt: str) -> None:
    """Flagged incomplete but no page known missing (an ELF e_flags bit, an LKCD without END): the flag survives."""
    src = _source()
    src.incomplete = True
    out = tmp_path / f"out.{fmt}"
    if fmt == "lime":
        with pytest.raises(DumpError, match="which pages are missing is unknown"):
            convert(src, str(out), fmt)
        assert _leftovers(tmp_path, "out.") == []
        return
    convert(src, str(out), fmt)
    with open_dump(str(out)) as d:
        assert d.incomplete and d.missing_runs() == []


def test_split_pieces_record_missing_pages() -> None:
    from kdumpkit.dump.fileio import BytesSource
    from kdumpkit.dump.kdump import KdumpFile
    from kdumpkit.dump.sink import MemorySink
    from kdumpkit.dump.split import SplitDump, write_kdump_split

    src = synthetic_dump(ram=[(0, 3000)], excluded=[(100, 200)], missing=[(250, 300), (1500, 1510), (2990, 3000)])
    sinks = [MemorySink() for _ in range(3)]
    write_kdump_split(src, sinks)
    d = SplitDump([KdumpFile(BytesSource(bytes(s.buf))) for s in sinks])
    assert d.incomplete and d.missing_runs() == src.missing_runs()
    assert d.page_counts() == {"ram": 3000, "dumped": 2830, "excluded": 100, "missing": 70}
    assert assert_kept_pages_equal(src, d) == 2830
