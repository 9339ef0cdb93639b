"""Declared on-disk structures, used for both reading and writing.

Every binary structure kdumpkit touches is declared once, as an ordered list of
``(name, struct-format)`` fields, in the module of the format that owns it.  The
same declaration unpacks bytes into a :class:`Record` and packs a record back
into bytes, so the reader and the writer cannot drift apart (the pyelftools
idea, without its construct dependency).

Padding is declared explicitly with a field whose format ends in ``x`` and whose
name starts with ``_``; it is skipped on unpack and zero-filled on pack.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

from kdumpkit.errors import TruncatedDumpError


class Record(dict[str, Any]):
    """An unpacked structure: a dict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Struct:
    """A fixed-size structure with named fields in one byte order."""

    def __init__(self, name: str, fields: Iterable[tuple[str, str]], byteorder: str = "<") -> None:
        self.name = name
        self.byteorder = byteorder
        self.fields: list[tuple[str, str]] = list(fields)
        self._names: list[str] = []
        self._offsets: dict[str, int] = {}
        fmt = byteorder
        for fname, ffmt in self.fields:
            self._offsets[fname] = struct.calcsize(fmt)
            fmt += ffmt
            if not ffmt.endswith("x"):
                self._names.append(fname)
        self._struct = struct.Struct(fmt)
        self.size = self._struct.size
        self._formats = dict(self.fields)

    def offsetof(self, field: str) -> int:
        return self._offsets[field]

    def with_byteorder(self, byteorder: str) -> Struct:
        """The same declaration in another byte order (for big-endian dumps)."""
        return Struct(self.name, self.fields, byteorder)

    def unpack(self, buf: bytes | bytearray | memoryview, offset: int = 0, *, file_offset: int | None = None) -> Record:
        """Unpack at ``offset`` of ``buf``; a short buffer is a truncated dump."""
        if len(buf) - offset < self.size:
            where = file_offset if file_offset is not None else offset
            raise TruncatedDumpError(f"{self.name} needs {self.size} bytes", where + max(len(buf) - offset, 0))
        values = self._struct.unpack_from(buf, offset)
        return Record(zip(self._names, values, strict=True))

    def pack(self, values: Mapping[str, Any] | None = None, **kw: Any) -> bytes:
        """Pack a record; fields not given are zero (or empty bytes)."""
        merged: dict[str, Any] = dict(values or {})
        merged.update(kw)
        args = []
        for fname in self._names:
            if fname in merged:
                args.append(merged[fname])
            else:
                args.append(b"" if self._formats[fname].endswith("s") else 0)
        return self._struct.pack(*args)

    def __repr__(self) -> str:
        return f"Struct({self.name!r}, size={self.size})"


def cstr(raw: bytes) -> str:
    """A NUL-terminated byte string as text (undecodable bytes escaped)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
