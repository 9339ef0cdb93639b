"""BTF parsing on synthetic blobs: every kind, typedef chains, bitfields, anonymous unions."""

from __future__ import annotations

import pytest
from btfbuild import BtfBuilder

from kdumpkit.errors import KernelError
from kdumpkit.kernel.btf import Btf, Kind


def _kernelish() -> tuple[Btf, dict[str, int]]:
    """A task_struct-like struct with nested anonymous unions, typedefs and both bitfield encodings."""
    b = BtfBuilder()
    ids: dict[str, int] = {}
    u32 = b.int("unsigned int", 4)
    s32 = b.int("int", 4, signed=True)
    u64 = b.int("long unsigned int", 8)
    char = b.int("char", 1, signed=True)
    pid_t = b.modifier(Kind.TYPEDEF, s32, "pid_t")
    vpid = b.modifier(Kind.VOLATILE, pid_t)
    cpid = b.modifier(Kind.CONST, vpid)
    lh = b.reserve()
    lhp = b.ptr(lh)
    b.struct("list_head", 16, [("next", lhp, 0), ("prev", lhp, 64)], at=lh)
    comm = b.array(char, 16, u32)
    inner = b.struct("", 8, [("deep", u64, 0)])
    anon_struct = b.struct("", 16, [("flags", u32, 0), ("cpu", u32, 32), ("", inner, 64)])
    anon_union = b.struct("", 16, [("raw", u64, 0), ("", anon_struct, 0)], union=True)
    # kind_flag struct: bitfields packed in member offset (bits << 24 | bit offset)
    bits_kf = b.struct("bits_kf", 4, [("a", u32, 0, 3), ("b", u32, 3, 5), ("c", u32, 8, 0)], kflag=True)
    # old encoding: bitfield described by the INT type itself
    int3 = b.int("unsigned int", 4, bits=3)
    int5off = b.int("unsigned int", 4, bits=5, offset=3)
    bits_old = b.struct("bits_old", 4, [("a", int3, 0), ("b", int5off, 0)])
    ids["task"] = b.struct("task_struct", 96, [
        ("", anon_union, 0),            # bytes 0..16: flags/cpu/deep reachable by name
        ("__state", u32, 128),
        ("tasks", lh, 192),
        ("pid", cpid, 320),
        ("comm", comm, 384),
        ("bits", bits_kf, 512),
        ("old", bits_old, 544),
        ("pad", b.array(u64, 2, u32), 640),
    ])
    b.modifier(Kind.TYPEDEF, ids["task"], "task_t")
    b.fwd("mm_struct")
    b.enum("module_state", {"MODULE_STATE_LIVE": 0, "MODULE_STATE_COMING": 1, "MODULE_STATE_GOING": 2,
                             "MODULE_STATE_UNFORMED": 3})
    b.enum("neg", {"MINUS": -1})
    b.enum64("big", {"HUGE": 1 << 40, "ALL": (1 << 64) - 1})
    b.enum64("sbig", {"NEG": -5}, signed=True)
    proto = b.func_proto(s32, [("t", b.ptr(ids["task"])), ("n", u32)])
    b.func("wake_up_process", proto)
    v = b.var("init_task", ids["task"])
    b.datasec(".data..percpu", 96, [(v, 0, 96)])
    b.float("double", 8)
    b.decl_tag("user", ids["task"], 1)
    b.modifier(Kind.TYPE_TAG, lhp, "rcu")
    b.modifier(Kind.RESTRICT, lhp)
    return Btf.from_bytes(b.blob()), ids


def test_sizes_and_offsets() -> None:
    btf, ids = _kernelish()
    assert btf.sizeof("task_struct") == 96 == btf.sizeof("task_t")
    assert btf.sizeof("list_head") == 16
    assert btf.offsetof("task_struct", "tasks") == 24
    assert btf.offsetof("task_struct", "tasks.prev") == 32
    assert btf.offsetof("task_struct", "comm") == 48
    f = btf.field("task_struct", "pid")
    assert (f.offset, f.size) == (40, 4)  # const volatile pid_t -> int
    assert btf.field("task_struct", "comm").size == 16
    assert btf.offsetof("task_struct", "pad[1]") == 88
    assert btf.array(btf.field("task_struct", "pad").type_id) == (btf.find("long unsigned int", (Kind.INT,)).id, 2)


