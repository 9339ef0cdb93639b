"""Parallel kdump writing from a reopenable source gives the same bytes as one worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpkit.capture.filter import FilteredDump
from kdumpkit.dump import open_dump
from kdumpkit.dump.elf import write_elf
from kdumpkit.dump.kdump import write_kdump
from kdumpkit.dump.sink import FileSink, MemorySink
from kdumpkit.dump.testing import synthetic_dump


@pytest.mark.parametrize("codec", ["lzo", "zstd", "zlib", None])
def test_reopened_workers_match_serial(tmp_path: Path, codec: str | None) -> None:
    elf = tmp_path / "vmcore"
    with FileSink(str(elf)) as sink:
        write_elf(synthetic_dump(ram=[(0, 3000), (4000, 5000)], excluded=[(100, 140)]), sink)
    outs = []
    for workers in (1, 2):
        with open_dump(str(elf)) as src:
            assert src.reopen_spec() == (str(elf), "elf")
            sink = MemorySink()
            write_kdump(src, sink, codec=codec, exclude_zero=True, workers=workers)
            outs.append(bytes(sink.buf))
    assert outs[0] == outs[1]


def test_memory_only_sources_are_not_reopenable() -> None:
    assert synthetic_dump().reopen_spec() is None
    assert FilteredDump.reopen_spec is not None  # layers decide for themselves
