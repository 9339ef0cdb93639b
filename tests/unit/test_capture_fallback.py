"""Capture saves something whatever VMCOREINFO says (issue #19).

Implausible filter facts give ``kdumpkit save -d 31`` a one-line error naming
the key; ``kdumpkit capture`` falls back to the next level, then to an
unfiltered copy (level 0), then to dmesg only, and its manifest says why.
A full disk, a quota or a file-size limit (EFBIG) are the same "no space".
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_filter import populated

import kdumpkit.dump
from kdumpkit.capture import session
from kdumpkit.capture.engine import SaveOptions, save_dump, save_to_file
from kdumpkit.capture.targets import LocalDestination
from kdumpkit.cli.main import build_parser, main
from kdumpkit.dump import open_dump
from kdumpkit.dump.base import Buffer, Dump
from kdumpkit.dump.convert import convert
from kdumpkit.dump.testing import SyntheticDump, assert_same_pages, synthetic_dump
from kdumpkit.errors import BadDumpError, KernelError, NoSpaceError
from kdumpkit.kernel.testing import SparseDump
from kdumpkit.setup.config import Target, loads_config

LOG = b"[    0.000000] Linux version 6.1.0-synthetic\n[   42.000000] sysrq: Trigger a crash\n"
RAM = [(0, 1500), (2048, 3000)]

#: (VMCOREINFO key, value): each once crashed the filter with IndexError, ValueError,
#: OverflowError, MemoryError or ZeroDivisionError
BAD_FACTS = [
    ("OFFSET(page.flags)", "-8"), ("OFFSET(page.flags)", "100000"),
    ("SIZE(page)", "0"), ("SIZE(page)", "1"), ("SIZE(page)", "-64"), ("SIZE(page)", str(1 << 40)),
    ("NUMBER(PG_lru)", "-1"), ("NUMBER(PG_lru)", "64"), ("NUMBER(PG_head_mask)", "-1"),
    ("OFFSET(page.mapping)", "100000"), ("OFFSET(page.mapping)", "-3"),
    ("SIZE(mem_section)", "8192"), ("SIZE(mem_section)", "0"), ("LENGTH(zone.free_area)", "-1"),
    ("NUMBER(SECTION_SIZE_BITS)", "13"), ("NUMBER(MAX_PHYSMEM_BITS)", "200"),
]
FACT_IDS = [f"{k}={v}" for k, v in BAD_FACTS]


@pytest.fixture(autouse=True)
def fake_kernel_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthetic dumps have no printk ring; give them one through the session's extractor."""
    monkeypatch.setattr(session, "dmesg_bytes", lambda dump: LOG)


def bad_dump(key: str, value: str) -> SparseDump:
    """The synthetic kernel of test_filter (every page class present) with one VMCOREINFO line wrong."""
    m = populated()
    m.k.keys[key] = value
    return m.dump()


def use_source(monkeypatch: pytest.MonkeyPatch, dump: Dump) -> None:
    """``kdumpkit save`` opens ``dump`` whatever path it is given (no 20 MB file per case).

    The CLI modules are imported first: one that imports ``open_dump`` at
    module level while it is patched would keep the patch for later tests.
    """
    build_parser()
    monkeypatch.setattr(kdumpkit.dump, "open_dump", lambda path: dump)


def capture_local(tmp_path: Path, source: Dump, levels: str) -> tuple[session.CaptureReport, Path, dict[str, Any]]:
    c = loads_config(f'dump_level = "{levels}"\ncodec = "zlib"\n[[target]]\ntype = "local"\npath = "{tmp_path}"')
    rep = session.capture(c, source, action=lambda name: None)
    folder = next(tmp_path.iterdir())
    return rep, folder, json.loads((folder / "manifest.json").read_text())


# -- kdumpkit save: makedumpfile-like ----------------------------------------------------------
@pytest.mark.parametrize(("key", "value"), BAD_FACTS, ids=FACT_IDS)
def test_save_bad_fact_is_one_line_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], key: str, value: str) -> None:
    use_source(monkeypatch, bad_dump(key, value))
    out = tmp_path / "out"
    assert main(["save", "-l", "-d", "31", "/proc/vmcore", str(out)]) == BadDumpError.exit_code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key in err and "implausible VMCOREINFO" in err, err
    assert not out.exists() and not list(tmp_path.iterdir())  # no partial output either


