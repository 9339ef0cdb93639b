"""drgn on the lab's real crashes: ``kdumpkit drgn`` opens every container, and our own dumps open in drgn.

No debuginfo vmlinux exists for the lab's Debian kernels, so drgn is checked
on what it reads from the dump alone: the platform and ``UTS_RELEASE`` (from
VMCOREINFO), ``init_uts_ns.name`` read at its *virtual* address (drgn walks the
page tables itself) and whole physical pages — each compared with what
kdumpkit's own library reads at the same address.  The split case uses a
balanced set kdumpkit writes (makedumpfile's own puts every page in piece 1
for this dump), so pages only piece 2 holds prove the conversion.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.dump import open_dump
from kdumpkit.kernel.memory import kernel_memory
from kdumpkit.kernel.utsname import LEGACY_NAME_OFFSET, UTS_FIELDS, UTS_LEN
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

drgn = pytest.importorskip("drgn")

pytestmark = pytest.mark.interop

KDUMPKIT = [sys.executable, "-m", "kdumpkit.cli.main"]

# Prints, as JSON, what drgn reads: argv[1] is {"uts": va, "n": bytes, "pfns": [...], "page_size": n}.
PROBE = r"""
import hashlib, json, sys
a = json.loads(sys.argv[1])
ps = a["page_size"]
print(json.dumps({
    "arch": prog.platform.arch.name,
    "bits64": bool(prog.platform.flags & drgn.PlatformFlags.IS_64_BIT),
    "release": prog["UTS_RELEASE"].string_().decode(),
    "uts": prog.read(a["uts"], a["n"]).hex(),
    "pages": {str(p): hashlib.sha256(prog.read(p * ps, ps, True)).hexdigest() for p in a["pfns"]},
}))
"""


@pytest.fixture(scope="module")
def bookworm(ref_bookworm: Any) -> Any:
    return ref_bookworm


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEBUGINFOD")}
    env["TMPDIR"] = str(tmp)
    return env


def _truth(paths: Sequence[str], extra_pfns: Sequence[int] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """What kdumpkit reads: (probe arguments, expected probe output)."""
    with open_dump(list(paths) if len(paths) > 1 else paths[0]) as d:
        info = VmcoreInfo.from_dump(d)
        sym = info.symbol("init_uts_ns")
        assert sym is not None
        off = info.offset("uts_namespace.name")
        va = sym + (off if off is not None else LEGACY_NAME_OFFSET)
        n = UTS_LEN * len(UTS_FIELDS)
        uts = kernel_memory(d, info).read_virt(va, n)
        dumped = [p for s, e in d.dumped_runs() for p in (s, (s + e) // 2, e - 1)]
        pfns = sorted({dumped[0], dumped[len(dumped) // 2], dumped[-1], *extra_pfns})
        pages = {str(p): hashlib.sha256(bytes(d.read_page(p))).hexdigest() for p in pfns}
        args = {"uts": va, "n": n, "pfns": pfns, "page_size": d.page_size}
        want = {"arch": "X86_64", "bits64": True, "release": info.osrelease, "uts": uts.hex(), "pages": pages}
    assert uts[UTS_LEN * 2:UTS_LEN * 3].rstrip(b"\0").decode() == info.osrelease
    return args, want


def _run_drgn(paths: Sequence[str], args: dict[str, Any], tmp: Path, *extra: str) -> tuple[dict[str, Any], str]:
    tmp.mkdir(exist_ok=True)
    p = subprocess.run([*KDUMPKIT, "drgn", *map(str, paths), *extra, "--json", "-e", PROBE, "--", json.dumps(args)],
                       capture_output=True, text=True, timeout=600, env=_env(tmp), stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert list(tmp.iterdir()) == [], "temporary core left behind"
    return result, p.stderr


def _check(paths: Sequence[str], tmp: Path, *extra: str, extra_pfns: Sequence[int] = ()) -> dict[str, Any]:
    args, want = _truth([str(p) for p in paths], extra_pfns)
    result, stderr = _run_drgn(paths, args, tmp, *extra)
    assert json.loads(result["stdout"]) == want
    # no debuginfo here: the session opens anyway, and says so
    assert result["debuginfo"]["kernel"] is False
    assert "no debuginfo for kernel" in stderr and "--vmlinux" in stderr
    return result


def _caps() -> Any:
    from kdumpkit.analyze.drgn_bridge import drgn_caps

    return drgn_caps()


@pytest.mark.parametrize("kernel", ["bookworm", "trixie", "bullseye"])
def test_elf_vmcore_opens_natively(kernel: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    ref = request.getfixturevalue(f"ref_{kernel}")
    result = _check([ref.vmcore], tmp_path / "t")
    assert result["opened"] == "native" and result["format"] == "elf"


@pytest.mark.parametrize("kernel", ["bookworm", "trixie", "bullseye"])
def test_flattened(kernel: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """makedumpfile -F made in the capture kernel: libkdumpfile reads it in place, else we convert."""
    ref = request.getfixturevalue(f"ref_{kernel}")
    result = _check([ref.flat], tmp_path / "t")
    assert result["flattened"] is True
    assert result["opened"] == ("native" if _caps().libkdumpfile else "converted")


def test_flattened_forced_conversion(bookworm: Any, tmp_path: Path) -> None:
    result = _check([bookworm.flat], tmp_path / "t", "--convert")
    assert result["opened"] == "converted" and result["converted"]["pages"] > 0
    assert result["reason"] == "--convert was given"


@pytest.mark.parametrize("name", ["kdump_l31", "kdump_c31", "elf_E31"])
def test_makedumpfile_outputs(bookworm: Any, name: str, tmp_path: Path) -> None:
    try:
        path = getattr(bookworm, name)
    except Exception as e:  # made lazily by the host's makedumpfile
        pytest.skip(f"{name}: {e}")
    result = _check([path], tmp_path / "t")
    native = name == "elf_E31" or _caps().libkdumpfile
    assert result["opened"] == ("native" if native else "converted")


def test_makedumpfile_split_set_is_converted(bookworm: Any, tmp_path: Path) -> None:
    try:
        a, b = bookworm.split
    except Exception as e:
        pytest.skip(f"split: {e}")
    result, stderr = _run_drgn([a, b], _truth([str(a), str(b)])[0], tmp_path / "t")
    assert result["opened"] == "converted"
    assert "split set" in stderr and "converted to a temporary ELF" in stderr


@pytest.fixture(scope="module")
def own_split(bookworm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], int]]:
    """A two-piece split set kdumpkit writes (balanced by dumped pages), and a pfn only piece 2 holds."""
    from kdumpkit.dump.sink import FileSink
    from kdumpkit.dump.split import write_kdump_split

    d = tmp_path_factory.mktemp("split")
    paths = [str(d / "split.1"), str(d / "split.2")]
    sinks = [FileSink(p) for p in paths]
    with open_dump(str(bookworm.kdump_c31)) as src:
        write_kdump_split(src, sinks, codec="lzo")
    for s in sinks:
        s.close()
    with open_dump(paths) as sd:
        piece2 = sd.pieces[1]  # type: ignore[attr-defined]
        pfn = next(s for s, e in sd.dumped_runs() if s >= piece2.start_pfn)
    yield paths, pfn


def test_split_set_is_converted_and_reads_piece_two(own_split: tuple[list[str], int], tmp_path: Path) -> None:
    paths, pfn = own_split
    result = _check(paths, tmp_path / "t", extra_pfns=[pfn])
    assert result["opened"] == "converted" and result["format"] == "kdump-split"
    assert result["converted"]["pages"] > 0
    # drgn alone, on piece 1, cannot read what only piece 2 holds (libkdumpfile 0.5 does not even open a
    # piece that ends before max_mapnr): the conversion is needed
    prog = drgn.Program()
    with pytest.raises(Exception):  # noqa: B017 - libkdumpfile's errors are bare Exceptions
        prog.set_core_dump(paths[0])
        prog.read(pfn * 4096, 4096, True)


@pytest.mark.parametrize("fmt,opts", [("kdump", ["-l"]), ("kdump", ["-z"]), ("elf", []), ("elf", ["--exclude-zero"])])
def test_our_dumps_open_in_drgn_directly(bookworm: Any, fmt: str, opts: list[str], tmp_path: Path) -> None:
    """kdumpkit convert's outputs are cores drgn itself reads (no bridge): the same bytes as their source."""
    if fmt == "kdump" and not _caps().libkdumpfile:
        pytest.skip("this drgn has no libkdumpfile")
    out = tmp_path / f"ours.{fmt}"
    p = subprocess.run([*KDUMPKIT, "convert", str(bookworm.kdump_c31), str(out), "-f", fmt, *opts],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    args, want = _truth([str(bookworm.kdump_c31)])
    prog = drgn.Program()
    prog.set_core_dump(str(out))
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
    assert prog["UTS_RELEASE"].string_().decode() == want["release"]
    assert prog.read(args["uts"], args["n"]).hex() == want["uts"]
    ps = args["page_size"]
    with open_dump(str(bookworm.kdump_c31)) as src:
        pfns = [q for s, e in src.dumped_runs() for q in range(s, e)][::97]
        for q in pfns:
            assert prog.read(q * ps, ps, True) == bytes(src.read_page(q)), q
    # and through the bridge: opened as it is, not converted
    result = _check([out], tmp_path / "t")
    assert result["opened"] == "native"


def test_bad_path_is_one_line(tmp_path: Path) -> None:
    p = subprocess.run([*KDUMPKIT, "drgn", str(tmp_path / "nope"), "-e", "print(1)"], capture_output=True,
                       text=True, timeout=120, env=_env(tmp_path), stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "nope" in p.stderr


def test_not_a_dump_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "text"
    f.write_text("hello\n")
    p = subprocess.run([*KDUMPKIT, "drgn", str(f), "-e", "print(1)"], capture_output=True, text=True,
                       timeout=120, env=_env(tmp_path), stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1 and "not a dump" in p.stderr


def test_script_argv_exit_code_and_cleanup(bookworm: Any, tmp_path: Path) -> None:
    """A script runs as __main__ with prog and its argv; its sys.exit is ours; the temporary core goes."""
    script = tmp_path / "probe.py"
    script.write_text("import os, sys\n"
                      "d = os.environ['TMPDIR']\n"
                      "(sub,) = os.listdir(d)\n"  # the private directory exists during the session …
                      "assert sub.startswith('kdumpkit-drgn-'), sub\n"
                      "assert os.stat(os.path.join(d, sub)).st_mode & 0o777 == 0o700\n"
                      "print(sys.argv[1:], prog.platform.arch.name)\n"
                      "sys.exit(7)\n")
    tmp = tmp_path / "t"
    tmp.mkdir()
    p = subprocess.run([*KDUMPKIT, "drgn", str(bookworm.flat), "--convert", "-q", str(script), "a", "--", "-b"],
                       capture_output=True, text=True, timeout=600, env=_env(tmp), stdin=subprocess.DEVNULL)
    assert p.returncode == 7, p.stderr
    assert p.stdout.strip() == "['a', '--', '-b'] X86_64"
    assert p.stderr == ""
    assert list(tmp.iterdir()) == []  # … and is gone afterwards


def test_each_piece_of_our_save_split_opens_in_drgn(bookworm: Any, tmp_path: Path) -> None:
    """``kdumpkit save --split`` pieces carry the uname makedumpfile writes (libkdumpfile takes the
    architecture from it): each piece opens in drgn on its own, like makedumpfile's."""
    if not _caps().libkdumpfile:
        pytest.skip("this drgn has no libkdumpfile")
    pieces = [tmp_path / "p1", tmp_path / "p2"]
    p = subprocess.run([*KDUMPKIT, "save", "-l", "-d", "31", "--split", str(bookworm.vmcore), *map(str, pieces)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    args, want = _truth([str(bookworm.vmcore)])
    for piece in pieces:
        prog = drgn.Program()
        prog.set_core_dump(str(piece))
        assert prog["UTS_RELEASE"].string_().decode() == want["release"]
