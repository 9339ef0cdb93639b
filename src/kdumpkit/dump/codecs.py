"""Per-page codecs of the kdump-compressed format.

The flag values are the ``page_desc.flags`` / header ``status`` bits that
makedumpfile defines.  Compressors are chosen for speed (zlib-ng or isal when
installed, both produce streams stock zlib inflates); every codec is looked up
lazily so a missing optional library only fails the dumps that need it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from kdumpkit.dump.base import Buffer
from kdumpkit.errors import CorruptDumpError, UnsupportedCompressionError

FLAG_ZLIB = 0x01
FLAG_LZO = 0x02
FLAG_SNAPPY = 0x04
FLAG_INCOMPLETE = 0x08
FLAG_EXCLUDED_VMEMMAP = 0x10
FLAG_ZSTD = 0x20

COMPRESSION_FLAGS = FLAG_ZLIB | FLAG_LZO | FLAG_SNAPPY | FLAG_ZSTD


@dataclass(frozen=True)
class Codec:
    name: str
    flag: int
    compress: Callable[[Buffer], bytes]  # takes any bytes-like page
    decompress: Callable[[bytes, int], bytes]
    #: many pages at once: ``map`` straight over the library's C function, no Python frame per page
    compress_many: Callable[[list[bytes]], list[bytes]] | None = None

    def compress_pages(self, pages: list[bytes]) -> list[bytes]:
        """Compress each page (the writers' hot loop: one call per batch)."""
        if self.compress_many is not None:
            return self.compress_many(pages)
        return list(map(self.compress, pages))


def _zlib_compress_fn() -> Callable[..., bytes]:
    try:
        from zlib_ng import zlib_ng  # type: ignore[import-not-found,import-untyped,unused-ignore]

        return zlib_ng.compress
    except ImportError:
        return zlib.compress


#: zlib-ng's level 1 is deflate_quick (static Huffman codes).  Measured on every page of the lab
#: vmcore (209,672 pages, idle): ng1 1.89 s / 152 MB, ng2 5.55 s / 141 MB, this Python's zlib 1
#: 22.3 s / 142 MB; makedumpfile -c -d 0 writes the whole dump in 4.6 s, 134 MB.  Level 2 gives
#: makedumpfile's size but makes one worker 0.7x its speed (bench/RESULTS.md); level 1 is 1.3-1.5x
#: faster for 5-7 % more bytes (more on very compressible memory).  Speed wins.
ZLIB_NG_LEVEL = 1


def _zlib() -> Codec:
    fn = _zlib_compress_fn()
    level = ZLIB_NG_LEVEL if fn is not zlib.compress else 1
    return Codec("zlib", FLAG_ZLIB, lambda b: fn(b, level), _zlib_decompress,
                 lambda pages: list(map(fn, pages, repeat(level))))


def _zlib_decompress(data: bytes, size: int) -> bytes:
    """At most ``size + 1`` bytes come out, whatever the stream holds: a 1 MiB page may inflate to 1 GiB."""
    d = zlib.decompressobj()
    out = d.decompress(data, size + 1)
    if len(out) > size:
        raise CorruptDumpError(f"zlib page inflates past {size} bytes")
    if not d.eof:
        raise CorruptDumpError("zlib page stream is truncated")
    return out


def _lzo() -> Codec:
    try:
        import lzo  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as e:
        raise UnsupportedCompressionError("lzo (install python-lzo)") from e
    return Codec(
        "lzo",
        FLAG_LZO,
        lambda b: lzo.compress(bytes(b), 1, False),  # python-lzo takes only bytes
        lambda d, n: lzo.decompress(d, False, n),
        lambda pages: list(map(lzo.compress, pages, repeat(1), repeat(False))),
    )


def _snappy() -> Codec:
    try:
        import cramjam  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as e:
        raise UnsupportedCompressionError("snappy (install cramjam)") from e
    return Codec(
        "snappy",
        FLAG_SNAPPY,
        lambda b: bytes(cramjam.snappy.compress_raw(b)),
        lambda d, n: _snappy_decompress(cramjam, d, n),
    )


def _snappy_decompress(cramjam: Any, data: bytes, size: int) -> bytes:
    """Raw snappy starts with the uncompressed length (a varint); the library allocates it blindly."""
    announced, shift, pos = 0, 0, 0
    while pos < min(len(data), 5):
        byte = data[pos]
        announced |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
    else:
        raise CorruptDumpError("snappy page has no length header")
    if announced != size:
        raise CorruptDumpError(f"snappy page announces {announced} bytes, not {size}")
    return bytes(cramjam.snappy.decompress_raw(data))


def _zstd() -> Codec:
    try:
        import zstandard  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as e:
        raise UnsupportedCompressionError("zstd (install zstandard)") from e
    cctx = zstandard.ZstdCompressor(level=1)
    dctx = zstandard.ZstdDecompressor()
    return Codec(
        "zstd",
        FLAG_ZSTD,
        cctx.compress,
        lambda d, n: _zstd_decompress(zstandard, dctx, d, n),
        lambda pages: list(map(cctx.compress, pages)),
    )


def _zstd_decompress(zstandard: Any, dctx: Any, data: bytes, size: int) -> bytes:
    """``max_output_size`` is ignored when the frame states its content size: check that size first."""
    announced = zstandard.frame_content_size(data)
    if announced not in (-1, size):  # -1: not stated, then max_output_size bounds the output
        raise CorruptDumpError(f"zstd page announces {announced} bytes, not {size}")
    return bytes(dctx.decompress(data, max_output_size=size))


_BUILDERS: dict[str, Callable[[], Codec]] = {
    "zlib": _zlib,
    "lzo": _lzo,
    "snappy": _snappy,
    "zstd": _zstd,
}
_FLAG_NAMES = {FLAG_ZLIB: "zlib", FLAG_LZO: "lzo", FLAG_SNAPPY: "snappy", FLAG_ZSTD: "zstd"}
_cache: dict[str, Codec] = {}

# makedumpfile's option letters
OPTION_CODECS = {"c": "zlib", "l": "lzo", "p": "snappy", "z": "zstd"}


def codec(name: str) -> Codec:
    """The codec called ``name`` (zlib, lzo, snappy, zstd)."""
    if name not in _BUILDERS:
        raise UnsupportedCompressionError(name)
    if name not in _cache:
        _cache[name] = _BUILDERS[name]()
    return _cache[name]


def codec_for_flag(flag: int) -> Codec:
    name = _FLAG_NAMES.get(flag)
    if name is None:
        raise UnsupportedCompressionError(f"page flags {flag:#x}")
    return codec(name)


def flag_name(status: int) -> str:
    """Name of the compression in a header ``status`` word ("none" if raw)."""
    names = [n for f, n in _FLAG_NAMES.items() if status & f]
    return ",".join(names) if names else "none"


def decompress_page(flags: int, data: bytes, page_size: int) -> bytes:
    """Decompress one stored page; the result must be exactly one page."""
    comp = flags & COMPRESSION_FLAGS
    if comp == 0:
        if len(data) != page_size:
            raise CorruptDumpError(f"raw page of {len(data)} bytes (page size {page_size})")
        return data
    c = codec_for_flag(comp)
    try:
        out = c.decompress(data, page_size)
    except (UnsupportedCompressionError, CorruptDumpError):
        raise
    except Exception as e:  # codec libraries raise their own types
        raise CorruptDumpError(f"{c.name} page does not decompress: {e}") from None
    if len(out) != page_size:
        raise CorruptDumpError(f"{c.name} page decompressed to {len(out)} bytes, not {page_size}")
    return bytes(out)
