"""The kernel's own type information (BTF), read from the crashed kernel's memory.

Why: walking tasks or modules needs struct offsets (``task_struct.tasks``,
``module.name`` …) that change with every kernel build and config.  Debian
kernels are built with CONFIG_DEBUG_INFO_BTF=y: the vmlinux BTF blob is in
rodata between ``__start_BTF`` and ``__stop_BTF``, so a dump alone answers
"where is field X" without any debuginfo vmlinux.

Format (``include/uapi/linux/btf.h``): a ``btf_header``, then the type
section (``btf_type`` records, ids from 1; id 0 is ``void``), each followed
by kind-specific trailing records, then a NUL-separated string section.
Member offsets are in bits; with the struct's ``kind_flag`` set the member
``offset`` packs ``bitfield_size << 24 | bit_offset``, otherwise bitfields
are described by the member's INT type (``nr_bits``, ``offset``).

Parsing is one pass over the type headers (no members decoded); members are
decoded on demand, for the few structs a caller asks about.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kdumpkit.errors import KdumpkitError, KernelError
from kdumpkit.structs import Struct

if TYPE_CHECKING:
    from kdumpkit.kernel.memory import KernelMemory
    from kdumpkit.kernel.symbols import SymbolTable

__all__ = ["BTF_HEADER", "BTF_MAGIC", "Btf", "BtfType", "Kind", "Member", "find_btf", "load_btf"]

BTF_MAGIC = 0xEB9F
_MAX_BLOB = 64 << 20  # vmlinux BTF is 3–6 MiB; anything far larger is not BTF
_SCAN_LIMIT = 48 << 20  # how far past __start_rodata the fallback scan looks
_MAX_DEPTH = 16  # typedef chains / anonymous nesting deeper than this mean a corrupt blob


class Kind:
    """``BTF_KIND_*`` values."""

    INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
    VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
    FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19


# Trailing bytes after the 12-byte btf_type, as (fixed, per vlen item).
_TRAILING = {
    Kind.INT: (4, 0), Kind.PTR: (0, 0), Kind.ARRAY: (12, 0), Kind.STRUCT: (0, 12), Kind.UNION: (0, 12),
    Kind.ENUM: (0, 8), Kind.FWD: (0, 0), Kind.TYPEDEF: (0, 0), Kind.VOLATILE: (0, 0), Kind.CONST: (0, 0),
    Kind.RESTRICT: (0, 0), Kind.FUNC: (0, 0), Kind.FUNC_PROTO: (0, 8), Kind.VAR: (4, 0), Kind.DATASEC: (0, 12),
    Kind.FLOAT: (0, 0), Kind.DECL_TAG: (4, 0), Kind.TYPE_TAG: (0, 0), Kind.ENUM64: (0, 12),
}
_MODIFIERS = frozenset((Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG))
_SIZED = frozenset((Kind.INT, Kind.ENUM, Kind.STRUCT, Kind.UNION, Kind.DATASEC, Kind.FLOAT, Kind.ENUM64))

BTF_HEADER = Struct("btf_header", [
    ("magic", "H"), ("version", "B"), ("flags", "B"), ("hdr_len", "I"),
    ("type_off", "I"), ("type_len", "I"), ("str_off", "I"), ("str_len", "I"),
])
_TYPE = struct.Struct("<III")
_PATH_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


@dataclass(frozen=True)
class BtfType:
    """One ``btf_type``: ``size_or_type`` is a size for sized kinds, a type id otherwise."""

    id: int
    kind: int
    name: str
    vlen: int
    kind_flag: bool
    size_or_type: int
    pos: int  # offset of the trailing records in the type section


@dataclass(frozen=True)
class Member:
    """A struct/union member; ``offset``/``bit_offset`` are from the start of the outermost struct asked about."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int  # 0 for a plain member
    size: int           # bytes of the member's (resolved) type

    @property
    def offset(self) -> int:
        """Byte offset (of the storage unit's first byte, for a bitfield)."""
        return self.bit_offset // 8


