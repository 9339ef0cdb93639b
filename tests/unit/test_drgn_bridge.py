"""The drgn bridge's own logic, without drgn: convert or not, temporary cores, arguments, errors.

A tiny fake ``drgn`` module stands in where a session is opened; the real
thing is exercised in tests/interop/test_drgn.py.
"""

from __future__ import annotations

import os
import stat
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.analyze.drgn_bridge import (
    DrgnCaps,
    DumpFacts,
    dump_facts,
    elf_size_bound,
    open_in_drgn,
    plan_open,
    temporary_core,
)
from kdumpkit.cli.cmd_drgn import partition_argv
from kdumpkit.cli.main import main
from kdumpkit.dump import open_dump
from kdumpkit.dump.convert import convert
from kdumpkit.dump.testing import default_vmcoreinfo, synthetic_dump
from kdumpkit.errors import KdumpkitError, NoSpaceError, OutputError

WITH_KDF = DrgnCaps("0.3.0", libkdumpfile=True)
WITHOUT_KDF = DrgnCaps("0.0.25", libkdumpfile=False)


# -- convert or not ---------------------------------------------------------------
@pytest.mark.parametrize("facts,caps,native", [
    (DumpFacts("elf"), WITHOUT_KDF, True),
    (DumpFacts("qemu"), WITHOUT_KDF, True),
    (DumpFacts("elf", elf_class=32, arch="x86_64"), WITH_KDF, False),   # drgn would think 32-bit
    (DumpFacts("elf", elf_class=32, arch="i686"), WITH_KDF, True),
    (DumpFacts("kdump"), WITH_KDF, True),
    (DumpFacts("kdump"), WITHOUT_KDF, False),
    (DumpFacts("kdump", flattened=True), WITH_KDF, True),
    (DumpFacts("kdump", flattened=True), WITHOUT_KDF, False),
    (DumpFacts("elf", flattened=True), WITHOUT_KDF, False),             # a flattened ELF needs libkdumpfile too
    (DumpFacts("kdump-split", files=2), WITH_KDF, False),
    (DumpFacts("kdump", files=2), WITH_KDF, False),
    (DumpFacts("lime"), WITH_KDF, False),
    (DumpFacts("raw"), WITH_KDF, False),
    (DumpFacts("vmware"), WITH_KDF, False),
    (DumpFacts("avml"), WITH_KDF, False),
    (DumpFacts("lkcd"), WITH_KDF, False),
])
def test_plan(facts: DumpFacts, caps: DrgnCaps, native: bool) -> None:
    plan = plan_open(facts, caps)
    assert plan.native is native, plan.reason
    assert plan.reason and plan.how == ("native" if native else "converted")


def test_plan_force_convert() -> None:
    plan = plan_open(DumpFacts("elf"), WITH_KDF, force_convert=True)
    assert not plan.native and "--convert" in plan.reason


def test_plan_reasons_say_why() -> None:
    assert "libkdumpfile" in plan_open(DumpFacts("kdump"), WITHOUT_KDF).reason
    assert "split" in plan_open(DumpFacts("kdump-split", files=3), WITH_KDF).reason
    assert "lime" in plan_open(DumpFacts("lime"), WITH_KDF).reason


@pytest.fixture
def dumps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dumps")
    src = synthetic_dump(ram=[(0, 64), (100, 164)], excluded=[(10, 12)])
    out = {}
    for fmt in ("elf", "kdump", "flat", "lime"):
        out[fmt] = d / f"d.{fmt}"
        convert(src, str(out[fmt]), fmt)
    return out


def test_dump_facts(dumps: dict[str, Path]) -> None:
    with open_dump(str(dumps["elf"])) as d:
        assert dump_facts(d) == DumpFacts("elf", elf_class=64, arch="x86_64")
    with open_dump(str(dumps["kdump"])) as d:
        assert dump_facts(d).format == "kdump" and not dump_facts(d).flattened
    with open_dump(str(dumps["flat"])) as d:
        f = dump_facts(d)
        assert f.format == "kdump" and f.flattened
    with open_dump(str(dumps["lime"])) as d:
        f = dump_facts(d)
        assert f.format == "lime" and not f.has_vmcoreinfo


