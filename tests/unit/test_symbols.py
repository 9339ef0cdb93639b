"""SymbolTable sources and lookups; the symbols command."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpkit.errors import KernelError
from kdumpkit.kernel.symbols import SymbolTable
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

INFO = VmcoreInfo.from_text(b"OSRELEASE=6.1.0\nKERNELOFFSET=2000000\n")


def test_system_map_is_relocated_by_kerneloffset(tmp_path: Path) -> None:
    p = tmp_path / "System.map"
    p.write_text("0000000000000000 A fixed_percpu_data\nffffffff81000000 T _text\n"
                 "ffffffff81000100 T panic\nffffffff81000200 t helper\nffffffff81000300 T _etext\n")
    st = SymbolTable.from_system_map(str(p), INFO)
    assert st.address_of("panic") == 0xFFFFFFFF83000100
    assert st.address_of("fixed_percpu_data") == 0
    sym = st.symbolize(0xFFFFFFFF83000210)
    assert sym is not None and sym.format() == "helper+0x10/0x100"
    assert st.symbolize(0xFFFFFFFF83000300) is None  # past the last symbol: no size known


def test_proc_kallsyms_snapshot_with_modules_and_slide(tmp_path: Path) -> None:
    p = tmp_path / "kallsyms"
    p.write_text("ffffffff85000000 T _text\nffffffff85000100 T panic\nffffffff85000200 T _etext\n"
                 "ffffffffc0001000 t virtblk_probe\t[virtio_blk]\nffffffffc0001100 t virtblk_remove\t[virtio_blk]\n")
    st = SymbolTable.from_proc_kallsyms(str(p), INFO)  # snapshot from another boot: _text differs
    assert st.address_of("panic") == 0xFFFFFFFF83000100
    sym = st.symbolize(0xFFFFFFFFC0001004)
    assert sym is not None and sym.format() == "virtblk_probe+0x4/0x100 [virtio_blk]"


def test_zeroed_snapshot_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "kallsyms"
    p.write_text("".join(f"0000000000000000 T f{i}\n" for i in range(60)))
    with pytest.raises(KernelError):
        SymbolTable.from_proc_kallsyms(str(p), INFO)


def test_aliases_prefer_text_and_first_name() -> None:
    st = SymbolTable([("data_label", 0xFFFFFFFF81000000, "d", None), ("func", 0xFFFFFFFF81000000, "T", None),
                      ("alias", 0xFFFFFFFF81000000, "T", None), ("next", 0xFFFFFFFF81000040, "T", None)], "t")
    sym = st.symbolize(0xFFFFFFFF81000008)
    assert sym is not None and (sym.name, sym.size) == ("func", 0x40)
    assert st.lookup("missing") is None


def test_symbols_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_kallsyms import SYMS, TEXT, build_kallsyms  # tests/unit is on sys.path (rootdir-less layout)

    from kdumpkit.cli.main import main
    from kdumpkit.kernel.testing import SyntheticKernel

    k = SyntheticKernel()
    build_kallsyms(k, SYMS, relative_base=TEXT)
    d = k.dump()
    # write a raw-ish dump is format-specific; call the command through its pieces instead
    from kdumpkit.kernel.memory import kernel_memory
    from kdumpkit.kernel.symbols import load_symbol_table

    st = load_symbol_table(kernel_memory(d), VmcoreInfo.from_dump(d))
    assert st.address_of("panic") == TEXT + 0x200
    assert main(["symbols", str(tmp_path / "missing.vmcore"), "panic"]) != 0
    capsys.readouterr()
