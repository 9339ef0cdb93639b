"""Fuzzing every parser and writer: mutated and truncated dumps raise only kdumpkit errors.

``make test`` runs a bounded number of examples; ``make fuzz`` sets
``KDUMPKIT_FUZZ_EXAMPLES`` for a longer run.  Each case opens the mutated file
through the same detection the CLI uses and reads every page it claims; the
writer case then converts it to every output format (with ``convert``'s
up-front limits) and reads the result back.  Every case runs in a forked child
under ``RLIMIT_AS`` and an alarm, so a header that makes a reader or writer
allocate or loop by what it claims fails the case instead of the machine.
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import signal
import tempfile
import traceback
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
from kdumpkit.errors import KdumpkitError, NoSpaceError

EXAMPLES = int(os.environ.get("KDUMPKIT_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 1000,
                    suppress_health_check=list(HealthCheck))
CHILD_MEMORY = 512 << 20  # address space a case may add to this process's
CHILD_SECONDS = 60  # a case that runs longer is a hang (generous: CI machines are shared)
OUTPUT_BUDGET = 64 << 20  # bytes an output may take; past it the "disk" is full


def in_child(case: Callable[[], None]) -> str | None:
    """Run ``case`` in a forked child under a memory limit and an alarm.

    Returns None when it finished (kdumpkit errors count as finishing: they
    are the promised outcome for bad input), else what went wrong: the
    traceback of any other exception, a timeout, or a signal.
    """
    vm_now = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        msg = b""
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_AS, (vm_now + CHILD_MEMORY, vm_now + CHILD_MEMORY))
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # pytest-timeout's handler would only raise
            signal.alarm(CHILD_SECONDS)
            case()
        except KdumpkitError:
            pass
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails the case
            msg = traceback.format_exc().encode(errors="replace")[-20000:]
        finally:
            os.write(w, msg)
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"timed out after {CHILD_SECONDS} s" if sig == signal.SIGALRM else f"killed by signal {sig}"
    return out.decode(errors="replace") or None


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


def _open(data: bytes) -> Dump:
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
    dump: Dump = _reader(name)(src)
    return dump


def _open_and_read_all(data: bytes) -> None:
    dump = _open(data)
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
    failure = in_child(lambda: _open_and_read_all(data))
    assert failure is None, failure


class BudgetSink(MemorySink):
    """An in-memory output that is "full" past :data:`OUTPUT_BUDGET` bytes."""

    def pwrite(self, offset: int, data: object) -> None:
        if offset + len(data) > OUTPUT_BUDGET:  # type: ignore[arg-type]
            raise NoSpaceError(f"fuzz output budget of {OUTPUT_BUDGET} bytes at offset {offset}")
        super().pwrite(offset, data)  # type: ignore[arg-type]


#: KDUMPKIT_FUZZ_FORMATS=elf,kdump narrows the writers (e.g. to look past one known failure)
OUTPUT_FORMATS = os.environ.get("KDUMPKIT_FUZZ_FORMATS", "elf,kdump,flat,lime,raw,lkcd").split(",")


def _write(source: Dump, fmt: str, tmp: str) -> Callable[[], Dump]:
    """``source`` written as ``fmt`` the way ``convert`` does (limits first); returns how to open the result."""
    from kdumpkit.dump.convert import check_limits, write_to_sink
    from kdumpkit.dump.detect import open_dump

    check_limits(source, fmt, free_bytes=OUTPUT_BUDGET, where="the fuzz budget")
    if fmt == "raw":  # the image needs its .memmap beside it
        path = os.path.join(tmp, "out.raw")
        from kdumpkit.dump.sink import FileSink

        with FileSink(path, overwrite=True) as fsink:
            write_to_sink(source, fsink, fmt, path=path)
        return lambda: open_dump(path, format="raw")
    if fmt == "flat":
        from kdumpkit.dump.flattened import FlattenedSink

        stream = io.BytesIO()
        with FlattenedSink(stream) as flat:
            write_to_sink(source, flat, fmt)
        return lambda: _open(stream.getvalue())
    sink = BudgetSink()
    write_to_sink(source, sink, fmt)
    return lambda: _open(bytes(sink.buf))


def _convert_and_read_back(data: bytes) -> None:
    """Every format ``data`` converts to reads back with the pages the source could read."""
    source = _open(data)
    tmp = tempfile.mkdtemp(prefix="kdumpkit-fuzz-")
    try:
        for fmt in OUTPUT_FORMATS:
            try:
                reopen = _write(source, fmt, tmp)
            except KdumpkitError:
                continue  # refused or failed cleanly: that is allowed
            try:  # what was written without complaint must read back
                _same_readable_pages(source, reopen(), fmt)
            except KdumpkitError as e:
                raise AssertionError(f"{fmt} output does not read back: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _same_readable_pages(source: Dump, out: Dump, fmt: str) -> None:
    ps = source.page_size
    for start, end in source.dumped_runs()[:16]:
        for pfn in range(start, min(end, start + 16)):
            try:
                want = bytes(source.read_page(pfn))
            except KdumpkitError:
                continue
            got = out.read(pfn * ps, ps)
            assert got == want, f"{fmt}: page {pfn:#x} differs after conversion"


@pytest.mark.timeout(1200)
@SETTINGS
@given(mutated())
def test_fuzz_writers(data: bytes) -> None:
    failure = in_child(lambda: _convert_and_read_back(data))
    if failure and os.environ.get("KDUMPKIT_FUZZ_SAVE"):
        with open(os.environ["KDUMPKIT_FUZZ_SAVE"], "wb") as f:
            f.write(data)
    assert failure is None, failure


@SETTINGS
@given(st.binary(max_size=512))
def test_fuzz_notes(blob: bytes) -> None:
    try:
        parse_notes(blob)
        parse_notes(blob, "big")
    except KdumpkitError:
        pass
