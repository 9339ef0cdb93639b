"""The vectorised page classifier on hand-made struct page arrays, per kernel era."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kdumpkit.kernel.pageflags import (
    CLASS_CACHE,
    CLASS_CACHE_PRIVATE,
    CLASS_FREE,
    CLASS_HWPOISON,
    CLASS_NONE,
    CLASS_OFFLINE,
    CLASS_UNACCEPTED,
    CLASS_USER,
    PageFlagsSpec,
    classify,
    level_classes,
)
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

# struct page layout and numbers of a Debian 6.1 x86_64 kernel (from its VMCOREINFO)
V61 = """OSRELEASE=6.1.0-56-amd64
PAGESIZE=4096
SIZE(page)=64
OFFSET(page.flags)=0
OFFSET(page._refcount)=52
OFFSET(page.mapping)=24
OFFSET(page.lru)=8
OFFSET(page._mapcount)=48
OFFSET(page.private)=40
OFFSET(page.compound_dtor)=16
OFFSET(page.compound_order)=17
OFFSET(page.compound_head)=8
LENGTH(zone.free_area)=11
NUMBER(NR_FREE_PAGES)=0
NUMBER(PG_lru)=4
NUMBER(PG_private)=13
NUMBER(PG_swapcache)=10
NUMBER(PG_swapbacked)=19
NUMBER(PG_slab)=9
NUMBER(PG_hwpoison)=23
NUMBER(PG_head_mask)=65536
NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129
NUMBER(HUGETLB_PAGE_DTOR)=2
NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)=-257
"""

PG_LRU, PG_PRIVATE, PG_SWAPCACHE, PG_SWAPBACKED, PG_SLAB, PG_HWPOISON = 4, 13, 10, 19, 9, 23
HEAD = 1 << 16


def vmci(text: str, drop: tuple[str, ...] = (), add: str = "") -> VmcoreInfo:
    lines = [ln for ln in text.splitlines() if not any(ln.startswith(d) for d in drop)]
    return VmcoreInfo.from_text(("\n".join(lines) + "\n" + add).encode())


def era_612() -> VmcoreInfo:
    """6.12+: page types in the top byte, hugetlb and slab as types, order in the tail's flags."""
    return vmci(V61.replace("6.1.0-56", "6.12.0"), drop=("NUMBER(PG_slab)", "NUMBER(HUGETLB", "NUMBER(PAGE_BUDDY",
                                                          "NUMBER(PAGE_OFFLINE", "OFFSET(page.compound_"),
                add="NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-268435456\nNUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)=-251658240\n"
                    "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)=-201326592\nNUMBER(PAGE_SLAB_MAPCOUNT_VALUE)=-184549376\n"
                    "NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)=-150994944\nOFFSET(page.compound_head)=8\n")


class Pages:
    """A struct page array of ``n`` pfns (+1 for the tail lookahead), 6.1 layout."""

    def __init__(self, n: int) -> None:
        self.buf = bytearray(64 * (n + 1))
        self.n = n
        for i in range(n + 1):
            self.set(i, mapcount=-1)

    def set(self, i: int, *, flags: int | None = None, mapping: int | None = None, mapcount: int | None = None,
            private: int | None = None, chead: int | None = None, byte16: int | None = None,
            byte17: int | None = None) -> Pages:
        o = 64 * i
        if flags is not None:
            struct.pack_into("<Q", self.buf, o, flags)
        if chead is not None:
            struct.pack_into("<Q", self.buf, o + 8, chead)
        if byte16 is not None:
            self.buf[o + 16] = byte16
        if byte17 is not None:
            self.buf[o + 17] = byte17
        if mapping is not None:
            struct.pack_into("<Q", self.buf, o + 24, mapping)
        if private is not None:
            struct.pack_into("<Q", self.buf, o + 40, private)
        if mapcount is not None:
            struct.pack_into("<i", self.buf, o + 48, mapcount)
        return self

    def compound(self, head: int, order: int, *, dtor: int = 0, head_flags: int = 0, mapping: int = 0) -> Pages:
        self.set(head, flags=HEAD | head_flags, mapping=mapping)
        self.set(head + 1, byte16=dtor, byte17=order)
        for t in range(head + 1, head + (1 << order)):
            self.set(t, chead=0xFFFF_8880_0000_0000 + head * 64 + 1)
        return self

    def array(self) -> np.ndarray:
        return np.frombuffer(bytes(self.buf), dtype=np.uint8).reshape(self.n + 1, 64)

    def run(self, level: int, info: VmcoreInfo | None = None, start: int = 0, readable: np.ndarray | None = None,
            carry: tuple[int, int] | None = None) -> np.ndarray:
        spec = PageFlagsSpec.from_vmcoreinfo(info or vmci(V61))
        r = readable if readable is not None else np.ones(self.n, dtype=bool)
        res = classify(spec, self.array(), r, start, level, carry=carry)
        return res.cls


def test_level_classes() -> None:
    assert level_classes(0) == {"hwpoison", "offline"}
    assert level_classes(2) == {"hwpoison", "offline", "cache"}
    assert level_classes(4) == {"hwpoison", "offline", "cache", "cache_private"}
    assert level_classes(31) >= {"free", "unaccepted", "user", "cache", "cache_private"}


