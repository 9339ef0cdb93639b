"""Untransformed pages are copied by the kernel (copy_file_range), with the same bytes as the read path.

Issue #9: conversions to uncompressed targets must run near a plain copy.
The ELF writer and the kdump writer without compression or zero sharing ask
the source for the file extent of each batch and the sink to copy it; any
failure but a full disk falls back to reading, so the output never differs.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.capture.tolerant import TolerantDump
from kdumpkit.dump import open_dump
from kdumpkit.dump.convert import write_to_sink
from kdumpkit.dump.elf import write_elf
from kdumpkit.dump.sink import FileSink, MemorySink
from kdumpkit.dump.testing import assert_kept_pages_equal, synthetic_dump
from kdumpkit.errors import NoSpaceError


@pytest.fixture
def elf_file(tmp_path: Path) -> Path:
    src = synthetic_dump(ram=[(0, 3000), (4096, 6000)], excluded=[(100, 200)], seed=3)
    path = tmp_path / "in.elf"
    with FileSink(str(path)) as sink:
        write_elf(src, sink)
    return path


def _count_copies(monkeypatch: pytest.MonkeyPatch, fail: int | None = None) -> list[int]:
    calls: list[int] = []
    real = os.copy_file_range

    def fake(src: int, dst: int, count: int, offset_src: Any = None, offset_dst: Any = None) -> int:
        calls.append(count)
        if fail is not None:
            raise OSError(fail, os.strerror(fail))
        return real(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", fake)
    return calls


def _both(source_path: Path, tmp_path: Path, fmt: str, **kw: Any) -> tuple[bytes, bytes]:
    """(file written with kernel copies allowed, same written in memory by the read path)."""
    out = tmp_path / f"out.{fmt}"
    with open_dump(str(source_path)) as d, FileSink(str(out), overwrite=True) as sink:
        write_to_sink(d, sink, fmt, **kw)
    mem = MemorySink()
    with open_dump(str(source_path)) as d:
        write_to_sink(d, mem, fmt, **kw)
    return out.read_bytes(), bytes(mem.buf)


@pytest.mark.parametrize("fmt,kw", [("elf", {}), ("kdump", {"codec": None})])
def test_kernel_copy_gives_the_read_path_bytes(elf_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               fmt: str, kw: dict[str, Any]) -> None:
    calls = _count_copies(monkeypatch)
    copied, read = _both(elf_file, tmp_path, fmt, **kw)
    assert calls, "no copy_file_range: the fast path was not taken"
    assert copied == read
    with open_dump(str(elf_file)) as a, open_dump(str(tmp_path / f"out.{fmt}")) as b:
        assert assert_kept_pages_equal(a, b) == 3000 + 1904 - 100


def test_elf_to_elf_is_the_same_file(elf_file: Path, tmp_path: Path) -> None:
    copied, _ = _both(elf_file, tmp_path, "elf")
    assert copied == elf_file.read_bytes()


@pytest.mark.parametrize("err", [errno.EXDEV, errno.EINVAL, errno.ENOSYS])
def test_unsupported_copy_falls_back_once(elf_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          err: int) -> None:
    calls = _count_copies(monkeypatch, fail=err)
    copied, read = _both(elf_file, tmp_path, "elf")
    assert copied == read
    assert len(calls) == 1  # the sink stops asking after the first refusal


def test_copy_eio_reads_the_pages_instead(elf_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO from a kernel copy (a bad /proc/vmcore page) goes to the read path, which records holes."""
    calls = _count_copies(monkeypatch, fail=errno.EIO)
    out = tmp_path / "out.kdump"
    with open_dump(str(elf_file)) as d, FileSink(str(out)) as sink:
        tol = TolerantDump(d)
        write_to_sink(tol, sink, "kdump", codec=None)
        assert not tol.missing  # the reads themselves succeed
    assert len(calls) > 1  # EIO is per range: the next batch tries again
    with open_dump(str(elf_file)) as a, open_dump(str(out)) as b:
        assert_kept_pages_equal(a, b)


def test_copy_enospc_is_no_space(elf_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _count_copies(monkeypatch, fail=errno.ENOSPC)
    with open_dump(str(elf_file)) as d, FileSink(str(tmp_path / "o")) as sink, pytest.raises(NoSpaceError):
        write_to_sink(d, sink, "elf")


def test_in_memory_sources_take_the_read_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_copies(monkeypatch)
    src = synthetic_dump(ram=[(0, 64)])
    with FileSink(str(tmp_path / "o")) as sink:
        write_elf(src, sink)
    assert calls == []
