"""kdump-compressed, flattened and split against the real makedumpfile and crash, on synthetic dumps.

makedumpfile accepts :func:`makedumpfile_ready_dump` as ELF input at dump
levels 0 and 1, so for the same input our writer's output can be compared
with makedumpfile's byte for byte (raw and lzo pages; zlib when our codec is
pinned to stdlib zlib, since zlib-ng compresses to other, equally valid bytes).
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdumpkit.dump import codecs
from kdumpkit.dump.elf import ElfDump, write_elf
from kdumpkit.dump.fileio import MappedFile
from kdumpkit.dump.flattened import FlattenedFile, FlattenedSink
from kdumpkit.dump.kdump import KdumpFile, write_kdump, write_kdump_piece
from kdumpkit.dump.sink import FileSink
from kdumpkit.dump.split import SplitDump
from kdumpkit.dump.testing import MAKEDUMPFILE_UTSNAME, assert_same_pages, makedumpfile_ready_dump

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("makedumpfile") is None, reason="makedumpfile not installed (make apt)"),
]


def _mdf(*args: str | Path, stdin: Path | None = None) -> None:
    with open(stdin, "rb") if stdin else open("/dev/null", "rb") as f:
        r = subprocess.run(["makedumpfile", *map(str, args)], stdin=f, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def synth_elf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("mdf")
    src = makedumpfile_ready_dump(ram=[(0, 256), (512, 1024), (1100, 1300)], excluded=[(600, 620), (1200, 1201)])
    path = d / "synthetic.elf"
    sink = FileSink(str(path))
    write_elf(src, sink)
    sink.close()
    yield path


def _ours(source: ElfDump, path: Path, **kw: object) -> bytes:
    sink = FileSink(str(path), overwrite=True)
    write_kdump(source, sink, utsname=MAKEDUMPFILE_UTSNAME, **kw)  # type: ignore[arg-type]
    sink.close()
    return path.read_bytes()


@pytest.fixture
def stdlib_zlib() -> Iterator[None]:
    saved = codecs._cache.pop("zlib", None)
    codecs._cache["zlib"] = codecs.Codec("zlib", codecs.FLAG_ZLIB, lambda b: zlib.compress(b, 1), codecs._zlib_decompress)
    yield
    codecs._cache.pop("zlib")
    if saved is not None:
        codecs._cache["zlib"] = saved


@pytest.mark.parametrize("opts,kw", [
    (["-d", "0"], {"codec": None}),
    (["-d", "1"], {"codec": None, "exclude_zero": True}),
    (["-l", "-d", "0"], {"codec": "lzo"}),
    (["-l", "-d", "1"], {"codec": "lzo", "exclude_zero": True}),
    (["-c", "-d", "1"], {"codec": "zlib", "exclude_zero": True}),
])
def test_byte_equal_to_makedumpfile(synth_elf: Path, tmp_path: Path, opts: list[str], kw: dict[str, object],
                                    stdlib_zlib: None) -> None:
    theirs = tmp_path / "theirs"
    _mdf(*opts, synth_elf, theirs)
    elf = ElfDump(MappedFile(str(synth_elf)))
    ours = _ours(elf, tmp_path / "ours", **kw)
    assert ours == theirs.read_bytes()
    k = KdumpFile(MappedFile(str(theirs)))
    assert_same_pages(elf, k)
    assert k.notes() == elf.notes()


@pytest.mark.parametrize("opts", [["-c", "-d", "0"], ["-c", "-d", "1"], ["-p", "-d", "1"]])
def test_our_reader_on_makedumpfile_output(synth_elf: Path, tmp_path: Path, opts: list[str]) -> None:
    theirs = tmp_path / "theirs"
    _mdf(*opts, synth_elf, theirs)
    elf = ElfDump(MappedFile(str(synth_elf)))
    assert_same_pages(elf, KdumpFile(MappedFile(str(theirs))))


def test_makedumpfile_flattened_read_in_place(synth_elf: Path, tmp_path: Path) -> None:
    flat = tmp_path / "theirs.flat"
    with open(flat, "wb") as f:
        r = subprocess.run(["makedumpfile", "-F", "-l", "-d", "1", str(synth_elf)], stdout=f, stderr=subprocess.PIPE,
                           timeout=120)
    assert r.returncode == 0, r.stderr
    plain = tmp_path / "theirs.kdump"
    _mdf("-R", plain, stdin=flat)
    ff = FlattenedFile(MappedFile(str(flat)))
    assert ff.complete and ff.read(0, ff.size) == plain.read_bytes()
    assert_same_pages(ElfDump(MappedFile(str(synth_elf))), KdumpFile(ff))


def test_makedumpfile_reassembles_our_flattened_stream(synth_elf: Path, tmp_path: Path) -> None:
    elf = ElfDump(MappedFile(str(synth_elf)))
    plain = _ours(elf, tmp_path / "ours.kdump", codec="zlib", exclude_zero=True)
    flat = tmp_path / "ours.flat"
    with open(flat, "wb") as f:
        sink = FlattenedSink(f)
        write_kdump(elf, sink, codec="zlib", exclude_zero=True, utsname=MAKEDUMPFILE_UTSNAME)
        sink.close()
    out = tmp_path / "reassembled"
    _mdf("-R", out, stdin=flat)
    assert out.read_bytes() == plain


def test_split_byte_equal_and_readable(synth_elf: Path, tmp_path: Path) -> None:
    pieces = [tmp_path / f"s{i}" for i in range(3)]
    _mdf("--split", "-l", "-d", "1", synth_elf, *pieces)
    elf = ElfDump(MappedFile(str(synth_elf)))
    with SplitDump.open([str(p) for p in pieces]) as sd:
        assert_same_pages(elf, sd)
        ranges = [(p.start_pfn, p.end_pfn) for p in sd.pieces]
    for path, rng in zip(pieces, ranges, strict=True):
        sink = FileSink(str(tmp_path / "mine"), overwrite=True)
        write_kdump_piece(elf, sink, dumped=elf.dumped_runs(), piece=rng, codec="lzo", exclude_zero=True,
                          utsname=MAKEDUMPFILE_UTSNAME)
        sink.close()
        assert (tmp_path / "mine").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("codec", ["zlib", "lzo", None])  # Debian's makedumpfile lacks snappy/zstd
def test_makedumpfile_refilters_our_kdump(synth_elf: Path, tmp_path: Path, codec: str | None) -> None:
    """makedumpfile takes our kdump file as input and writes the same pages back."""
    elf = ElfDump(MappedFile(str(synth_elf)))
    ours = tmp_path / "ours.kdump"
    _ours(elf, ours, codec=codec)
    again = tmp_path / "again"
    _mdf("-l", "-d", "1", ours, again)
    k = KdumpFile(MappedFile(str(again)))
    assert_same_pages(elf, k)


@pytest.mark.skipif(shutil.which("crash") is None, reason="crash not installed")
def test_crash_accepts_our_kdump(synth_elf: Path, tmp_path: Path) -> None:
    elf = ElfDump(MappedFile(str(synth_elf)))
    for codec in ("zlib", "lzo", None):
        ours = tmp_path / f"ours-{codec}"
        _ours(elf, ours, codec=codec, exclude_zero=True)
        r = subprocess.run(["crash", "--osrelease", str(ours)], capture_output=True, text=True, timeout=60)
        assert r.stdout.strip() == MAKEDUMPFILE_UTSNAME["release"], r.stderr