def test_anonymous_members_are_searched() -> None:
    btf, _ = _kernelish()
    assert btf.offsetof("task_struct", "raw") == 0
    assert btf.offsetof("task_struct", "cpu") == 4
    assert btf.offsetof("task_struct", "deep") == 8  # two anonymous levels down
    assert [m.name for m in btf.struct("task_struct")][:2] == ["", "__state"]
    with pytest.raises(KernelError, match="no member"):
        btf.field("task_struct", "nonexistent")
    assert not btf.has_field("task_struct", "state")


def test_bitfields_both_encodings() -> None:
    btf, _ = _kernelish()
    kf = {m.name: m for m in btf.struct("bits_kf")}
    assert (kf["a"].bit_offset, kf["a"].bitfield_size) == (0, 3)
    assert (kf["b"].bit_offset, kf["b"].bitfield_size) == (3, 5)
    assert (kf["c"].bit_offset, kf["c"].bitfield_size, kf["c"].offset) == (8, 0, 1)
    old = {m.name: m for m in btf.struct("bits_old")}
    assert (old["a"].bit_offset, old["a"].bitfield_size) == (0, 3)
    assert (old["b"].bit_offset, old["b"].bitfield_size) == (3, 5)
    nested = btf.field("task_struct", "bits.b")
    assert (nested.bit_offset, nested.bitfield_size) == (64 * 8 + 3, 5)


def test_enums_and_other_kinds() -> None:
    btf, _ = _kernelish()
    assert btf.enum("module_state")["MODULE_STATE_GOING"] == 2
    assert btf.enum("neg") == {"MINUS": -1}
    assert btf.enum("big") == {"HUGE": 1 << 40, "ALL": (1 << 64) - 1}
    assert btf.enum("sbig") == {"NEG": -5}
    assert btf.enumerator("MODULE_STATE_UNFORMED") == 3
    with pytest.raises(KernelError):
        btf.enumerator("MOD_TEXT")
    kinds = {btf.type(i).kind for i in range(1, len(btf) + 1)}
    assert kinds == set(range(1, 20))  # every kind BTF has
    assert btf.type(0).name == "void"
    assert btf.find("mm_struct", (Kind.FWD,)).kind == Kind.FWD
    assert btf.sizeof(btf.find("mm_struct", (Kind.FWD,)).id) == 0
    assert btf.sizeof(btf.find("double", (Kind.FLOAT,)).id) == 8
    assert btf.sizeof(btf.find(".data..percpu", (Kind.DATASEC,)).id) == 96


def test_rejects_garbage() -> None:
    b = BtfBuilder()
    b.int("int", 4)
    good = b.blob()
    with pytest.raises(KernelError, match="not BTF"):
        Btf.from_bytes(b"\0" * 64)
    with pytest.raises(KernelError, match="shorter"):
        Btf.from_bytes(good[:10])
    with pytest.raises(KernelError, match="past the blob"):
        Btf.from_bytes(good[:-4])
    bad_kind = bytearray(good)
    bad_kind[24 + 7] = 0x1F  # kind 31 in the first type's info
    with pytest.raises(KernelError, match="unknown kind"):
        Btf.from_bytes(bytes(bad_kind))
    with pytest.raises(KernelError, match="out of range"):
        Btf.from_bytes(good).type(99)
    loop = BtfBuilder()
    t = loop.reserve()
    loop.add(Kind.TYPEDEF, "loop", 0, t, at=t)
    with pytest.raises(KernelError, match="chain too long"):
        Btf.from_bytes(loop.blob()).sizeof("loop")
