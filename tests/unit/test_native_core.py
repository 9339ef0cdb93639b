"""The native page loop (``_native.c``) writes exactly the bytes of its pure-Python twin.

Windows of random, all-zero, compressible and nearly-incompressible pages go
through both paths for every codec, both byte orders, with and without the
shared zero page; whole kdump files are written both ways; and when the
extension cannot be imported the writer falls back to Python with the same
output.  Python's zlib at level 1 is also the one makedumpfile calls
(``compress2(.., Z_BEST_SPEED)``), so the zlib pages must equal it.
"""

from __future__ import annotations

import random
import sys
import zlib
from collections.abc import Iterator

import pytest

from kdumpkit.dump import codecs, kdump
from kdumpkit.dump.kdump import PAGE_DESC, KdumpFile, _encode_window_py, encode_window, rebase_descs, write_kdump
from kdumpkit.dump.sink import MemorySink
from kdumpkit.dump.testing import synthetic_dump

native = kdump.native_core()
needs_native = pytest.mark.skipif(native is None, reason="native core not built (pip install -e . with a C compiler)")

PS = 4096


def _pages(seed: int, page_size: int = PS) -> bytes:
    """A window mixing every kind of page a dump holds, in a seeded order."""
    rnd = random.Random(seed)
    kinds = [
        lambda: bytes(page_size),  # zero
        lambda: rnd.randbytes(page_size),  # incompressible: stored raw
        lambda: (b"kernel text " * page_size)[:page_size],  # very compressible
        lambda: bytes(page_size - 1) + b"\x01",  # zero but for the last byte
        lambda: b"\x01" + bytes(page_size - 1),
        lambda: rnd.randbytes(page_size // 2) + bytes(page_size // 2),  # half random
        lambda: bytes(rnd.choice(b"ab\x00") for _ in range(page_size)),  # low entropy, no runs
        lambda: rnd.randbytes(page_size - 40) + bytes(40),  # compresses to about a page: the raw/compressed edge
    ]
    return b"".join(rnd.choice(kinds)() for _ in range(64))


def _native_codecs() -> Iterator[str | None]:
    yield None
    for name in ("zlib", "lzo", "zstd"):
        if native is not None and codecs.codec(name).flag in native.CODECS:
            yield name


@needs_native
@pytest.mark.parametrize("codec", list(_native_codecs()))
@pytest.mark.parametrize("share_zero", [False, True])
@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("seed", [1, 2])
def test_native_window_equals_python(codec: str | None, share_zero: bool, byteorder: str, seed: int) -> None:
    data = _pages(seed)
    args = (codec, PS, data, share_zero, 123 * PS, 7 * PS, byteorder)
    ours = encode_window(*args)
    assert ours == _encode_window_py(*args)
    blob, descs, zeros = ours
    assert len(descs) == 64 * PAGE_DESC.size and zeros > 0
    # the descriptors walk the blob with no gap: every stored page starts where the last ended
    d = PAGE_DESC.with_byteorder(byteorder)
    stored = [r for r in (d.unpack(descs[i:i + d.size]) for i in range(0, len(descs), d.size))
              if not (share_zero and r.offset == 7 * PS)]
    assert [r.offset for r in stored] == [123 * PS + sum(r.size for r in stored[:i]) for i in range(len(stored))]
    assert sum(r.size for r in stored) == len(blob)


@needs_native
@pytest.mark.parametrize("page_size", [512, 16384, 65536])
def test_other_page_sizes(page_size: int) -> None:
    data = _pages(3, page_size)[: 8 * page_size]
    for codec in _native_codecs():
        args = (codec, page_size, data, True, 0, -1, "<")
        assert encode_window(*args) == _encode_window_py(*args)


@needs_native
def test_zlib_pages_are_makedumpfiles() -> None:
    """Level 1 of the same zlib: each compressed page is ``compress2(page, Z_BEST_SPEED)``."""
    data = _pages(4)
    blob, descs, _ = encode_window("zlib", PS, data, False, 0, -1, "<")
    d = PAGE_DESC.with_byteorder("<")
    for i in range(64):
        r = d.unpack(descs[i * d.size:(i + 1) * d.size])
        page = data[i * PS:(i + 1) * PS]
        expect = zlib.compress(page, 1)
        if len(expect) < PS:
            assert r.flags == codecs.FLAG_ZLIB and blob[r.offset:r.offset + r.size] == expect
        else:
            assert r.flags == 0 and blob[r.offset:r.offset + r.size] == page


@needs_native
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_rebase_native_equals_python(byteorder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _, descs, _ = encode_window("zlib", PS, _pages(5), True, 0, -1, byteorder)
    fast = rebase_descs(descs, 10 * PS, 3 * PS, byteorder)
    monkeypatch.setenv("KDUMPKIT_NATIVE", "0")
    kdump.native_core.cache_clear()
    try:
        assert rebase_descs(descs, 10 * PS, 3 * PS, byteorder) == fast
    finally:
        kdump.native_core.cache_clear()
    assert fast == encode_window("zlib", PS, _pages(5), True, 10 * PS, 3 * PS, byteorder)[1]


@needs_native
def test_bad_arguments_raise() -> None:
    assert native is not None
    with pytest.raises(ValueError):
        native.encode(1, 1, PS, bytes(PS + 1), False, 0, -1, False)
    with pytest.raises(ValueError):
        native.encode(0x04, 1, PS, bytes(PS), False, 0, -1, False)  # snappy: never native
    with pytest.raises(ValueError):
        native.rebase(bytes(25), 0, 0, False)


def _write_all(**kw: object) -> bytes:
    src = synthetic_dump(ram=[(0, 700), (900, 1500)], excluded=[(50, 90)])
    sink = MemorySink()
    write_kdump(src, sink, **kw)  # type: ignore[arg-type]
    return bytes(sink.buf)


@pytest.fixture
def without_native(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The extension's import fails, as on a machine that had no compiler at install time."""
    monkeypatch.setitem(sys.modules, "kdumpkit.dump._native", None)  # makes the import raise ImportError
    kdump.native_core.cache_clear()
    yield
    kdump.native_core.cache_clear()


@pytest.mark.parametrize("codec", ["zlib", "lzo", "zstd", "snappy", None])
def test_fallback_when_import_fails(codec: str | None, without_native: None) -> None:
    assert kdump.native_core() is None
    src = synthetic_dump(ram=[(0, 300)])
    stats = write_kdump(src, MemorySink(), codec=codec, exclude_zero=True, workers=2)
    assert stats.extra["core"] == "python"
    assert stats.extra["parallel"] == ("processes" if codec == "zlib" else "serial")  # memory source: not reopenable


@needs_native
@pytest.mark.parametrize("codec", ["zlib", "lzo", "zstd", None])
@pytest.mark.parametrize("exclude_zero", [False, True])
def test_whole_file_native_threads_equals_python(codec: str | None, exclude_zero: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _write_all(codec=codec, exclude_zero=exclude_zero, workers=2)
    assert fast == _write_all(codec=codec, exclude_zero=exclude_zero, workers=1)
    monkeypatch.setitem(sys.modules, "kdumpkit.dump._native", None)
    kdump.native_core.cache_clear()
    try:
        assert _write_all(codec=codec, exclude_zero=exclude_zero) == fast
    finally:
        kdump.native_core.cache_clear()
    from kdumpkit.dump.fileio import BytesSource

    k = KdumpFile(BytesSource(fast))
    assert bytes(k.read_page(100)) == bytes(synthetic_dump(ram=[(0, 700), (900, 1500)],
                                                           excluded=[(50, 90)]).read_page(100))


@needs_native
def test_threads_are_used_for_native_codecs() -> None:
    src = synthetic_dump(ram=[(0, 600)])
    stats = write_kdump(src, MemorySink(), codec="lzo", workers=2)
    assert stats.extra["core"] == "native" and stats.extra["parallel"] == "threads" and stats.extra["workers"] == 2


def test_raw_copies_report_one_worker() -> None:
    """Uncompressed pages without zero sharing are copied, never encoded: no pool runs."""
    stats = write_kdump(synthetic_dump(ram=[(0, 300)]), MemorySink(), codec=None, workers=2)
    assert stats.extra["parallel"] == "serial" and stats.extra["workers"] == 1


@needs_native
def test_encode_releases_the_gil() -> None:
    """While a thread compresses a big window, this thread keeps running Python.

    A C call holding the GIL would stop it for the whole call (a one-call
    ``sum(range(..))`` in the thread gives a gap of ~100 % of its duration);
    released, the longest pause here is a scheduling blip.
    """
    import threading
    import time

    data = random.Random(9).randbytes(16 * 1024 * 1024)  # 4096 pages that deflate slowly
    t = threading.Thread(target=encode_window, args=("zlib", PS, data, False, 0, -1, "<"))
    t0 = last = time.perf_counter()  # before the start: a call holding the GIL from its first moment shows too
    t.start()
    gap = 0.0
    while t.is_alive():
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    end = time.perf_counter()  # the loop only resumes once a GIL-holding call has returned
    t.join()
    gap = max(gap, end - last)
    assert gap < 0.5 * (end - t0)
