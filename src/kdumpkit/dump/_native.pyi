"""Type stub of the C extension built from _native.c (see there and setup.py)."""

from kdumpkit.dump.base import Buffer

CODECS: tuple[int, ...]
ZLIB_VERSION: str

def encode(codec: int, level: int, page_size: int, data: Buffer, share_zero: bool, base: int, zero_off: int,
           big_endian: bool, /) -> tuple[bytes, bytes, int]: ...
def rebase(descs: bytes, delta: int, zero_off: int, big_endian: bool, /) -> bytes: ...