class Btf:
    """A parsed BTF blob; build it with :meth:`from_bytes`."""

    def __init__(self, types: bytes, strings: bytes, pointer_size: int = 8) -> None:
        self._types = types
        self._strings = strings
        self.pointer_size = pointer_size
        self._hdr: list[tuple[int, int, int]] = [(0, 0, 0)]  # id -> (name_off, info, size_or_type)
        self._pos: list[int] = [0]
        self._by_name: dict[str, list[int]] | None = None
        pos, end = 0, len(types)
        while pos < end:
            if pos + 12 > end:
                raise KernelError(f"BTF type section ends inside a type header (at {pos})")
            name_off, info, size_or_type = _TYPE.unpack_from(types, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            trailing = _TRAILING.get(kind)
            if trailing is None:
                raise KernelError(f"BTF type {len(self._hdr)}: unknown kind {kind}")
            pos += 12
            self._hdr.append((name_off, info, size_or_type))
            self._pos.append(pos)
            pos += trailing[0] + trailing[1] * vlen
        if pos != end:
            raise KernelError("BTF type section overruns its declared length")

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes, pointer_size: int = 8) -> Btf:
        """Parse a raw BTF blob (``btf_header`` + sections); raises :class:`KernelError` if it is not one."""
        if len(data) < BTF_HEADER.size:
            raise KernelError("BTF blob shorter than its header")
        h = BTF_HEADER.unpack(data[:BTF_HEADER.size])
        if h["magic"] != BTF_MAGIC:
            raise KernelError(f"not BTF (magic {h['magic']:#06x}, big-endian BTF is not supported)")
        if h["version"] != 1 or h["hdr_len"] < BTF_HEADER.size:
            raise KernelError(f"unsupported BTF version {h['version']} / header length {h['hdr_len']}")
        base = h["hdr_len"]
        t0, t1 = base + h["type_off"], base + h["type_off"] + h["type_len"]
        s0, s1 = base + h["str_off"], base + h["str_off"] + h["str_len"]
        if t1 > len(data) or s1 > len(data):
            raise KernelError(f"BTF sections end past the blob ({max(t1, s1)} > {len(data)} bytes)")
        return cls(bytes(data[t0:t1]), bytes(data[s0:s1]), pointer_size)

    def __len__(self) -> int:
        """Number of types (ids 1 … len)."""
        return len(self._hdr) - 1

    # -- raw access -------------------------------------------------------------------
    def name_at(self, off: int) -> str:
        if off >= len(self._strings):
            raise KernelError(f"BTF string offset {off} past the string section")
        end = self._strings.find(b"\0", off)
        return self._strings[off:end if end >= 0 else len(self._strings)].decode("utf-8", "replace")

    def type(self, type_id: int) -> BtfType:
        """The type with id ``type_id`` (id 0 is ``void``: kind 0, size 0)."""
        if not 0 <= type_id < len(self._hdr):
            raise KernelError(f"BTF type id {type_id} out of range (1..{len(self)})")
        name_off, info, sot = self._hdr[type_id]
        return BtfType(type_id, (info >> 24) & 0x1F, self.name_at(name_off) if type_id else "void",
                       info & 0xFFFF, bool(info >> 31), sot, self._pos[type_id])

    def _u32s(self, pos: int, n: int) -> tuple[int, ...]:
        return struct.unpack_from(f"<{n}I", self._types, pos)

    def find(self, name: str, kinds: tuple[int, ...] = (Kind.STRUCT, Kind.UNION, Kind.TYPEDEF)) -> BtfType:
        """The first type called ``name`` of one of ``kinds`` (in that order of preference)."""
        if self._by_name is None:
            by: dict[str, list[int]] = {}
            strs = self._strings
            for tid in range(1, len(self._hdr)):
                off = self._hdr[tid][0]
                if off:
                    end = strs.find(b"\0", off)
                    by.setdefault(strs[off:end].decode("utf-8", "replace"), []).append(tid)
            self._by_name = by
        ids = self._by_name.get(name, [])
        for kind in kinds:
            for tid in ids:
                if (self._hdr[tid][1] >> 24) & 0x1F == kind:
                    return self.type(tid)
        raise KernelError(f"BTF has no {'/'.join(_KIND_NAMES.get(k, str(k)) for k in kinds)} {name!r}")

    # -- types ------------------------------------------------------------------------
    def resolve(self, type_id: int) -> BtfType:
        """Strip typedef/const/volatile/restrict/type_tag."""
        t = self.type(type_id)
        for _ in range(_MAX_DEPTH):
            if t.kind not in _MODIFIERS:
                return t
            t = self.type(t.size_or_type)
        raise KernelError(f"BTF modifier chain too long from type {type_id}")

    def sizeof(self, what: str | int) -> int:
        """Size in bytes of a type id, or of a named struct/union/typedef."""
        t = self.resolve(what if isinstance(what, int) else self.find(what).id)
        if t.kind in _SIZED:
            return t.size_or_type
        if t.kind == Kind.PTR:
            return self.pointer_size
        if t.kind == Kind.ARRAY:
            elem, _index, nelems = self._u32s(t.pos, 3)
            return self.sizeof(elem) * nelems
        return 0  # void, FWD, FUNC_PROTO …: no size

    def array(self, type_id: int) -> tuple[int, int]:
        """``(element type id, number of elements)`` of an array type."""
        t = self.resolve(type_id)
        if t.kind != Kind.ARRAY:
            raise KernelError(f"BTF type {type_id} ({t.name or 'anonymous'}) is not an array")
        elem, _index, nelems = self._u32s(t.pos, 3)
        return elem, nelems

    def members(self, type_id: int) -> list[Member]:
        """Direct members of a struct/union (anonymous ones have ``name == ''``)."""
        t = self.resolve(type_id)
        if t.kind not in (Kind.STRUCT, Kind.UNION):
            raise KernelError(f"BTF type {type_id} ({t.name or 'anonymous'}) is not a struct or union")
        out: list[Member] = []
        for i in range(t.vlen):
            name_off, mtype, off = self._u32s(t.pos + 12 * i, 3)
            if t.kind_flag:
                bit_off, bits = off & 0xFFFFFF, off >> 24
            else:
                bit_off, bits = off, 0
                r = self.resolve(mtype)
                if r.kind == Kind.INT:
                    enc = self._u32s(r.pos, 1)[0]
                    nr_bits, int_off = enc & 0xFF, (enc >> 16) & 0xFF
                    if nr_bits != 8 * r.size_or_type or int_off:
                        bit_off, bits = bit_off + int_off, nr_bits
            out.append(Member(self.name_at(name_off), mtype, bit_off, bits, self.sizeof(mtype)))
        return out

    def struct(self, name: str) -> list[Member]:
        """Members of struct/union ``name``, with byte offsets and sizes (typedefs resolved)."""
        return self.members(self.find(name).id)

    def member(self, type_id: int, name: str) -> Member | None:
        """Member ``name`` of a struct/union, searching into anonymous struct/union members."""
        return self._member(type_id, name, 0, 0)

    def _member(self, type_id: int, name: str, base_bits: int, depth: int) -> Member | None:
        if depth > _MAX_DEPTH:
            raise KernelError(f"BTF anonymous members nested too deep looking for {name!r}")
        anonymous: list[Member] = []
        for m in self.members(type_id):
            if m.name == name:
                return Member(m.name, m.type_id, base_bits + m.bit_offset, m.bitfield_size, m.size)
            if not m.name and self.resolve(m.type_id).kind in (Kind.STRUCT, Kind.UNION):
                anonymous.append(m)
        for m in anonymous:
            found = self._member(m.type_id, name, base_bits + m.bit_offset, depth + 1)
            if found is not None:
                return found
        return None

    def field(self, struct_name: str, path: str) -> Member:
        """The member at ``path`` (``"tasks"``, ``"mem[0].base"``, ``"core_layout.size"``) of ``struct_name``.

        The returned member's offset is from the start of ``struct_name``.
        """
        tid = self.find(struct_name).id
        bits = 0
        m: Member | None = None
        for part in path.split("."):
            match = _PATH_PART.match(part)
            if match is None:
                raise KernelError(f"bad member path {path!r}")
            m = self.member(tid, match.group(1))
            if m is None:
                raise KernelError(f"BTF: {struct_name} has no member {path!r}")
            bits += m.bit_offset
            tid = m.type_id
            for idx in re.findall(r"\[(\d+)\]", match.group(2)):
                elem, nelems = self.array(tid)
                if int(idx) >= nelems:
                    raise KernelError(f"BTF: index {idx} past {nelems} elements in {struct_name}.{path}")
                bits += int(idx) * self.sizeof(elem) * 8
                tid = elem
            m = Member(m.name, tid, bits, m.bitfield_size, self.sizeof(tid))
        assert m is not None
        return m

    def offsetof(self, struct_name: str, path: str) -> int:
        """Byte offset of ``path`` in ``struct_name`` (like the C macro, through anonymous members)."""
        return self.field(struct_name, path).offset

    def has_field(self, struct_name: str, path: str) -> bool:
        try:
            self.field(struct_name, path)
        except KernelError:
            return False
        return True

    def enum(self, name: str) -> dict[str, int]:
        """Enumerator name → value of ``enum name`` (ENUM or ENUM64)."""
        t = self.find(name, (Kind.ENUM, Kind.ENUM64))
        return self.enum_values(t.id)

    def enum_values(self, type_id: int) -> dict[str, int]:
        """Enumerators of an ENUM/ENUM64 type.

        32-bit ENUM values are read as signed (the pre-6.0 meaning, and the kernel's
        own enums fit); ENUM64 values are signed only with ``kind_flag`` set.
        """
        t = self.resolve(type_id)
        out: dict[str, int] = {}
        if t.kind == Kind.ENUM:
            for i in range(t.vlen):
                name_off, val = struct.unpack_from("<Ii", self._types, t.pos + 8 * i)
                out[self.name_at(name_off)] = val
        elif t.kind == Kind.ENUM64:
            for i in range(t.vlen):
                name_off, lo, hi = self._u32s(t.pos + 12 * i, 3)
                v = (hi << 32) | lo
                out[self.name_at(name_off)] = v - (1 << 64) if t.kind_flag and v >> 63 else v
        else:
            raise KernelError(f"BTF type {type_id} ({t.name or 'anonymous'}) is not an enum")
        return out

    def enumerator(self, value_name: str) -> int:
        """Value of an enumerator of any enum (e.g. ``MOD_TEXT``); raises if none has it."""
        needle = b"\0" + value_name.encode() + b"\0"
        offsets: set[int] = set()
        at = self._strings.find(needle)
        while at >= 0:
            offsets.add(at + 1)
            at = self._strings.find(needle, at + 1)
        for tid in range(1, len(self._hdr)):
            kind = (self._hdr[tid][1] >> 24) & 0x1F
            if offsets and kind in (Kind.ENUM, Kind.ENUM64):
                step = 8 if kind == Kind.ENUM else 12
                pos = self._pos[tid]
                for i in range(self._hdr[tid][1] & 0xFFFF):
                    if self._u32s(pos + step * i, 1)[0] in offsets:
                        return self.enum_values(tid)[value_name]
        raise KernelError(f"BTF has no enumerator {value_name!r}")


