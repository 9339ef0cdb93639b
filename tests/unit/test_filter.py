"""FilteredDump end to end on synthetic kernels: classes, windows, self-check, fallback, refilter, estimate."""

from __future__ import annotations

import json
import logging

import pytest
from test_mm import RAM_PAGES, RAM_START, Machine

from kdumpkit.capture.filter import filtered
from kdumpkit.dump.base import PageState
from kdumpkit.errors import UsageError
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

PG_LRU, PG_PRIVATE, PG_HWPOISON = 4, 13, 23
HEAD = 1 << 16
FREE_BLOCKS = (RAM_START + 2048, RAM_START + 3072)  # two order-10 buddy blocks: 2048 free pages


def populated(model: str = "vmemmap", *, free_kernel: int = 2048 + 8) -> Machine:
    m = Machine(model, free_kernel=free_kernel)
    b = RAM_START
    m.page(b + 0, mapcount=-129, private=3)                    # 8 free pages
    m.page(b + 16, flags=1 << PG_LRU, mapping=0xFFFF_8880_0000_1000)                    # cache
    m.page(b + 17, flags=1 << PG_LRU | 1 << PG_PRIVATE, mapping=0xFFFF_8880_0000_1000)  # cache + private
    m.page(b + 18, mapping=0xFFFF_8880_0000_2001)              # anon
    m.page(b + 19, flags=1 << PG_HWPOISON)                     # hwpoison: always
    m.page(b + 20, mapcount=-257)                              # offline: always
    m.page(b + 32, flags=HEAD, mapping=0xFFFF_8880_0000_3001)  # anon THP, order 2
    m.page(b + 33, order=2, chead=(b + 32) * 64 + 1)
    for t in (34, 35):
        m.page(b + t, chead=(b + 32) * 64 + 1)
    m.page(b + 64, flags=HEAD)                                 # hugetlb, order 3
    m.page(b + 65, order=3, dtor=2, chead=1)
    for t in range(66, 72):
        m.page(b + t, chead=1)
    for s in FREE_BLOCKS:
        m.page(s, mapcount=-129, private=10)
    return m


EXPECT = {
    "free": list(range(0, 8)) + list(range(2048, 4096)),
    "cache": [16], "cache_private": [17], "user": [18, 32, 33, 34, 35] + list(range(64, 72)),
    "hwpoison": [19], "offline": [20],
}


def excluded_set(f: object) -> set[int]:
    from kdumpkit.capture.filter import FilteredDump
    assert isinstance(f, FilteredDump)
    return {p - RAM_START for p in range(RAM_START, RAM_START + RAM_PAGES) if f.page_state(p) is PageState.EXCLUDED}


@pytest.mark.parametrize("model", ["vmemmap", "sparse", "static", "flat"])
def test_level_31_every_model(model: str) -> None:
    d = populated(model).dump()
    f = filtered(d, 31)
    assert excluded_set(f) == {p for v in EXPECT.values() for p in v}
    for k, v in EXPECT.items():
        assert f.counts[k] == len(v), k
    assert f.counts["excluded"] == sum(len(v) for v in EXPECT.values())
    assert f.counts["kept"] + f.counts["excluded"] == sum(e - s for s, e in d.dumped_runs())
    assert f.selfcheck_result is not None and f.selfcheck_result.ok and f.selfcheck_result.checked
    assert f.exclude_zero


@pytest.mark.parametrize("level,classes", [
    (0, ["hwpoison", "offline"]), (2, ["cache", "hwpoison", "offline"]),
    (4, ["cache", "cache_private", "hwpoison", "offline"]), (8, ["user", "hwpoison", "offline"]),
    (16, ["free", "hwpoison", "offline"]), (1, ["hwpoison", "offline"])])
def test_each_level_bit(level: int, classes: list[str]) -> None:
    f = filtered(populated().dump(), level)
    assert excluded_set(f) == {p for c in classes for p in EXPECT[c]}
    assert f.exclude_zero == bool(level & 1)


def test_layer_delegates_and_runs_are_consistent() -> None:
    d = populated().dump()
    f = filtered(d, 31)
    runs = f.dumped_runs()
    assert sum(e - s for s, e in runs) == f.counts["kept"]
    pfn = runs[0][0]
    assert bytes(f.read_page(pfn)) == bytes(d.read_page(pfn))
    assert f.notes() == d.notes()
    assert f.ram_runs() == d.ram_runs()
    assert f.page_state(RAM_START + 16) is PageState.EXCLUDED
    assert f.info().details["dump_level"] == 31


@pytest.mark.parametrize("window", [8, 64, 1000 * 8])
def test_windows_do_not_change_the_result(window: int) -> None:
    d = populated().dump()
    assert filtered(d, 31, window_pfns=window).dumped_runs() == filtered(d, 31).dumped_runs()


