"""A tiny BTF writer for tests: declare types the way pahole would emit them, get a blob.

Kept in the tests (not the library): kdumpkit only reads BTF; this writes the
same records (``include/uapi/linux/btf.h``) so the parser can be checked
against declared layouts, including bitfields, anonymous members and every kind.
"""

from __future__ import annotations

import struct

from kdumpkit.kernel.btf import BTF_HEADER, BTF_MAGIC, Kind

MemberSpec = tuple[str, int, int] | tuple[str, int, int, int]  # name, type, bit offset[, bitfield bits]


class BtfBuilder:
    def __init__(self) -> None:
        self._types: dict[int, bytes] = {}
        self._next = 1
        self._strings = bytearray(b"\0")
        self._str_at: dict[str, int] = {"": 0}

    # -- plumbing -----------------------------------------------------------------
    def s(self, name: str) -> int:
        if name not in self._str_at:
            self._str_at[name] = len(self._strings)
            self._strings += name.encode() + b"\0"
        return self._str_at[name]

    def reserve(self) -> int:
        """An id to refer to before the type is defined (self-referencing structs)."""
        tid = self._next
        self._next += 1
        return tid

    def add(self, kind: int, name: str, vlen: int, size_or_type: int, trailing: bytes = b"", *,
            kflag: bool = False, at: int | None = None) -> int:
        tid = self.reserve() if at is None else at
        info = (int(kflag) << 31) | (kind << 24) | vlen
        self._types[tid] = struct.pack("<III", self.s(name), info, size_or_type) + trailing
        return tid

    def blob(self) -> bytes:
        assert sorted(self._types) == list(range(1, self._next)), "reserved ids left undefined"
        types = b"".join(self._types[i] for i in range(1, self._next))
        hdr = BTF_HEADER.pack(magic=BTF_MAGIC, version=1, flags=0, hdr_len=BTF_HEADER.size, type_off=0,
                              type_len=len(types), str_off=len(types), str_len=len(self._strings))
        return hdr + types + bytes(self._strings)

    # -- kinds --------------------------------------------------------------------
    def int(self, name: str, size: int, *, signed: bool = False, bits: int | None = None, offset: int = 0) -> int:
        enc = (1 if signed else 0) << 24 | offset << 16 | (bits if bits is not None else size * 8)
        return self.add(Kind.INT, name, 0, size, struct.pack("<I", enc))

    def ptr(self, target: int, at: int | None = None) -> int:
        return self.add(Kind.PTR, "", 0, target, at=at)

    def array(self, elem: int, nelems: int, index_type: int) -> int:
        return self.add(Kind.ARRAY, "", 0, 0, struct.pack("<III", elem, index_type, nelems))

    def struct(self, name: str, size: int, members: list[MemberSpec], *, union: bool = False,
               kflag: bool = False, at: int | None = None) -> int:
        trailing = b""
        for m in members:
            off = m[2] | (m[3] << 24 if len(m) == 4 else 0)
            trailing += struct.pack("<III", self.s(m[0]), m[1], off)
        return self.add(Kind.UNION if union else Kind.STRUCT, name, len(members), size, trailing, kflag=kflag, at=at)

    def enum(self, name: str, values: dict[str, int], size: int = 4) -> int:
        trailing = b"".join(struct.pack("<Ii", self.s(k), v) for k, v in values.items())
        return self.add(Kind.ENUM, name, len(values), size, trailing)

    def enum64(self, name: str, values: dict[str, int], *, signed: bool = False) -> int:
        trailing = b"".join(struct.pack("<III", self.s(k), v & 0xFFFFFFFF, (v >> 32) & 0xFFFFFFFF)
                            for k, v in values.items())
        return self.add(Kind.ENUM64, name, len(values), 8, trailing, kflag=signed)

    def modifier(self, kind: int, target: int, name: str = "") -> int:
        """TYPEDEF (named), VOLATILE, CONST, RESTRICT, TYPE_TAG (named)."""
        return self.add(kind, name, 0, target)

    def fwd(self, name: str, union: bool = False) -> int:
        return self.add(Kind.FWD, name, 0, 0, kflag=union)

    def func_proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        trailing = b"".join(struct.pack("<II", self.s(n), t) for n, t in params)
        return self.add(Kind.FUNC_PROTO, "", len(params), ret, trailing)

    def func(self, name: str, proto: int, linkage: int = 1) -> int:
        return self.add(Kind.FUNC, name, linkage, proto)

    def var(self, name: str, type_id: int, linkage: int = 1) -> int:
        return self.add(Kind.VAR, name, 0, type_id, struct.pack("<I", linkage))

    def datasec(self, name: str, size: int, vars_: list[tuple[int, int, int]]) -> int:
        trailing = b"".join(struct.pack("<III", *v) for v in vars_)
        return self.add(Kind.DATASEC, name, len(vars_), size, trailing)

    def float(self, name: str, size: int) -> int:
        return self.add(Kind.FLOAT, name, 0, size)

    def decl_tag(self, name: str, target: int, component_idx: int = -1) -> int:
        return self.add(Kind.DECL_TAG, name, 0, target, struct.pack("<i", component_idx))
