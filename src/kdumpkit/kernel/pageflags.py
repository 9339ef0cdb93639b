"""Page classes from ``struct page`` fields, vectorised, the way makedumpfile decides.

makedumpfile's ``__exclude_unnecessary_pages`` (formats.md §5.2) walks pfns
one by one: tail pages are skipped, the first matching class wins (free,
cache without private data, any cache, user data, hwpoison, offline,
unaccepted), and a match on a compound head or a buddy block excludes the
whole ``2^order`` block and *jumps past it*, so pages inside the block are
never looked at.  :func:`classify` reproduces that decision for a window of
pfns with NumPy operations on the raw ``struct page`` array; the only
sequential part (which block "wins" when blocks overlap) is done on block
starts, not pages, and only when blocks overlap partially, which consistent
kernel data never does (buddy blocks and compound pages are aligned).

Every constant comes from VMCOREINFO, because each changed over time
(formats.md §2.5): ``NUMBER(PG_*)`` are bit numbers but ``PG_head_mask`` is
a mask; buddy/offline/slab/hugetlb/unaccepted are ``_mapcount`` (page_type)
values compared for equality — except that from 6.12 the type is the top
byte and the low 24 bits belong to the owner, recognised by an exported
value whose low 24 bits are zero; hugetlb is a compound destructor id
(4.4–6.5), a tail-page flag (6.6–6.8) or a page type (6.9+); slab is a flag
until 6.10 and a page type after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdumpkit.errors import BadDumpError, KernelError
from kdumpkit.kernel.mm import field_offset, page_struct_size, plausible
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

__all__ = [
    "CLASS_NAMES",
    "CLASS_CACHE",
    "CLASS_CACHE_PRIVATE",
    "CLASS_FREE",
    "CLASS_HWPOISON",
    "CLASS_NONE",
    "CLASS_OFFLINE",
    "CLASS_UNACCEPTED",
    "CLASS_USER",
    "Classification",
    "PageFlagsSpec",
    "classify",
    "level_classes",
]

CLASS_NONE = 0
CLASS_FREE = 1
CLASS_CACHE = 2
CLASS_CACHE_PRIVATE = 3  # CLASS_CACHE + 1: classify() relies on it
CLASS_USER = 4
CLASS_HWPOISON = 5
CLASS_OFFLINE = 6
CLASS_UNACCEPTED = 7
CLASS_NAMES = {CLASS_FREE: "free", CLASS_CACHE: "cache", CLASS_CACHE_PRIVATE: "cache_private", CLASS_USER: "user",
               CLASS_HWPOISON: "hwpoison", CLASS_OFFLINE: "offline", CLASS_UNACCEPTED: "unaccepted"}

DL_EXCLUDE_ZERO = 1
DL_EXCLUDE_CACHE = 2
DL_EXCLUDE_CACHE_PRI = 4
DL_EXCLUDE_USER_DATA = 8
DL_EXCLUDE_FREE = 16

PAGE_MAPPING_ANON = 1
_PGTY_LOW_MASK = 0x00FF_FFFF


def level_classes(dump_level: int) -> set[str]:
    """Class names ``dump_level`` can exclude (hwpoison and offline always are)."""
    out = {"hwpoison", "offline"}
    if dump_level & DL_EXCLUDE_FREE:
        out |= {"free", "unaccepted"}
    if dump_level & DL_EXCLUDE_CACHE:
        out.add("cache")
    if dump_level & DL_EXCLUDE_CACHE_PRI:
        out |= {"cache", "cache_private"}
    if dump_level & DL_EXCLUDE_USER_DATA:
        out.add("user")
    return out


def _u32(v: int | None) -> int | None:
    return None if v is None else v & 0xFFFF_FFFF


@dataclass(frozen=True)
class PageFlagsSpec:
    """Layout of ``struct page`` and the page-class constants of one kernel."""

    size: int
    off_flags: int
    off_mapping: int
    off_mapcount: int | None
    off_private: int | None
    off_compound_head: int | None
    pg_lru: int
    pg_private: int
    pg_swapcache: int | None
    pg_swapbacked: int | None
    pg_slab: int | None
    slab_mapcount: int | None
    pg_hwpoison: int | None
    head_mask: int
    buddy_mapcount: int | None
    pg_buddy: int | None
    offline_mapcount: int | None
    unaccepted_mapcount: int | None
    hugetlb_mapcount: int | None
    pg_hugetlb: int | None
    hugetlb_dtor: int | None
    free_huge_page: int | None
    tail_order_off: int | None
    """Offset of the compound order inside the *first tail* page (None: no order)."""
    tail_order_size: int
    tail_dtor_off: int | None
    tail_dtor_size: int
    max_order: int | None
    """``LENGTH(zone.free_area)``: number of buddy orders."""
    byteorder: str = "little"

    @classmethod
    def from_vmcoreinfo(cls, info: VmcoreInfo, *, byteorder: str = "little") -> PageFlagsSpec:
        """Read every constant from VMCOREINFO.

        Raises :class:`KernelError` when the basics are missing and
        :class:`BadDumpError` (naming the key) when a size, offset or bit
        number is one no kernel has: every field read from a ``struct page``
        row must lie inside it, every flag bit inside the 64-bit ``flags``.
        """
        size = page_struct_size(info)
        version = info.kernel_version() or (0, 0, 0)

        def num(name: str) -> int | None:
            return info.number(name)

        def bit(name: str) -> int | None:
            nr = num(name)
            return None if nr is None else plausible(f"NUMBER({name})", nr, 0, 63)

        def offset(name: str, width: int) -> int | None:
            return field_offset(f"OFFSET({name})", info.offset(name), width, size)

        pg_lru = bit("PG_lru")
        pg_private = bit("PG_private")
        head_mask = num("PG_head_mask")
        if pg_lru is None or pg_private is None:
            raise KernelError("VMCOREINFO lacks NUMBER(PG_lru)/NUMBER(PG_private): cannot classify pages")
        if head_mask is not None and not (0 < head_mask < 1 << 64 and head_mask & (head_mask - 1) == 0):
            raise BadDumpError("NUMBER(PG_head_mask)", head_mask, "one bit of the 64-bit page flags")
        off_flags = offset("page.flags", 8) or 0
        off_head = offset("page.compound_head", 8)
        if off_head is None:
            off_head = offset("page.compound_info", 8)  # 7.1 rename
        max_order = info.length("zone.free_area")
        if max_order is not None:
            plausible("LENGTH(zone.free_area)", max_order, 1, 64)
        # compound order / destructor location in the first tail page, per era
        order_off: int | None = None
        order_size = 1
        dtor_off: int | None = None
        dtor_size = 1
        order_key = dtor_key = ""  # the VMCOREINFO keys the tail offsets come from (for errors)
        hugetlb_mapcount = num("PAGE_HUGETLB_MAPCOUNT_VALUE")
        pg_hugetlb = bit("PG_hugetlb")
        if hugetlb_mapcount is not None or pg_hugetlb is not None:
            order_off, order_key = off_flags, "OFFSET(page.flags)"  # folio._flags_1 & 0xff (6.6+)
        elif info.offset("folio._folio_order") is not None:
            # folio fields past the head page: offsets into the first tail page
            fo = field_offset("OFFSET(folio._folio_order)", info.offset("folio._folio_order"), 1, 2 * size)
            fd = field_offset("OFFSET(folio._folio_dtor)", info.offset("folio._folio_dtor"), 1, 2 * size)
            order_off, order_key = None if fo is None else fo - size, "OFFSET(folio._folio_order) - SIZE(page)"
            dtor_off, dtor_key = None if fd is None else fd - size, "OFFSET(folio._folio_dtor) - SIZE(page)"
        else:
            order_off, order_key = info.offset("page.compound_order"), "OFFSET(page.compound_order)"
            dtor_off, dtor_key = info.offset("page.compound_dtor"), "OFFSET(page.compound_dtor)"
            if version < (4, 16, 0):
                order_size = 2
                dtor_size = 2
            if version < (4, 4, 0):
                lru = info.offset("page.lru")
                nxt = info.offset("list_head.next") or 0
                prv = info.offset("list_head.prev") or 8
                if order_off is None and lru is not None:
                    order_off, order_key = lru + prv, "OFFSET(page.lru)"
                if dtor_off is None and lru is not None:
                    dtor_off, dtor_key = lru + nxt, "OFFSET(page.lru)"
                    dtor_size = 8
        return cls(
            size=size,
            off_flags=off_flags,
            off_mapping=field_offset("OFFSET(page.mapping)", info.require_offset("page.mapping"), 8, size),
            off_mapcount=offset("page._mapcount", 4),
            off_private=offset("page.private", 8),
            off_compound_head=off_head,
            pg_lru=pg_lru,
            pg_private=pg_private,
            pg_swapcache=bit("PG_swapcache"),
            pg_swapbacked=bit("PG_swapbacked"),
            pg_slab=bit("PG_slab"),
            slab_mapcount=_u32(num("PAGE_SLAB_MAPCOUNT_VALUE")),
            pg_hwpoison=bit("PG_hwpoison"),
            head_mask=head_mask or 0,
            buddy_mapcount=_u32(num("PAGE_BUDDY_MAPCOUNT_VALUE")),
            pg_buddy=bit("PG_buddy"),
            offline_mapcount=_u32(num("PAGE_OFFLINE_MAPCOUNT_VALUE")),
            unaccepted_mapcount=_u32(num("PAGE_UNACCEPTED_MAPCOUNT_VALUE")),
            hugetlb_mapcount=_u32(hugetlb_mapcount),
            pg_hugetlb=pg_hugetlb,
            hugetlb_dtor=num("HUGETLB_PAGE_DTOR"),
            free_huge_page=info.symbol("free_huge_page"),
            tail_order_off=field_offset(order_key, order_off, order_size, size),
            tail_order_size=order_size,
            tail_dtor_off=field_offset(dtor_key, dtor_off, dtor_size, size),
            tail_dtor_size=dtor_size,
            max_order=max_order,
            byteorder=byteorder,
        )

    @property
    def can_find_free(self) -> bool:
        """Whether buddy pages are recognisable from ``struct page`` alone."""
        return self.off_private is not None and (
            self.pg_buddy is not None or (self.buddy_mapcount is not None and self.off_mapcount is not None))


def _col(pages: np.ndarray, off: int, nbytes: int, byteorder: str) -> np.ndarray:
    """One integer field of every ``struct page`` row: a strided view of ``pages``, nothing copied."""
    end = "<" if byteorder == "little" else ">"
    col: np.ndarray = pages[:, off:off + nbytes].view(f"{end}u{nbytes}")[:, 0]
    return col


def _type_is(mapcount: np.ndarray, value: int | None) -> np.ndarray:
    """``_mapcount``/``page_type`` equals a page-type value (top byte only for the 6.12+ encoding)."""
    if value is None:
        return np.zeros(mapcount.shape, dtype=bool)
    if value & _PGTY_LOW_MASK == 0 and value >> 24 >= 0xF0:
        out: np.ndarray = (mapcount >> np.uint64(24)) == np.uint64(value >> 24)
        return out
    eq: np.ndarray = mapcount == np.uint64(value)
    return eq


def _type_range(value: int) -> tuple[int, int]:
    """The ``_mapcount`` values (as u32) that :func:`_type_is` accepts for ``value``."""
    if value & _PGTY_LOW_MASK == 0 and value >> 24 >= 0xF0:
        return value, value | _PGTY_LOW_MASK
    return value, value


def _bit(flags: np.ndarray, nr: int | None) -> np.ndarray:
    if nr is None:
        return np.zeros(flags.shape, dtype=bool)
    out: np.ndarray = (flags & np.uint64(1 << nr)) != 0
    return out


@dataclass
class Classification:
    """Result of :func:`classify` for one window.

    ``cls[i]`` is the class that excludes pfn ``start + i`` (CLASS_NONE =
    kept); ``carry`` is ``(end_pfn, class)`` of a block that runs past the
    window, to pass to the next call.  ``free_seen`` counts pfns in buddy
    blocks whatever the level (for the self-check).
    """

    cls: np.ndarray
    carry: tuple[int, int] | None
    free_seen: int
    bad_orders: int


@dataclass(frozen=True)
class _Plan:
    """What of a ``struct page`` can make its pfn a candidate, per spec (computed once)."""

    flag_mask: int
    """Flag bits of which one must be set for a class to apply (lru, swapcache, hwpoison, head, PG_buddy)."""
    type_lo: int | None
    """Smallest ``_mapcount`` (u32) of any page type that can classify (buddy, offline, unaccepted)."""
    type_span: int
    type_at_zero: bool
    """No ``_mapcount`` field: the classifier sees 0 there (only matters if a type value is 0)."""


_PLANS: dict[PageFlagsSpec, _Plan] = {}


def _plan(spec: PageFlagsSpec) -> _Plan:
    plan = _PLANS.get(spec)
    if plan is not None:
        return plan
    mask = spec.head_mask
    for nr in (spec.pg_lru, spec.pg_swapcache, spec.pg_hwpoison, spec.pg_buddy):
        if nr is not None:
            mask |= 1 << nr
    ranges = [_type_range(v) for v in (spec.buddy_mapcount, spec.offline_mapcount, spec.unaccepted_mapcount)
              if v is not None]
    lo = min(r[0] for r in ranges) if ranges else None
    hi = max(r[1] for r in ranges) if ranges else 0
    at_zero = spec.off_mapcount is None and lo is not None and lo == 0
    plan = _Plan(mask & 0xFFFF_FFFF_FFFF_FFFF, lo, (hi - lo) if lo is not None else 0, at_zero)
    _PLANS[spec] = plan
    return plan


def classify(spec: PageFlagsSpec, pages: np.ndarray, readable: np.ndarray, start_pfn: int, dump_level: int,
             *, carry: tuple[int, int] | None = None) -> Classification:
    """Classify pfns ``start_pfn .. start_pfn + len(readable) - 1``.

    ``pages`` holds ``len(readable) + 1`` rows (the extra row is the next
    pfn's ``struct page``: a head's order and hugetlb marker live in its first
    tail page); rows whose ``readable`` is False (no ``struct page``, or not
    RAM) are never classified and stay CLASS_NONE unless a block from an
    earlier readable head covers them — exactly makedumpfile's behaviour.

    Two passes: a cheap one over every row finds the *candidates* (a flag
    that can classify, the anonymous bit of ``mapping``, or a page-type
    ``_mapcount``), reading the fields as strided views of ``pages``; the
    full decision then runs on the candidates' gathered fields only.
    """
    n = readable.shape[0]
    if pages.ndim != 2 or pages.strides[1] != 1:
        pages = np.ascontiguousarray(pages)
    bo = spec.byteorder
    plan = _plan(spec)

    # -- pass 1: candidates ------------------------------------------------------------
    flags_col = _col(pages, spec.off_flags, 8, bo)
    mc_col = _col(pages, spec.off_mapcount, 4, bo) if spec.off_mapcount is not None else None
    low = spec.off_mapping if bo == "little" else spec.off_mapping + 7
    cand_m = np.bitwise_and(flags_col[:n], np.uint64(plan.flag_mask)).astype(bool)
    cand_m |= np.bitwise_and(pages[:n, low], np.uint8(PAGE_MAPPING_ANON)).view(bool)
    if plan.type_lo is not None:
        if mc_col is not None:
            t = np.subtract(mc_col[:n], np.uint32(plan.type_lo), dtype=np.uint32)
            cand_m |= t <= np.uint32(plan.type_span)
        elif plan.type_at_zero:
            cand_m[:] = True
    cand_m &= readable
    cand = np.flatnonzero(cand_m)
    if spec.off_compound_head is not None and cand.size:
        ch = _col(pages, spec.off_compound_head, 8, bo)[cand]
        cand = cand[(ch & np.uint64(1)) == 0]
    return _decide(spec, pages, cand, n, start_pfn, dump_level, carry, flags_col, mc_col)


def _decide(spec: PageFlagsSpec, pages: np.ndarray, cand: np.ndarray, n: int, start_pfn: int, dump_level: int,
            carry: tuple[int, int] | None, flags_col: np.ndarray, mc_col: np.ndarray | None) -> Classification:
    """makedumpfile's decision for the candidate rows ``cand`` (readable, not tails), then the blocks."""
    bo = spec.byteorder
    k = cand.size
    flags = flags_col[cand].astype(np.uint64, copy=False)
    mapcount = mc_col[cand].astype(np.uint64) if mc_col is not None else np.zeros(k, dtype=np.uint64)

    # -- compound heads: order (and hugetlb) from the first tail page --------------------
    order = np.zeros(k, dtype=np.int64)
    hugetlb = np.zeros(k, dtype=bool)
    if spec.head_mask:
        hsel = np.flatnonzero((flags & np.uint64(spec.head_mask)) != 0)
    else:
        hsel = np.zeros(0, dtype=np.int64)
    if hsel.size:
        hrow = cand[hsel]
        nxt = hrow + 1
        horder = np.zeros(hsel.size, dtype=np.int64)
        if spec.tail_order_off is not None:
            raw = _col(pages, spec.tail_order_off, spec.tail_order_size, bo)[nxt].astype(np.uint64)
            if spec.hugetlb_mapcount is not None or spec.pg_hugetlb is not None:
                raw = raw & np.uint64(0xFF)
            horder = raw.astype(np.int64)
        if spec.hugetlb_mapcount is not None:
            hhug = _type_is(mapcount[hsel], spec.hugetlb_mapcount)
        elif spec.pg_hugetlb is not None:
            hhug = _bit(flags_col[nxt].astype(np.uint64), spec.pg_hugetlb)
        elif spec.tail_dtor_off is not None:
            dtor = _col(pages, spec.tail_dtor_off, spec.tail_dtor_size, bo)[nxt].astype(np.uint64)
            want = spec.hugetlb_dtor if spec.hugetlb_dtor is not None else spec.free_huge_page
            hhug = np.zeros(hsel.size, dtype=bool)
            if want is not None:
                hhug = dtor == np.uint64(want & 0xFFFF_FFFF_FFFF_FFFF)
            if spec.hugetlb_dtor is not None and spec.free_huge_page is not None:
                hhug |= dtor == np.uint64(spec.free_huge_page & 0xFFFF_FFFF_FFFF_FFFF)
        else:
            hhug = np.zeros(hsel.size, dtype=bool)
        pfns = hrow.astype(np.int64) + start_pfn
        bad = (horder >= 64) | ((pfns & ((np.int64(1) << np.minimum(horder, 62)) - 1)) != 0)
        order[hsel] = np.where(bad, 0, horder)
        hugetlb[hsel] = hhug

    # -- predicates (makedumpfile.h / makedumpfile.c) -----------------------------------
    if spec.slab_mapcount is not None:
        slab = _type_is(mapcount, spec.slab_mapcount)
    else:
        slab = _bit(flags, spec.pg_slab)
    if spec.off_private is None:
        buddy = np.zeros(k, dtype=bool)
        private = np.zeros(k, dtype=np.uint64)
    elif spec.pg_buddy is not None:
        buddy = _bit(flags, spec.pg_buddy)
    elif spec.buddy_mapcount is not None and spec.off_mapcount is not None:
        buddy = ~slab & _type_is(mapcount, spec.buddy_mapcount)
    else:
        buddy = np.zeros(k, dtype=bool)
    if spec.off_private is not None:
        # private (the buddy order) matters on buddy pages only: read it there, 0 elsewhere
        private = np.zeros(k, dtype=np.uint64)
        bsel = np.flatnonzero(buddy)
        private[bsel] = _col(pages, spec.off_private, 8, bo)[cand[bsel]]
    cache = _bit(flags, spec.pg_lru)
    swapcache = _bit(flags, spec.pg_swapcache)
    if spec.pg_swapbacked is not None:
        swapcache &= _bit(flags, spec.pg_swapbacked)
    cache |= swapcache
    private_flag = _bit(flags, spec.pg_private)
    low = spec.off_mapping if bo == "little" else spec.off_mapping + 7
    anon = np.bitwise_and(pages[cand, low], np.uint8(PAGE_MAPPING_ANON)).view(bool) & ~slab

    # buddy order: order >= LENGTH(zone.free_area) is rejected (the page is then skipped entirely)
    max_order = spec.max_order if spec.max_order is not None else 64
    buddy_order = np.minimum(private, np.uint64(63)).astype(np.int64)
    bad_buddy = buddy & (private >= np.uint64(max_order))

    # -- first match wins: assign in reverse order of precedence, so earlier tests overwrite later ones
    cls = np.zeros(k, dtype=np.int8)
    if dump_level & DL_EXCLUDE_FREE and spec.unaccepted_mapcount is not None:
        np.copyto(cls, CLASS_UNACCEPTED, where=_type_is(mapcount, spec.unaccepted_mapcount))
    if spec.offline_mapcount is not None:
        np.copyto(cls, CLASS_OFFLINE, where=~slab & _type_is(mapcount, spec.offline_mapcount))
    if spec.pg_hwpoison is not None:
        np.copyto(cls, CLASS_HWPOISON, where=_bit(flags, spec.pg_hwpoison))
    if dump_level & DL_EXCLUDE_USER_DATA:
        np.copyto(cls, CLASS_USER, where=anon | hugetlb)
    filecache = cache & ~anon
    if dump_level & DL_EXCLUDE_CACHE_PRI:
        np.copyto(cls, CLASS_CACHE + private_flag.view(np.int8), where=filecache)  # CACHE_PRIVATE = CACHE + 1
    elif dump_level & DL_EXCLUDE_CACHE:
        np.copyto(cls, CLASS_CACHE, where=filecache & ~private_flag)
    if dump_level & DL_EXCLUDE_FREE:
        np.copyto(cls, CLASS_FREE - bad_buddy.view(np.int8), where=buddy)  # bad order: "invalid free page order", kept

    nr = np.int64(1) << order
    if dump_level & DL_EXCLUDE_FREE:
        free = cls == CLASS_FREE
        nr[free] = np.int64(1) << buddy_order[free]
        if spec.unaccepted_mapcount is not None:
            nr[cls == CLASS_UNACCEPTED] = np.int64(1) << max(max_order - 1, 0)

    sel = np.flatnonzero(cls)
    out_cls, new_carry = _apply_blocks(cand[sel].astype(np.int64), cand[sel] + nr[sel], cls[sel], n, start_pfn, carry)

    # free pages seen whatever the level (self-check): buddy blocks, nested ones ignored
    fb = buddy & ~bad_buddy
    free_seen = 0
    if fb.any():
        idx = cand[fb].astype(np.int64)
        ends = idx + (np.int64(1) << buddy_order[fb])
        prev = np.concatenate(([-1], np.maximum.accumulate(ends)[:-1]))
        top = idx >= prev
        free_seen = int(np.minimum(ends[top], n).sum() - idx[top].sum())
    return Classification(out_cls, new_carry, free_seen, int(np.count_nonzero(bad_buddy)))