# -- the temporary core -------------------------------------------------------------
def test_temporary_core_private_and_removed(tmp_path: Path) -> None:
    src = synthetic_dump(ram=[(0, 64)], zero_fraction=0.5)
    with temporary_core(src, tmpdir=str(tmp_path)) as core:
        d = os.path.dirname(core.path)
        assert os.path.dirname(d) == str(tmp_path)
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(core.path).st_mode) == 0o600
        assert core.zero_pages > 0 and core.pages + core.zero_pages == 64
        assert os.path.getsize(core.path) <= elf_size_bound(src)
        with open_dump(core.path) as back:
            for pfn in range(64):
                page = bytes(src.read_page(pfn))
                assert back.read(pfn * 4096, 4096, zero_excluded=True) == page  # zero pages left out
    assert list(tmp_path.iterdir()) == []


def test_temporary_core_removed_on_error(tmp_path: Path) -> None:
    src = synthetic_dump(ram=[(0, 16)])
    with pytest.raises(RuntimeError), temporary_core(src, tmpdir=str(tmp_path)):
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_temporary_core_honours_tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with temporary_core(synthetic_dump(ram=[(0, 8)])) as core:
        assert core.path.startswith(str(tmp_path) + os.sep)
    assert list(tmp_path.iterdir()) == []


def test_temporary_core_checks_space_first(tmp_path: Path) -> None:
    src = synthetic_dump(ram=[(0, 64)])
    with pytest.raises(NoSpaceError, match="--tmpdir"), \
            temporary_core(src, tmpdir=str(tmp_path), free=lambda p: 4096):
        pass
    assert list(tmp_path.iterdir()) == []


def test_temporary_core_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"), \
            temporary_core(synthetic_dump(ram=[(0, 8)]), tmpdir=str(tmp_path / "nope")):
        pass


def test_progress_is_entered_only_while_converting(tmp_path: Path) -> None:
    from contextlib import contextmanager

    events: list[str] = []

    @contextmanager
    def progress() -> Iterator[Any]:
        events.append("enter")
        yield lambda done, total: events.append("tick")
        events.append("exit")

    with temporary_core(synthetic_dump(ram=[(0, 8)]), tmpdir=str(tmp_path), progress=progress):
        assert events[0] == "enter" and events[-1] == "exit" and "tick" in events


# -- a session, with a fake drgn ----------------------------------------------------
class _FakeProgram:
    refuse: tuple[str, ...] = ()
    opened: list[tuple[str, bool, bytes | None]] = []

    def __init__(self, vmcoreinfo: bytes | None = None) -> None:
        self.vmcoreinfo = vmcoreinfo

    def set_core_dump(self, path: str) -> None:
        if any(path.endswith(r) for r in self.refuse):
            raise Exception("kdump_get_string_attr(KDUMP_ATTR_ARCH_NAME): Key has no value")
        _FakeProgram.opened.append((path, os.path.exists(path), self.vmcoreinfo))

    def load_debug_info(self, paths: Any = (), default: bool = False, main: bool = False) -> None:
        raise _MissingDebugInfo("missing some debugging symbols")

    def __getitem__(self, name: str) -> Any:
        raise KeyError(name)


class _MissingDebugInfo(Exception):
    pass


@pytest.fixture
def fake_drgn(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = types.ModuleType("drgn")
    mod.__version__ = "0.0.0-fake"  # type: ignore[attr-defined]
    mod._with_libkdumpfile = True  # type: ignore[attr-defined]
    mod.Program = _FakeProgram  # type: ignore[attr-defined]
    mod.MissingDebugInfoError = _MissingDebugInfo  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "drgn", mod)
    monkeypatch.setattr(_FakeProgram, "opened", [])
    monkeypatch.setattr(_FakeProgram, "refuse", ())
    return mod


def test_session_native(fake_drgn: Any, dumps: dict[str, Path], tmp_path: Path) -> None:
    notes: list[str] = []
    with open_in_drgn(str(dumps["elf"]), tmpdir=str(tmp_path), log=notes.append) as s:
        assert s.plan.native and s.converted is None
        assert _FakeProgram.opened == [(str(dumps["elf"]), True, None)]
        assert s.debuginfo is not None and not s.debuginfo.kernel
    assert any("no debuginfo" in n and "--vmlinux" in n for n in notes)


