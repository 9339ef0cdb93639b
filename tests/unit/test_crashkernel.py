"""crashkernel=: memparse, every form, the kernel's range evaluation, errors, defaults, estimate, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdumpkit.cli.main import main
from kdumpkit.errors import ConfigError, KdumpkitError
from kdumpkit.kexec import crashkernel as ck
from kdumpkit.kexec.crashkernel import CrashkernelSyntaxError, memparse, parse

M, G = 1 << 20, 1 << 30


@pytest.mark.parametrize("text,value,end", [
    ("256M", 256 * M, 4), ("256m", 256 * M, 4), ("1G", G, 2), ("2t", 2 << 40, 2), ("64K", 64 << 10, 3),
    ("12345", 12345, 5), ("0x10M", 16 * M, 5), ("010M", 8 * M, 4),  # base 0: hex and octal, like simple_strtoull
    ("0", 0, 1), ("1E", 1 << 60, 2), ("x", 0, 0), ("", 0, 0), ("256Mx", 256 * M, 4),
])
def test_memparse(text: str, value: int, end: int) -> None:
    assert memparse(text) == (value, end)


def test_simple_forms() -> None:
    assert parse("256M") == ck.Crashkernel(size=256 * M)
    assert parse("crashkernel=256M@16M") == ck.Crashkernel(size=256 * M, offset=16 * M)
    assert parse("1G,high") == ck.Crashkernel(size=G, suffix="high")
    assert parse("128M,low").suffix == "low"
    assert parse("256M,cma").suffix == "cma"
    assert parse("256M quiet").size == 256 * M  # the value ends at a blank


def test_range_form_and_format() -> None:
    c = parse("512M-2G:64M,2G-:128M@16M")
    assert c.ranges == (ck.CrashkernelRange(512 * M, 2 * G, 64 * M), ck.CrashkernelRange(2 * G, None, 128 * M))
    assert c.offset == 16 * M
    assert c.format() == "512M-2G:64M,2G-:128M@16M"
    assert parse("0x20000000-0x80000000:0x4000000").format() == "512M-2G:64M"
    assert parse("1536M-:1536K").format() == "1536M-:1536K"


@pytest.mark.parametrize("ram,expected", [
    (G, 64 * M), (512 * M, 64 * M),          # start inclusive
    (2 * G, 128 * M),                        # end exclusive: 2G belongs to the next range
    (2 * G - 100 * M, 128 * M),              # rounded up to 128M first -> 2G
    (256 * M, 0),                            # below every range: nothing
    (64 << 40, 128 * M),
])
def test_size_for_like_parse_crashkernel_mem(ram: int, expected: int) -> None:
    assert parse("512M-2G:64M,2G-:128M").size_for(ram) == expected


def test_size_for_without_rounding_is_pre_4_19() -> None:
    c = parse("512M-2G:64M,2G-:128M")
    assert c.size_for(2 * G - 100 * M, round_128m=False) == 64 * M
    assert parse("1G-2G:64M").size_for(2 * G) == 0
    assert parse("256M").size_for(G) == 256 * M


def test_size_not_below_ram_is_rejected() -> None:
    with pytest.raises(ConfigError, match="not below"):
        parse("0-:2G").size_for(G)
    # an entry after the matching one is never looked at (as in the kernel)
    assert parse("0-4G:64M,4G-:64G").size_for(G) == 64 * M


@pytest.mark.parametrize("bad,where", [
    ("", "empty"), ("abc", "memory value expected"), ("256Mx", "unrecognized character 'x' at character 5"),
    ("512M-:", "reservation size expected"), ("512M:64M", "'-' expected"), ("2G-1G:64M", "end 1G <= start 2G"),
    ("1G,foo", "unknown suffix 'foo'"), ("256M@16M,high", "cannot be combined"),
    ("512M-2G:64M,high", "needs the simple form"), ("512M-2G:64M,", "range start expected"),
    ("256M@", "after '@'"), ("512M-2G:64M@x", "after '@'"), ("512M-2G:64M;", "unrecognized character ';'"),
])
def test_invalid_values_say_what_and_where(bad: str, where: str) -> None:
    with pytest.raises(CrashkernelSyntaxError, match="crashkernel=") as ei:
        parse(bad)
    assert where in str(ei.value)
    assert "\n" not in str(ei.value)
    assert isinstance(ei.value, ConfigError)


def test_auto_is_historical() -> None:
    with pytest.raises(ConfigError, match="historical"):
        parse("auto")


def test_from_cmdline_last_wins_per_suffix() -> None:
    opts = ck.from_cmdline("ro crashkernel=128M crashkernel=1G,high crashkernel=256M crashkernel=64M,low -- crashkernel=9G")
    assert opts[None].size == 256 * M and opts["high"].size == G and opts["low"].size == 64 * M
    assert ck.reservation_for("crashkernel=512M-2G:64M,2G-:128M", G) == ck.Reservation(64 * M)
    assert ck.reservation_for("crashkernel=1G,high", 8 * G) == ck.Reservation(G, 256 * M, high=True)
    assert ck.reservation_for("crashkernel=1G,high crashkernel=0,low", 8 * G).total == G  # type: ignore[union-attr]
    assert ck.reservation_for("quiet", 8 * G) is None
    assert ck.reservation_for("crashkernel=2G-:256M", G) is None


@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 1 << 12)), min_size=1, max_size=5),
       st.one_of(st.none(), st.integers(0, 1 << 16)), st.integers(1, 4096))
def test_format_parse_round_trip(steps: list[tuple[int, int]], offset: int | None, size: int) -> None:
    pos = 0
    ranges = []
    for gap, length in steps:
        start = pos + gap * M
        ranges.append(ck.CrashkernelRange(start, start + length * M, size * M))
        pos = start + length * M
    c = ck.Crashkernel(ranges=tuple(ranges), offset=offset * M if offset is not None else None)
    assert parse(c.format()) == c
    s = ck.Crashkernel(size=size * 4096 + 1, offset=offset)
    assert parse(s.format()) == s


def test_parse_size_accepts_human_sizes() -> None:
    assert ck.parse_size("1.5G") == 1536 * M
    assert ck.parse_size("2GiB") == 2 * G
    assert ck.parse_size("0x40000000") == G
    with pytest.raises(ConfigError):
        ck.parse_size("lots")


def test_default_table_and_estimate() -> None:
    t = ck.default_crashkernel("x86_64")
    assert t.format() == "2G-64G:256M,64G-:512M"
    assert t.size_for(G) == 0 and t.size_for(4 * G) == 256 * M and t.size_for(64 * G) == 512 * M
    assert t.size_for(64 * G - 1) == 512 * M  # rounded up to 64G
    assert ck.default_crashkernel("x86_64", sme_sev=True).format() == "2G-64G:320M,64G-:576M"
    assert ck.default_crashkernel("aarch64").size_for(8 * G) == 320 * M
    with pytest.raises(ConfigError, match="riscv"):
        ck.default_crashkernel("riscv64")
    e = ck.estimate(kernel_size=40 * M, modules_size=10 * M, initramfs_size=30 * M, system_ram=16 * G)
    assert e.estimated == 40 * M + 10 * M + 90 * M + 16 * M
    assert e.baseline == 256 * M and e.recommended == 256 * M
    big = ck.estimate(kernel_size=40 * M, modules_size=10 * M, initramfs_size=100 * M, system_ram=16 * G,
                      luks_memory=1 * G + 1)
    assert big.recommended == big.estimated - 1 + M  # rounded up to a MiB
    old = ck.estimate(kernel_size=0, modules_size=0, initramfs_size=10 * M, system_ram=G, initramfs_factor=1,
                      runtime=64 * M)
    assert old.estimated == 74 * M and old.recommended == 74 * M


IOMEM = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
00100000-bfffffff : System RAM
  01000000-02276f47 : Kernel code
  02400000-02e0cfff : Kernel rodata
  03000000-0327c17f : Kernel data
  03b32000-03c55fff : Kernel bss
  6f000000-7effffff : Crash kernel
100000000-43fffffff : System RAM
  42f000000-43effffff : Crash kernel
"""


