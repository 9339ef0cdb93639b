"""Per-page codecs of the kdump-compressed format.

The flag values are the ``page_desc.flags`` / header ``status`` bits that
makedumpfile defines.  Compressors call the libraries makedumpfile calls, at
its levels, so pages come out as makedumpfile writes them (zlib, lzo, zstd;
snappy through cramjam's own implementation).  The kdump writer's hot loop
uses the native core (``_native.c``) for the same work; these are its
pure-Python twin and the readers' decompressors.  Every codec is looked up
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


#: makedumpfile -c: ``compress2(.., Z_BEST_SPEED)`` (a reused deflate stream, same bytes).  Through the
#: same zlib at the same level our pages are byte-identical to makedumpfile's; the speed comes from
#: the native core compressing windows in parallel threads, not from a weaker level (issue #17).
ZLIB_LEVEL = 1
#: makedumpfile -z: ``ZSTD_compressCCtx(.., 1)``
ZSTD_LEVEL = 1
#: the level of each codec that has one; the kdump writer's native core calls the same libraries with these
LEVELS = {"zlib": ZLIB_LEVEL, "zstd": ZSTD_LEVEL}


def _zlib() -> Codec:
    return Codec("zlib", FLAG_ZLIB, lambda b: zlib.compress(b, ZLIB_LEVEL), _zlib_decompress,
                 lambda pages: list(map(zlib.compress, pages, repeat(ZLIB_LEVEL))))


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
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)  # content size in the frame, no checksum: as ZSTD_compressCCtx
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