def _apply_blocks(starts: np.ndarray, ends: np.ndarray, classes: np.ndarray, n: int, start_pfn: int,
                  carry: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Spread each winning block's class over ``[start, end)``, skipping blocks inside earlier ones.

    ``starts`` are ascending window offsets of the classified pfns, ``ends``
    their block ends (``start + nr``).
    """
    out = np.zeros(n, dtype=np.int8)
    if carry is not None and carry[0] > start_pfn:
        cend = carry[0] - start_pfn
        starts = np.concatenate(([0], starts))
        ends = np.concatenate(([cend], ends))
        classes = np.concatenate(([carry[1]], classes)).astype(np.int8)
    if starts.size == 0:
        return out, None
    if bool(np.all(ends - starts == 1)):
        out[starts] = classes  # single pages only: nothing nested, nothing past the window
        return out, None
    prev = np.concatenate(([-1], np.maximum.accumulate(ends)[:-1]))
    inside = starts < prev
    if bool(np.any(inside & (ends > prev))):
        # A block starts inside an earlier one but ends after it: only the
        # sequential walk is exact.  This loops over blocks (not pages) and
        # happens only with inconsistent data (unaligned buddy orders).
        active = np.zeros(starts.size, dtype=bool)
        cur = -1
        for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            if s >= cur:
                active[i] = True
                cur = e
    else:
        active = ~inside
    a_starts, a_ends, a_cls = starts[active], ends[active], classes[active]
    # active blocks are disjoint and sorted, so their (clipped) ends are distinct too:
    # +class at each start, -class at each end, and a running sum paints them all.
    d = np.zeros(n + 1, dtype=np.int8)
    d[a_starts] = a_cls
    d[np.minimum(a_ends, n)] -= a_cls
    np.cumsum(d[:n], dtype=np.int8, out=out)
    new_carry = None
    if a_ends.size and int(a_ends[-1]) > n:
        new_carry = (start_pfn + int(a_ends[-1]), int(a_cls[-1]))
    return out, new_carry