def test_session_converts_lime_with_vmcoreinfo_file(fake_drgn: Any, dumps: dict[str, Path], tmp_path: Path) -> None:
    vi = tmp_path / "vmcoreinfo"
    vi.write_text(default_vmcoreinfo())
    tmp = tmp_path / "t"
    tmp.mkdir()
    notes: list[str] = []
    with open_in_drgn(str(dumps["lime"]), tmpdir=str(tmp), vmcoreinfo=str(vi), log=notes.append) as s:
        assert not s.plan.native and s.converted is not None
        (path, existed, given) = _FakeProgram.opened[0]
        assert existed and given is None and path.startswith(str(tmp))  # the ELF carries VMCOREINFO itself
        assert not os.path.exists(path)  # unlinked as soon as drgn held it
        assert len(list(tmp.iterdir())) == 1  # the private directory, until the session ends
    assert list(tmp.iterdir()) == []
    assert any("converted to a temporary ELF" in n and "lime" in n for n in notes)


def test_session_falls_back_when_drgn_refuses(fake_drgn: Any, dumps: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_FakeProgram, "refuse", (".kdump",))
    with open_in_drgn(str(dumps["kdump"]), tmpdir=str(tmp_path), log=lambda m: None) as s:
        assert s.converted is not None and "refused" in s.plan.reason
        assert s.to_json()["opened"] == "converted"
    assert list(tmp_path.iterdir()) == []


def test_session_removes_core_when_the_body_fails(fake_drgn: Any, dumps: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), open_in_drgn(str(dumps["flat"]), tmpdir=str(tmp_path), force_convert=True,
                                                        load_symbols=False, log=lambda m: None) as s:
        assert s.converted is not None
        1 / 0  # noqa: B018
    assert list(tmp_path.iterdir()) == []


def test_session_without_vmcoreinfo_is_a_clear_error(fake_drgn: Any, dumps: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(KdumpkitError, match="--vmcoreinfo"), \
            open_in_drgn(str(dumps["lime"]), tmpdir=str(tmp_path), log=lambda m: None):
        pass
    assert list(tmp_path.iterdir()) == []


# -- the command line ---------------------------------------------------------------
def _is_dump(p: str) -> bool:
    return p.startswith("dump")


@pytest.mark.parametrize("argv,want", [
    (["dump"], ([], ["dump"], [])),
    (["dump", "-e", "CODE"], (["-e", "CODE"], ["dump"], [])),
    (["-q", "dump", "dump.2", "--tmpdir", "/x"], (["-q", "--tmpdir", "/x"], ["dump", "dump.2"], [])),
    (["dump", "s.py", "-x", "--y", "dump.3"], ([], ["dump"], ["s.py", "-x", "--y", "dump.3"])),
    (["dump", "-e", "C", "--", "{json}"], (["-e", "C"], ["dump"], ["{json}"])),
    (["dump", "--", "dump.2", "s.py", "--", "-b"], ([], ["dump", "dump.2"], ["s.py", "--", "-b"])),
    (["--", "dump"], ([], ["dump"], [])),
    (["-e", "C"], (["-e", "C"], [], [])),
])
def test_partition_argv(argv: list[str], want: tuple[list[str], list[str], list[str]]) -> None:
    assert partition_argv(argv, {"-e", "--exec", "--tmpdir"}, _is_dump) == want


def test_no_tty_no_script_is_usage_error(dumps: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    assert main(["drgn", str(dumps["elf"])]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "-e CODE" in err


def test_missing_drgn_is_a_clear_error(dumps: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "drgn", None)  # import drgn raises ImportError
    assert main(["drgn", str(dumps["elf"]), "-e", "print(prog)"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "kdumpkit: drgn is not installed: pip install drgn (or pip install 'kdumpkit[drgn]')"


def test_cli_runs_code_with_fake_drgn(fake_drgn: Any, dumps: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["drgn", str(dumps["lime"]), "--tmpdir", str(tmp_path), "-q", "--vmcoreinfo", "none",
               "-e", "print(type(prog).__name__, sys.argv[1:])"])
    # LiME without VMCOREINFO and 'none': refused before any conversion
    assert rc == 1 and "--vmcoreinfo" in capsys.readouterr().err
    rc = main(["drgn", str(dumps["kdump"]), "--tmpdir", str(tmp_path), "-q", "--json",
               "-e", "import sys; print(type(prog).__name__, sys.argv[1:]); sys.exit(4)", "--", "a", "-b"])
    out = capsys.readouterr().out
    import json

    result = json.loads(out)
    assert rc == 4 and result["exit_code"] == 4
    assert result["stdout"] == "_FakeProgram ['a', '-b']\n"
    assert result["opened"] == "native" and result["format"] == "kdump"