def test_cache_private_and_not() -> None:
    p = Pages(8)
    p.set(0, flags=1 << PG_LRU, mapping=0xFFFF_8880_1234_0000)                       # cache, no private
    p.set(1, flags=1 << PG_LRU | 1 << PG_PRIVATE, mapping=0xFFFF_8880_1234_0000)     # cache + private
    p.set(2, flags=1 << PG_SWAPCACHE | 1 << PG_SWAPBACKED, mapping=0xFFFF_8880_1234_0000)  # swap cache
    p.set(3, flags=1 << PG_SWAPCACHE, mapping=0xFFFF_8880_1234_0000)                 # owner_priv_1 only: not cache
    p.set(4, flags=1 << PG_LRU, mapping=0xFFFF_8880_1234_0001)                       # anon on LRU: user, not cache
    p.set(5, flags=1 << PG_LRU | 1 << PG_SWAPCACHE | 1 << PG_SWAPBACKED, mapping=0xFFFF_8880_1234_0001)  # anon swapcache
    assert p.run(2)[:6].tolist() == [CLASS_CACHE, 0, CLASS_CACHE, 0, 0, 0]
    assert p.run(4)[:6].tolist() == [CLASS_CACHE, CLASS_CACHE_PRIVATE, CLASS_CACHE, 0, 0, 0]
    assert p.run(8)[:6].tolist() == [0, 0, 0, 0, CLASS_USER, CLASS_USER]
    assert p.run(6)[:6].tolist() == [CLASS_CACHE, CLASS_CACHE_PRIVATE, CLASS_CACHE, 0, 0, 0]


def test_ksm_and_slab_mapping() -> None:
    p = Pages(4)
    p.set(0, mapping=0xFFFF_8880_1234_0003)                          # KSM: anon
    p.set(1, flags=1 << PG_SLAB, mapping=0xFFFF_8880_1234_0001)      # slab overlaying mapping: never anon
    assert p.run(8)[:2].tolist() == [CLASS_USER, 0]


def test_buddy_blocks_cover_their_order_and_respect_max_order() -> None:
    p = Pages(64)
    p.set(0, mapcount=-129, private=3)      # 8 free pages
    p.set(16, mapcount=-129, private=0)     # 1 free page
    p.set(17, flags=1 << PG_SLAB, mapcount=-129)  # slab: never buddy
    p.set(32, mapcount=-129, private=11)    # order >= LENGTH(zone.free_area): kept
    p.set(40, mapcount=-128, private=0)     # the pre-4.18 value is not this kernel's
    cls = p.run(16)
    assert cls[:8].tolist() == [CLASS_FREE] * 8
    assert cls[8:16].tolist() == [0] * 8
    assert cls[16] == CLASS_FREE and cls[17] == 0 and cls[32] == 0 and cls[40] == 0
    assert not p.run(15).any()


def test_pages_inside_a_buddy_block_are_not_classified_again() -> None:
    p = Pages(16)
    p.set(0, mapcount=-129, private=2)
    p.set(2, flags=1 << PG_LRU)  # stale data inside the free block
    assert p.run(31)[:4].tolist() == [CLASS_FREE] * 4
    assert p.run(15)[2] == CLASS_CACHE  # without level 16 the block does not hide it


def test_partially_overlapping_blocks_follow_the_sequential_walk() -> None:
    p = Pages(32)
    p.set(0, mapcount=-129, private=2)      # [0, 4)
    p.set(2, mapcount=-129, private=3)      # inside: skipped, its [2, 10) must not count
    p.set(5, mapcount=-129, private=0)
    cls = p.run(16)
    assert cls[:6].tolist() == [CLASS_FREE] * 4 + [0, CLASS_FREE]
    assert cls[6:10].tolist() == [0] * 4


def test_compound_anon_thp_and_hugetlb_61() -> None:
    p = Pages(64)
    p.compound(0, 4, mapping=0xFFFF_8880_0000_0001)          # anon THP: 16 pages user
    p.compound(32, 3, dtor=2)                                # hugetlb (HUGETLB_PAGE_DTOR=2)
    p.compound(48, 3, dtor=1)                                # other compound (e.g. slab-less kernel buffer)
    cls = p.run(8)
    assert cls[:16].tolist() == [CLASS_USER] * 16
    assert cls[32:40].tolist() == [CLASS_USER] * 8
    assert cls[48:56].tolist() == [0] * 8
    assert not p.run(7).any()


def test_unaligned_compound_head_counts_as_order_zero() -> None:
    p = Pages(16)
    p.compound(1, 2, mapping=1)
    cls = p.run(8)
    assert cls[1] == CLASS_USER and cls[2:5].tolist() == [0, 0, 0]


def test_tail_is_classified_by_a_head_in_the_previous_window() -> None:
    p = Pages(8)
    for i in range(8):
        p.set(i, chead=0x1001)
    cls = p.run(31, start=1024, carry=(1028, CLASS_USER))
    assert cls.tolist() == [CLASS_USER] * 4 + [0] * 4


