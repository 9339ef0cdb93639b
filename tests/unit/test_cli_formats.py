"""The format commands as a user runs them: info, convert, verify, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kdumpkit.cli.main import main
from kdumpkit.dump import open_dump
from kdumpkit.dump.elf import write_elf
from kdumpkit.dump.sink import FileSink
from kdumpkit.dump.testing import assert_same_pages, synthetic_dump


@pytest.fixture()
def elf_dump(tmp_path: Path) -> Path:
    src = synthetic_dump(ram=[(0, 300), (400, 700)], excluded=[(50, 60)])
    path = tmp_path / "vmcore"
    with FileSink(str(path)) as sink:
        write_elf(src, sink)
    return path


def test_info_json(elf_dump: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(elf_dump), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "elf"
    assert info["pages"] == {"ram": 600, "dumped": 590, "excluded": 10, "missing": 0}
    assert info["cpus"] == 2
    assert info["crash"]["release"] == "6.1.0-synthetic"


def test_info_human(elf_dump: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(elf_dump)]) == 0
    assert "6.1.0-synthetic" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["elf", "lime", "raw"])
def test_convert_round_trip(elf_dump: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    assert main(["convert", str(elf_dump), str(out), "--format", fmt]) == 0
    assert (out.stat().st_mode & 0o777) == 0o600
    assert not Path(str(out) + ".part").exists()
    with open_dump(str(elf_dump)) as a, open_dump(str(out)) as b:
        if fmt == "lime":
            assert b.ram_runs() == a.ram_runs()
        else:
            assert_same_pages(a, b)


def test_convert_refuses_to_overwrite(elf_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exists"
    out.write_bytes(b"precious")
    assert main(["convert", str(elf_dump), str(out), "--format", "elf"]) != 0
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"


def test_convert_truncated_input_flags_output(elf_dump: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    cut.write_bytes(elf_dump.read_bytes()[: -20 * 4096])
    out = tmp_path / "out.elf"
    assert main(["convert", str(cut), str(out), "--format", "elf"]) == 3
    with open_dump(str(out)) as b:
        assert b.incomplete


def test_verify_ok_and_json(elf_dump: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(elf_dump), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and rep["pages_checked"] == 590


@pytest.mark.parametrize("content", [b"", b"hello world" * 10, os.urandom(5000)])
def test_not_a_dump_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    p = tmp_path / "junk"
    p.write_bytes(content)
    for cmd in (["info", str(p)], ["verify", str(p)], ["convert", str(p), str(tmp_path / "o"), "-f", "elf"]):
        rc = main(cmd)
        err = capsys.readouterr().err
        assert rc != 0
        assert err.startswith("kdumpkit: ") and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "/nonexistent/vmcore"]) != 0
    assert "cannot open" in capsys.readouterr().err