def test_save_bad_fact_subprocess_real_file(tmp_path: Path) -> None:
    """End to end on an ELF file: no traceback, one line on stderr, exit 1."""
    vmcore = tmp_path / "vmcore"
    convert(bad_dump("SIZE(page)", "0"), str(vmcore), "elf")
    p = subprocess.run([sys.executable, "-m", "kdumpkit.cli.main", "save", "-l", "-d", "31", str(vmcore),
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr == "kdumpkit: implausible VMCOREINFO SIZE(page)=0 (expected 16..1024)\n"


def test_save_level_list_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    source = bad_dump("NUMBER(PG_lru)", "64")
    use_source(monkeypatch, source)
    out = tmp_path / "out"
    assert main(["save", "-l", "-d", "31,0", "--json", "/proc/vmcore", str(out)]) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert summary["dump_level"] == 0 and summary["levels_tried"] == [31, 0]
    assert "NUMBER(PG_lru)=64" in cap.err and "trying dump level 0" in cap.err
    with open_dump(str(out)) as d:
        assert_same_pages(source, d)


def test_save_without_a_list_adds_no_unfiltered_copy(tmp_path: Path) -> None:
    with pytest.raises(BadDumpError, match=r"OFFSET\(page.flags\)"):
        save_to_file(bad_dump("OFFSET(page.flags)", "-8"), str(tmp_path / "out"), SaveOptions(dump_levels=(31,)))
    assert not list(tmp_path.iterdir())


def boom(*args: object, **kw: object) -> object:
    raise RuntimeError("boom")


def test_save_filter_bug_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("kdumpkit.capture.filter.filtered", boom)
    use_source(monkeypatch, populated().dump())
    assert main(["save", "-d", "31", "/proc/vmcore", str(tmp_path / "out")]) == KernelError.exit_code
    err = capsys.readouterr().err
    assert err == "kdumpkit: page filter failed at dump level 31: RuntimeError: boom\n"


def test_bad_self_check_facts_are_bounded(tmp_path: Path) -> None:
    """``LENGTH(node_data)=2^40`` once looped over 2^40 node numbers; now the self-check says why it did not run."""
    script = textwrap.dedent("""\
        import sys
        sys.path.insert(0, sys.argv[1])
        from test_filter import populated
        from kdumpkit.capture.filter import filtered
        m = populated()
        m.k.keys["LENGTH(node_data)"] = str(1 << 40)
        print(filtered(m.dump(), 31).selfcheck_result.message)
    """)
    p = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("not checked: implausible VMCOREINFO LENGTH(node_data)=1099511627776")


# -- kdumpkit capture: never nothing ------------------------------------------------------------
@pytest.mark.parametrize(("key", "value"), BAD_FACTS, ids=FACT_IDS)
def test_capture_level_list_saves_at_level_0(tmp_path: Path, key: str, value: str) -> None:
    rep, folder, m = capture_local(tmp_path, bad_dump(key, value), "31,0")
    assert rep.saved is not None and rep.saved.status == "complete"
    assert sorted(p.name for p in folder.iterdir()) == ["dmesg.txt", "manifest.json", "vmcore"]
    assert m["status"] == "complete"
    assert m["dump"]["dump_level"] == 0 and m["dump"]["levels_tried"] == [31, 0]
    assert any(p.startswith("vmcore: dump level 31: page filter failed") and key in p for p in m["problems"]), m


def test_capture_single_level_adds_the_unfiltered_copy(tmp_path: Path) -> None:
    source = bad_dump("SIZE(page)", "0")
    rep, folder, m = capture_local(tmp_path, source, "31")
    assert rep.saved is not None and m["dump"]["dump_level"] == 0 and m["dump"]["levels_tried"] == [31, 0]
    assert any("SIZE(page)=0" in p for p in m["problems"])
    with open_dump(str(folder / "vmcore")) as d:
        assert_same_pages(source, d)


def test_capture_every_filtered_level_fails(tmp_path: Path) -> None:
    _, _, m = capture_local(tmp_path, bad_dump("NUMBER(PG_head_mask)", "-1"), "11,31")
    assert m["dump"]["dump_level"] == 0 and m["dump"]["levels_tried"] == [11, 31, 0]
    assert sum("PG_head_mask" in p for p in m["problems"]) == 2


def test_capture_filter_that_raises_gives_unfiltered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kdumpkit.capture.filter.filtered", boom)
    source = populated().dump()
    rep, folder, m = capture_local(tmp_path, source, "31")
    assert rep.saved is not None and rep.saved.status == "complete"
    assert m["dump"]["dump_level"] == 0
    assert "vmcore: dump level 31: page filter failed: RuntimeError: boom" in m["problems"]
    with open_dump(str(folder / "vmcore")) as d:
        assert_same_pages(source, d)


def test_good_facts_still_filter(tmp_path: Path) -> None:
    _, _, m = capture_local(tmp_path, populated().dump(), "31,0")
    assert m["dump"]["dump_level"] == 31 and m["dump"]["levels_tried"] == [31] and m["problems"] == []


class Unreadable(SyntheticDump):
    """Every page read fails like a /proc/vmcore whose memory is gone."""

    def __init__(self) -> None:
        super().__init__(ram=RAM, notes=synthetic_dump(ram=RAM).notes())

    def _read_dumped(self, pfn: int, count: int) -> Buffer:
        raise OSError(errno.EIO, "Input/output error")


class NoPageMap(Unreadable):
    """Not even the list of pages can be had."""

    def dumped_runs(self) -> list[tuple[int, int]]:
        raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("source", [Unreadable, NoPageMap])
def test_unreadable_everything_is_dmesg_only(tmp_path: Path, source: type[Dump]) -> None:
    rep, folder, m = capture_local(tmp_path, source(), "31")
    assert [o.status for o in rep.outcomes] == ["dmesg-only"]
    assert sorted(p.name for p in folder.iterdir()) == ["dmesg.txt", "manifest.json"]  # no file of holes
    assert m["status"] == "dmesg-only" and "dump" not in m
    assert any("dump level 31: page filter failed" in p for p in m["problems"])  # no SIZE(page) here
    assert any("Input/output error" in p for p in m["problems"]), m["problems"]


def test_filter_failing_after_a_full_disk_is_listed(tmp_path: Path) -> None:
    """``-d 1,31``: level 1 runs out of space, level 31 cannot be filtered: both reasons reach the caller."""
    from test_save import limited_output

    fallbacks: list[str] = []
    source = bad_dump("SIZE(page)", "0")
    with pytest.raises(NoSpaceError, match="dump levels tried: 1, 31"):
        save_dump(source, lambda: limited_output(str(tmp_path / "out"), 100_000, []),
                  SaveOptions(dump_levels=(1, 31), unfiltered_fallback=True), fallbacks=fallbacks)
    assert len(fallbacks) == 2 and "dump level 1: no space left" in fallbacks[0] and "SIZE(page)=0" in fallbacks[1]
    assert not list(tmp_path.iterdir())


# -- EFBIG: a file-size limit is "no space" ----------------------------------------------------
EFBIG_SCRIPT = textwrap.dedent("""\
    import json, resource, sys
    from kdumpkit.capture import session
    from kdumpkit.dump.testing import synthetic_dump
    from kdumpkit.setup.config import loads_config
    session.dmesg_bytes = lambda dump: b"[    1.000000] log\\n"
    cfg = loads_config('dump_level = "0,1"\\ncodec = "none"\\n[[target]]\\ntype = "local"\\npath = "%s"' % sys.argv[1])
    source = synthetic_dump(ram=[(0, 1500), (2048, 3000)], zero_fraction=0.5)
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    rep = session.capture(cfg, source, action=lambda name: None)
    print(json.dumps([o.status for o in rep.outcomes]))
""")


def run_with_fsize_limit(tmp_path: Path, limit: int) -> tuple[list[str], Path, dict[str, Any]]:
    """Level 0 is ~10 MB and level 1 ~5 MB without compression; ``limit`` is RLIMIT_FSIZE in bytes."""
    p = subprocess.run([sys.executable, "-c", EFBIG_SCRIPT, str(tmp_path), str(limit)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    folder = next(tmp_path.iterdir())
    return json.loads(p.stdout), folder, json.loads((folder / "manifest.json").read_text())


def test_efbig_falls_back_to_the_next_level(tmp_path: Path) -> None:
    statuses, folder, m = run_with_fsize_limit(tmp_path, 8 << 20)
    assert statuses == ["complete"]
    assert m["dump"]["dump_level"] == 1 and m["dump"]["levels_tried"] == [0, 1]
    assert any("dump level 0: no space left" in p for p in m["problems"]), m["problems"]
    assert sorted(p.name for p in folder.iterdir()) == ["dmesg.txt", "manifest.json", "vmcore"]
    with open_dump(str(folder / "vmcore")) as d:
        assert_same_pages(synthetic_dump(ram=RAM, zero_fraction=0.5), d)


def test_efbig_everywhere_is_dmesg_only_with_manifest(tmp_path: Path) -> None:
    statuses, folder, m = run_with_fsize_limit(tmp_path, 256 << 10)
    assert statuses == ["dmesg-only"]
    assert m["status"] == "dmesg-only"
    assert sorted(p.name for p in folder.iterdir()) == ["dmesg.txt", "manifest.json"]
    assert any("dump levels tried: 0, 1" in p for p in m["problems"]), m["problems"]


# -- local target folders: 0700 at every level, whatever the umask -------------------------------
@pytest.fixture()
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_local_destination_creates_every_component_0700(tmp_path: Path, umask_000: None) -> None:
    existing = tmp_path / "srv"
    existing.mkdir(mode=0o755)
    base = existing / "a" / "b" / "c"
    dest = LocalDestination(Target("local", path=str(base)))
    dest.open("host-2026-01-01-00:00:00")
    for d in (existing / "a", existing / "a" / "b", base, Path(dest.dir)):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755  # what existed is left alone