def test_carry_out_of_window() -> None:
    p = Pages(8)
    p.set(4, mapcount=-129, private=3)
    spec = PageFlagsSpec.from_vmcoreinfo(vmci(V61))
    res = classify(spec, p.array(), np.ones(8, dtype=bool), 8, 16)
    assert res.carry == (8 + 4 + 8, CLASS_FREE)
    assert res.free_seen == 4


def test_hwpoison_and_offline_always_excluded() -> None:
    p = Pages(4)
    p.set(0, flags=1 << PG_HWPOISON)
    p.set(1, mapcount=-257)
    p.set(2, mapcount=-257, flags=1 << PG_SLAB)
    p.set(3, flags=1 << PG_HWPOISON, mapping=1)
    assert p.run(0).tolist() == [CLASS_HWPOISON, CLASS_OFFLINE, 0, CLASS_HWPOISON]
    assert p.run(8).tolist() == [CLASS_HWPOISON, CLASS_OFFLINE, 0, CLASS_USER]


def test_unreadable_pages_are_kept() -> None:
    p = Pages(4)
    p.set(0, mapcount=-129, private=0)
    p.set(1, flags=1 << PG_LRU)
    assert p.run(31, readable=np.array([False, False, True, True])).tolist() == [0, 0, 0, 0]


def test_era_612_top_byte_types() -> None:
    info = era_612()
    p = Pages(32)
    p.set(0, mapcount=-268435456 | 0, private=1)              # buddy 0xf0000000
    p.set(2, mapcount=0xF0000005 - (1 << 32), private=0)     # buddy with owner bits in the low 24
    p.set(3, mapcount=-184549376, mapping=1)                 # slab: never anon
    p.set(4, mapcount=-251658240)                            # offline
    p.set(5, mapcount=-150994944)                            # unaccepted: MAX_ORDER block at level 16
    cls16 = p.run(16, info)
    assert cls16[:3].tolist() == [CLASS_FREE, CLASS_FREE, CLASS_FREE]
    assert cls16[3] == 0 and cls16[4] == CLASS_OFFLINE and cls16[5] == CLASS_UNACCEPTED
    assert p.run(8, info)[3] == 0
    # hugetlb head: page type on the head, order in the low byte of the first tail's flags
    q = Pages(16)
    q.set(0, flags=HEAD, mapcount=-201326592)
    q.set(1, flags=3, chead=1)
    for t in range(2, 8):
        q.set(t, chead=1)
    assert q.run(8, info)[:8].tolist() == [CLASS_USER] * 8


def test_era_66_pg_hugetlb_in_tail_flags() -> None:
    info = vmci(V61.replace("6.1.0-56", "6.6.0"), drop=("NUMBER(HUGETLB", "OFFSET(page.compound_"),
                add="NUMBER(PG_hugetlb)=8\nOFFSET(page.compound_head)=8\n")
    q = Pages(8)
    q.set(0, flags=HEAD)
    q.set(1, flags=2 | 1 << 8, chead=1)  # PG_hugetlb = PG_active = 8 on 6.6
    for t in range(2, 4):
        q.set(t, chead=1)
    assert q.run(8, info)[:4].tolist() == [CLASS_USER] * 4
    q.set(1, flags=2, chead=1)
    assert q.run(8, info)[:4].tolist() == [0] * 4


def test_era_63_folio_dtor() -> None:
    info = vmci(V61.replace("6.1.0-56", "6.3.0"), drop=("OFFSET(page.compound_",),
                add="OFFSET(folio._folio_dtor)=80\nOFFSET(folio._folio_order)=81\nOFFSET(page.compound_head)=8\n")
    p = Pages(8)
    p.compound(0, 2, dtor=2)   # bytes 16/17 of the tail page == folio offsets 80/81 - 64
    assert p.run(8, info)[:4].tolist() == [CLASS_USER] * 4


def test_pre_612_values_are_compared_exactly() -> None:
    p = Pages(2)
    p.set(0, mapcount=-129 & ~0xFF)  # same top byte, different value: not buddy before 6.12
    assert p.run(16)[0] == CLASS_NONE


@pytest.mark.parametrize("level", range(32))
def test_level_bits_only_exclude_their_classes(level: int) -> None:
    p = Pages(8)
    p.set(0, mapcount=-129, private=0)
    p.set(1, flags=1 << PG_LRU, mapping=0x1000)
    p.set(2, flags=1 << PG_LRU | 1 << PG_PRIVATE, mapping=0x1000)
    p.set(3, mapping=0x1001)
    names = {CLASS_FREE: "free", CLASS_CACHE: "cache", CLASS_CACHE_PRIVATE: "cache_private", CLASS_USER: "user"}
    cls = p.run(level)
    allowed = level_classes(level)
    for i, c in enumerate(cls[:4].tolist()):
        if c:
            assert names[c] in allowed, (i, c)
    assert bool(cls[0]) == bool(level & 16)
    assert bool(cls[1]) == bool(level & 6)
    assert bool(cls[2]) == bool(level & 4)
    assert bool(cls[3]) == bool(level & 8)