def test_bad_window_and_level() -> None:
    d = populated().dump()
    with pytest.raises(UsageError):
        filtered(d, 32)
    with pytest.raises(UsageError):
        filtered(d, 31, window_pfns=12)


def wrong_offsets(d: object) -> VmcoreInfo:
    from kdumpkit.dump.base import Dump
    assert isinstance(d, Dump)
    raw = d.vmcoreinfo_raw()
    assert raw is not None
    return VmcoreInfo.from_text(raw.replace(b"OFFSET(page._mapcount)=48", b"OFFSET(page._mapcount)=52"))


def test_selfcheck_trips_on_wrong_offsets(caplog: pytest.LogCaptureFixture) -> None:
    d = populated().dump()
    with caplog.at_level(logging.WARNING, logger="kdumpkit"):
        f = filtered(d, 31, vmcoreinfo=wrong_offsets(d))
    sc = f.selfcheck_result
    assert sc is not None and not sc.ok and sc.checked
    assert sc.free_found == 0 and sc.free_kernel == 2048 + 8
    assert "SELF-CHECK FAILED" in caplog.text
    assert f.dump_level == 31


def test_selfcheck_fallback_level(caplog: pytest.LogCaptureFixture) -> None:
    d = populated().dump()
    with caplog.at_level(logging.WARNING, logger="kdumpkit"):
        f = filtered(d, 31, vmcoreinfo=wrong_offsets(d), fallback_level=1)
    assert f.dump_level == 1
    assert f.selfcheck_result is not None and not f.selfcheck_result.ok
    assert "falling back to dump level 1" in caplog.text


def test_selfcheck_kernel_counter_disagrees() -> None:
    f = filtered(populated(free_kernel=100_000).dump(), 16)
    assert f.selfcheck_result is not None and not f.selfcheck_result.ok
    f = filtered(populated(free_kernel=2048 + 8 + 100).dump(), 16)  # per-CPU drift: within the margin
    assert f.selfcheck_result is not None and f.selfcheck_result.ok


def test_free_seen_is_counted_at_any_level() -> None:
    f = filtered(populated().dump(), 2)
    assert f.free_seen == 2048 + 8 and f.counts["free"] == 0
    assert f.selfcheck_result is not None and f.selfcheck_result.ok


def test_selfcheck_disabled() -> None:
    assert filtered(populated().dump(), 31, selfcheck=False).selfcheck_result is None


def test_unreadable_struct_pages_are_kept() -> None:
    m = populated()
    d = m.dump()
    vmemmap_page = (m.page_pa(RAM_START) >> 12)  # the 4 KiB page holding struct pages RAM_START..+63
    d.excluded.add(vmemmap_page)
    f = filtered(d, 31, selfcheck=False)
    ex = excluded_set(f)
    assert not ex & set(range(0, 64))
    assert f.counts["unreadable"] == 64


def test_refilter_a_kdump_file() -> None:
    kdump = pytest.importorskip("kdumpkit.dump.kdump")
    from kdumpkit.dump.fileio import BytesSource
    from kdumpkit.dump.sink import MemorySink

    d = populated().dump()
    low = filtered(d, 2)
    sink = MemorySink()
    kdump.write_kdump(low, sink, codec=None, dump_level=2)
    k = kdump.KdumpFile(BytesSource(bytes(sink.buf)))
    assert k.page_state(RAM_START + 16) is PageState.EXCLUDED
    high = filtered(k, 31)
    direct = filtered(d, 31)
    assert high.dumped_runs() == direct.dumped_runs()
    assert high.page_state(RAM_START + 16) is PageState.EXCLUDED  # stays excluded
    assert high.counts["cache"] == 0  # already gone from the source: not counted again
    assert high.counts["free"] == direct.counts["free"]


def test_estimate_cli(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from kdumpkit.cli.main import main
    from kdumpkit.dump.elf import write_elf
    from kdumpkit.dump.sink import FileSink

    assert isinstance(tmp_path, Path)
    d = populated().dump()
    out = tmp_path / "core"
    sink = FileSink(str(out))
    try:
        write_elf(d, sink)
    finally:
        sink.close()
    assert main(["estimate", str(out), "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["classes"]["free"] == 2048 + 8
    assert est["levels"]["16"]["pages"] == est["dumped_pages"] - sum(len(EXPECT[c]) for c in ("free", "hwpoison", "offline"))
    assert est["levels"]["31"]["pages"] is None  # zero pages not counted without --zero
    assert est["selfcheck"]["ok"]
    assert main(["estimate", str(out), "--zero"]) == 0
    assert "self-check: ok" in capsys.readouterr().out
    assert main(["estimate", "/proc/kcore"]) != 0