_KIND_NAMES = {v: k.lower() for k, v in vars(Kind).items() if isinstance(v, int)}


# -- from a dump ----------------------------------------------------------------------
def find_btf(mem: KernelMemory, symbols: SymbolTable) -> tuple[int, int, str]:
    """``(address, length, how)`` of the vmlinux BTF blob in kernel memory.

    ``__start_BTF``/``__stop_BTF`` from the symbol table; without them, a scan of
    rodata (from ``__start_rodata``) for a plausible ``btf_header``.
    """
    start, stop = symbols.address_of("__start_BTF"), symbols.address_of("__stop_BTF")
    if start is not None and stop is not None and 0 < stop - start <= _MAX_BLOB:
        return start, stop - start, "__start_BTF..__stop_BTF"
    ro = symbols.address_of("__start_rodata")
    if ro is None:
        raise KernelError("BTF not found: no __start_BTF/__stop_BTF and no __start_rodata in the symbol table "
                          "(kernel without CONFIG_DEBUG_INFO_BTF?)")
    end = symbols.address_of("__end_rodata") or ro + _SCAN_LIMIT
    chunk = 4 << 20
    magic = struct.pack("<HBB", BTF_MAGIC, 1, 0)
    addr = ro
    while addr < min(end, ro + _SCAN_LIMIT):
        data = _read_tolerant(mem, addr, chunk + BTF_HEADER.size)
        at = data.find(magic)
        while 0 <= at < chunk:
            h = BTF_HEADER.unpack(data[at:at + BTF_HEADER.size])
            total = h["hdr_len"] + h["str_off"] + h["str_len"]
            if (h["hdr_len"] == BTF_HEADER.size and h["type_off"] == 0 and h["str_off"] == h["type_len"]
                    and 0 < total <= _MAX_BLOB):
                return addr + at, total, f"scan of rodata from __start_rodata (+{addr + at - ro:#x})"
            at = data.find(magic, at + 1)
        addr += chunk
    raise KernelError("BTF not found: no __start_BTF/__stop_BTF symbols and no BTF header in rodata "
                      "(kernel without CONFIG_DEBUG_INFO_BTF?)")


def _read_tolerant(mem: KernelMemory, addr: int, length: int) -> bytes:
    """``length`` bytes at ``addr``; pages that cannot be read (filtered out, unmapped) read as zeros."""
    try:
        return mem.read_virt(addr, length)
    except KdumpkitError:
        pass
    out = bytearray()
    ps = mem.page_size
    end = addr + length
    while addr < end:
        n = min(ps - addr % ps, end - addr)
        try:
            out += mem.read_virt(addr, n)
        except KdumpkitError:
            out += bytes(n)
        addr += n
    return bytes(out)


def load_btf(mem: KernelMemory, symbols: SymbolTable) -> tuple[Btf, str]:
    """The crashed kernel's vmlinux BTF and where it came from; one read of the whole blob."""
    addr, length, how = find_btf(mem, symbols)
    data = mem.read_virt(addr, length)
    btf = Btf.from_bytes(data, mem.pointer_size)
    return btf, f"BTF in the dump ({how}, {length} bytes, {len(btf)} types)"
