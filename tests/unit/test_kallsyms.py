"""kallsyms decoding on synthetic tables laid out the way scripts/kallsyms.c writes them."""

from __future__ import annotations

import struct

import pytest

from kdumpkit.errors import KernelError
from kdumpkit.kernel.kallsyms import decode_names, find_kallsyms, read_kallsyms, scan_kallsyms
from kdumpkit.kernel.memory import kernel_memory
from kdumpkit.kernel.symbols import SymbolTable
from kdumpkit.kernel.testing import SyntheticKernel

MULTI = ["sys_", "do_", "crash", "kexec", "_handle", "panic", "irq", "write"]


def token_table() -> list[bytes]:
    used = set(range(0x21, 0x7F))
    multi = iter(MULTI)
    out = []
    for c in range(256):
        if c in used:
            out.append(bytes([c]))
        else:
            out.append(next(multi, f"~{c:02x}").encode())
    return out


def compress(text: bytes, tokens: list[bytes]) -> bytes:
    multi = sorted(((t, c) for c, t in enumerate(tokens) if len(t) > 1 and not t.startswith(b"~")),
                   key=lambda tc: -len(tc[0]))
    out = bytearray()
    i = 0
    while i < len(text):
        for tok, code in multi:
            if text.startswith(tok, i):
                out.append(code)
                i += len(tok)
                break
        else:
            out.append(text[i])
            i += 1
    return bytes(out)


def _align(n: int, a: int = 8) -> int:
    return (n + a - 1) & ~(a - 1)


def build_kallsyms(k: SyntheticKernel, syms: list[tuple[str, str, int]], *, relative_base: int,
                   absolute_percpu: bool = False, export: bool = True, pad_symbols: int = 600) -> int:
    """Lay out the v6.1 order (offsets, relative_base, num_syms, names, markers, tokens); returns names VA."""
    all_syms = list(syms) + [("t", f"filler_func_{i:05d}", relative_base + 0x10000 + 16 * i) for i in range(pad_symbols)]
    all_syms.sort(key=lambda s: s[2])
    tokens = token_table()
    names = bytearray()
    markers = []
    for i, (typ, name, _a) in enumerate(all_syms):
        if i % 256 == 0:
            markers.append(len(names))
        comp = compress((typ + name).encode(), tokens)
        if len(comp) > 0x7F:
            names += bytes([(len(comp) & 0x7F) | 0x80, len(comp) >> 7])
        else:
            names.append(len(comp))
        names += comp
    offsets = []
    for _t, _n, a in all_syms:
        if absolute_percpu and a < 0x10_0000:
            offsets.append(a)
        elif absolute_percpu:
            offsets.append(relative_base - 1 - a)
        else:
            offsets.append(a - relative_base)
    n = len(all_syms)
    blob = bytearray()
    off_at = 0
    blob += struct.pack(f"<{n}i" if absolute_percpu else f"<{n}I", *offsets)
    rb_at = _align(len(blob))
    blob += bytes(rb_at - len(blob)) + struct.pack("<Q", relative_base)
    num_at = len(blob)
    blob += struct.pack("<I", n) + bytes(4)
    names_at = len(blob)
    blob += names
    markers_at = _align(len(blob))
    blob += bytes(markers_at - len(blob)) + struct.pack(f"<{len(markers)}I", *markers)
    table_at = _align(len(blob))
    blob += bytes(table_at - len(blob))
    index = []
    for t in tokens:
        index.append(len(blob) - table_at)
        blob += t + b"\0"
    index_at = _align(len(blob))
    blob += bytes(index_at - len(blob)) + struct.pack("<256H", *index)
    base = k._text_alloc(len(blob), align=4096)
    k.write_virt(base, bytes(blob))
    if export:
        k.symbols.update({"kallsyms_names": base + names_at, "kallsyms_num_syms": base + num_at,
                          "kallsyms_token_table": base + table_at, "kallsyms_token_index": base + index_at,
                          "kallsyms_offsets": base + off_at, "kallsyms_relative_base": base + rb_at})
    k.symbols["_stext"] = SyntheticKernel.TEXT_VA
    return base + names_at


TEXT = SyntheticKernel.TEXT_VA
SYMS = [("T", "_text", TEXT), ("T", "sys_write", TEXT + 0x100), ("t", "do_crash_kexec", TEXT + 0x180),
        ("T", "panic", TEXT + 0x200), ("D", "tainted_mask", TEXT + 0x9000),
        ("t", "a" * 140 + "_big_symbol", TEXT + 0x300)]


def _mem(k: SyntheticKernel):  # type: ignore[no-untyped-def]
    d = k.dump()
    return kernel_memory(d)


@pytest.mark.parametrize("export", [True, False])
def test_decode_via_vmcoreinfo_and_scan(export: bool) -> None:
    k = SyntheticKernel()
    build_kallsyms(k, SYMS, relative_base=TEXT, export=export)
    mem = _mem(k)
    loc = find_kallsyms(mem)
    assert loc.source == ("vmcoreinfo" if export else "scan")
    ks = read_kallsyms(mem, location=loc)
    got = {ks.names[i]: (ks.addresses[i], ks.types[i]) for i in range(len(ks))}
    for typ, name, addr in SYMS:
        assert got[name] == (addr, typ)
    assert ks.addresses == sorted(ks.addresses)


def test_scan_agrees_with_vmcoreinfo() -> None:
    k = SyntheticKernel()
    build_kallsyms(k, SYMS, relative_base=TEXT)
    mem = _mem(k)
    a, b = find_kallsyms(mem), scan_kallsyms(mem)
    assert (a.names, a.num_syms, a.token_table, a.offsets, a.relative_base) == \
        (b.names, b.num_syms, b.token_table, b.offsets, b.relative_base)


def test_absolute_percpu_rule() -> None:
    k = SyntheticKernel()
    syms = [("A", "fixed_percpu_data", 0), ("A", "cpu_debug_store", 0x1000), *SYMS]
    build_kallsyms(k, syms, relative_base=TEXT, absolute_percpu=True)
    ks = read_kallsyms(_mem(k))
    got = dict(zip(ks.names, ks.addresses, strict=True))
    assert got["cpu_debug_store"] == 0x1000 and got["panic"] == TEXT + 0x200


def test_symbol_table_from_kallsyms() -> None:
    k = SyntheticKernel()
    build_kallsyms(k, SYMS, relative_base=TEXT, absolute_percpu=True,
                   pad_symbols=10)
    st = SymbolTable.from_kallsyms(_mem(k))
    sym = st.symbolize(TEXT + 0x205)
    assert sym is not None and sym.format() == "panic+0x5/0x100"
    assert st.address_of("sys_write") == TEXT + 0x100
    assert st.symbolize(0x10) is None  # per-CPU offsets never symbolize small numbers


def test_truncated_names_raise_kernel_error() -> None:
    with pytest.raises(KernelError):
        decode_names(b"\x05ab", [bytes([c]) for c in range(256)], 1)


def test_no_tables_anywhere() -> None:
    k = SyntheticKernel()
    k.symbols["_stext"] = TEXT
    with pytest.raises(KernelError):
        read_kallsyms(_mem(k))