def _tree(tmp_path: Path, *, size: str | None = "268435456", iomem: str = IOMEM) -> Path:
    (tmp_path / "proc").mkdir(parents=True)
    (tmp_path / "proc/iomem").write_text(iomem)
    (tmp_path / "proc/modules").write_text("virtio_blk 24576 0 - Live 0x0\next4 1064960 1 - Live 0x0\n")
    (tmp_path / "sys/kernel").mkdir(parents=True)
    if size is not None:
        (tmp_path / "sys/kernel/kexec_crash_size").write_text(size + "\n")
    return tmp_path


def test_read_reserved_low_and_high(tmp_path: Path) -> None:
    r = ck.read_reserved(_tree(tmp_path))
    assert r.ranges == ((0x6F000000, 0x7EFFFFFF), (0x42F000000, 0x43EFFFFFF))
    assert r.total == 512 * M and r.kexec_crash_size == 256 * M
    assert ck.read_reserved(_tree(tmp_path / "x", size=None)).kexec_crash_size is None
    assert ck.loaded_modules_size(tmp_path) == 24576 + 1064960
    assert ck.loaded_modules_size(tmp_path, {"ext4"}) == 1064960


def test_read_reserved_without_root_is_an_error(tmp_path: Path) -> None:
    zero = "00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n  00000000-00000000 : Crash kernel\n"
    with pytest.raises(KdumpkitError, match="root"):
        ck.read_reserved(_tree(tmp_path, iomem=zero))


def test_cli_parse_plan_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crashkernel", "parse", "512M-2G:64M,2G-:128M", "--ram", "1G"]) == 0
    assert "reserves 64M" in capsys.readouterr().out
    assert main(["crashkernel", "parse", "512M-2G:64M,2G-:128M", "--ram", "2G", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reserved"] == 128 * M and out["form"] == "ranges"
    assert main(["crashkernel", "format", "0x10000000@0x1000000"]) == 0
    assert capsys.readouterr().out.strip() == "256M@16M"
    assert main(["crashkernel", "parse", "auto"]) == 2
    assert "historical" in capsys.readouterr().err
    assert main(["crashkernel", "plan", "--ram", "16G", "--initramfs-size", "30M", "--kernel-size", "40M",
                 "--modules-size", "10M", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["table_size"] == 256 * M and plan["estimate"]["total"] == 156 * M and plan["recommended"] == 256 * M
    _tree(tmp_path)
    assert main(["crashkernel", "plan", "--root", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "RAM: 16.0 GiB" in text and "crashkernel=2G-64G:256M,64G-:512M  -> 256M" in text
