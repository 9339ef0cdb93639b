"""Fuzzing every parser: mutated and truncated dumps raise only kdumpkit errors.

``make test`` runs a bounded number of examples; ``make fuzz`` sets
``KDUMPKIT_FUZZ_EXAMPLES`` for a longer run.  Each case opens the mutated file
through the same detection the CLI uses and reads every page it claims.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdumpkit.dump.base import Dump
from kdumpkit.dump.elf import write_elf
from kdumpkit.dump.elfnotes import parse_notes
from kdumpkit.dump.fileio import BytesSource
from kdumpkit.dump.lime import write_lime
from kdumpkit.dump.sink import MemorySink
from kdumpkit.dump.testing import synthetic_dump
from kdumpkit.errors import KdumpkitError

EXAMPLES = int(os.environ.get("KDUMPKIT_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 1000,
                    suppress_health_check=list(HealthCheck))


def _writers() -> dict[str, Callable[[Dump, MemorySink], object]]:
    w: dict[str, Callable[[Dump, MemorySink], object]] = {"elf": write_elf, "lime": write_lime}
    try:
        from kdumpkit.dump.kdump import write_kdump

        w["kdump"] = lambda s, k: write_kdump(s, k, codec="zlib", exclude_zero=True)
        w["kdump-raw"] = lambda s, k: write_kdump(s, k, codec=None)
    except ImportError:
        pass
    try:
        from kdumpkit.dump.avml import write_avml
        from kdumpkit.dump.lkcd import write_lkcd

        w["lkcd"] = lambda s, k: write_lkcd(s, k, compression="gzip")
        w["lkcd-rle"] = lambda s, k: write_lkcd(s, k, compression="rle")
        w["avml"] = write_avml
    except ImportError:
        pass
    return w


def _sample(fmt: str) -> bytes:
    src = synthetic_dump(ram=[(0, 24), (40, 56)], excluded=[(4, 6)], zero_fraction=0.3)
    sink = MemorySink()
    _writers()[fmt](src, sink)
    return bytes(sink.buf)


SAMPLES = {fmt: _sample(fmt) for fmt in _writers()}


def _flattened(data: bytes) -> bytes | None:
    try:
        from kdumpkit.dump.flattened import FlattenedSink
    except ImportError:
        return None
    import io

    buf = io.BytesIO()
    sink = FlattenedSink(buf)
    sink.pwrite(0, data[: len(data) // 2])
    sink.pwrite(len(data) // 2, data[len(data) // 2:])
    sink.close()
    return buf.getvalue()


def _open_and_read_all(data: bytes) -> None:
    from kdumpkit.dump.detect import PROBES, _reader, detect_format

    src = BytesSource(data, name="fuzz")
    try:
        from kdumpkit.dump.flattened import FlattenedFile, is_flattened

        if is_flattened(src):
            src = FlattenedFile(src)  # type: ignore[assignment]
    except ImportError:
        pass
    name = detect_format(src)
    assert name in {p[0] for p in PROBES}
    dump = _reader(name)(src)
    for start, end in dump.dumped_runs()[:64]:
        for pfn in range(start, min(end, start + 64)):
            dump.read_page(pfn)
    dump.read(0, 3 * dump.page_size, zero_excluded=True)
    dump.vmcoreinfo_raw()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    fmt = draw(st.sampled_from(sorted(SAMPLES)))
    data = bytearray(SAMPLES[fmt])
    if draw(st.booleans()):
        flat = _flattened(bytes(data))
        if flat is not None:
            data = bytearray(flat)
    # Mutations concentrate on headers (first 16 KiB), where parsers decide things.
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, min(len(data), 16384) - 1))
        kind = draw(st.sampled_from(["byte", "word", "ones"]))
        if kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "word":
            data[pos:pos + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
        else:
            data[pos:pos + 8] = b"\xff" * 8
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.mark.timeout(600)
@SETTINGS
@given(mutated())
def test_fuzz_dump_parsers(data: bytes) -> None:
    try:
        _open_and_read_all(data)
    except KdumpkitError:
        pass


@SETTINGS
@given(st.binary(max_size=512))
def test_fuzz_notes(blob: bytes) -> None:
    try:
        parse_notes(blob)
        parse_notes(blob, "big")
    except KdumpkitError:
        pass
