"""One symbol table, whatever it was made from.

Why: symbolizing a backtrace, finding ``tainted_mask`` or the ORC tables all
need "name → address" and "address → name+offset"; where the table came from
(the dump's own kallsyms, a ``/proc/kallsyms`` snapshot, a System.map) only
changes how addresses are relocated:

* kallsyms in the dump: already runtime addresses;
* a ``/proc/kallsyms`` snapshot: runtime addresses of the boot it was taken
  in; if that boot's KASLR slide differs (its ``_text`` is not the dump's),
  core-kernel entries are shifted by the difference (module entries cannot be);
* a System.map: link-time addresses, shifted by ``KERNELOFFSET``.

Without an explicit file, the dump's own kallsyms is used, and the
``kallsyms.gz`` that ``kdumpkit capture`` puts beside the dump (the snapshot
``kdumpkit load`` took of the crashed boot) adds what the dump's kallsyms
lacks: module symbols — only when the snapshot's ``_text`` is the dump's,
i.e. it was taken in the boot that crashed.

Sizes are the distance to the next higher address (kallsyms has no sizes).
"""

from __future__ import annotations

import bisect
import gzip
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from kdumpkit.errors import KernelError, UsageError
from kdumpkit.kernel.memory import KernelMemory
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

__all__ = ["Symbol", "SymbolTable", "load_symbol_table"]

_TEXT_BASE = 0xFFFF_FFFF_8100_0000
_KERNEL_SPACE = 0xFFFF_8000_0000_0000
_MAX_OFFSET = 1 << 20  # an address further than this past its symbol is not "in" it


@dataclass(frozen=True)
class Symbol:
    """A symbol; ``offset`` is set when it answers an address lookup."""

    name: str
    address: int
    size: int
    type: str = "?"
    module: str | None = None
    offset: int = 0

    def format(self, with_size: bool = True) -> str:
        """``function+0xoff/0xsize [module]``, the kernel's ``%pS`` spelling."""
        s = f"{self.name}+{self.offset:#x}"
        if with_size:
            s += f"/{self.size:#x}"
        return s + (f" [{self.module}]" if self.module else "")


class SymbolTable:
    """Sorted symbols with both lookups; build with the ``from_*`` constructors."""

    def __init__(self, entries: Iterable[tuple[str, int, str, str | None]], source: str) -> None:
        rows = sorted(entries, key=lambda e: e[1])  # stable: aliases keep table order
        self.source = source
        self._names = [r[0] for r in rows]
        self._addrs = [r[1] for r in rows]
        self._types = [r[2] for r in rows]
        self._modules = [r[3] for r in rows]
        self._by_name: dict[str, int] | None = None
        # Only addresses in kernel space take part in address lookups; absolute
        # per-CPU offsets (0x0, 0x1000 …) would otherwise "symbolize" small numbers.
        self._first_kernel = bisect.bisect_left(self._addrs, _KERNEL_SPACE)

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[Symbol]:
        return (self._symbol(i) for i in range(len(self._names)))

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def from_kallsyms(cls, mem: KernelMemory, info: VmcoreInfo | None = None) -> SymbolTable:
        """The dump's own kallsyms (raises :class:`KernelError` if not found)."""
        from kdumpkit.kernel.kallsyms import read_kallsyms

        ks = read_kallsyms(mem, info)
        src = f"kallsyms in the dump ({ks.location.source})"
        return cls(zip(ks.names, ks.addresses, ks.types, [None] * len(ks), strict=True), src)

    @classmethod
    def from_proc_kallsyms(cls, path: str, info: VmcoreInfo | None = None) -> SymbolTable:
        """A ``/proc/kallsyms`` snapshot (``addr type name [module]`` lines)."""
        rows = list(_parse_nm_lines(_read_text(path), allow_module=True))
        if rows and all(a == 0 for _n, a, _t, _m in rows[:50]):
            raise KernelError(f"{path} has zeroed addresses (kptr_restrict: take the snapshot as root)")
        delta = _slide(rows, info, runtime=True)
        rows = [(n, (a + delta) % (1 << 64) if m is None and a >= _KERNEL_SPACE else a, t, m)
                for n, a, t, m in rows]
        return cls(rows, f"/proc/kallsyms snapshot {path}" + (f" (shifted by {delta:#x})" if delta else ""))

    @classmethod
    def from_system_map(cls, path: str, info: VmcoreInfo | None = None) -> SymbolTable:
        """A ``System.map`` (link-time addresses, relocated by KERNELOFFSET)."""
        rows = list(_parse_nm_lines(_read_text(path), allow_module=False))
        delta = _slide(rows, info, runtime=False)
        rows = [(n, (a + delta) % (1 << 64) if a >= _KERNEL_SPACE else a, t, m) for n, a, t, m in rows]
        return cls(rows, f"System.map {path}" + (f" (KERNELOFFSET {delta:#x})" if delta else ""))

    def with_modules_from(self, snapshot: str, info: VmcoreInfo | None) -> SymbolTable:
        """This table plus the module symbols of a ``/proc/kallsyms`` snapshot of the same boot.

        A snapshot of another boot (its ``_text`` is not the dump's) adds
        nothing: its module addresses would name the wrong code.
        """
        rows = list(_parse_nm_lines(_read_text(snapshot), allow_module=True))
        if _slide(rows, info, runtime=True) != 0:
            return SymbolTable(self._rows(), self.source + f" (snapshot {snapshot} is of another boot: not used)")
        mods = [r for r in rows if r[3] is not None and r[1] >= _KERNEL_SPACE]
        if not mods:
            return self
        n = len({r[3] for r in mods})
        return SymbolTable(self._rows() + mods, self.source + f" + {len(mods)} symbols of {n} modules from {snapshot}")

    def _rows(self) -> list[tuple[str, int, str, str | None]]:
        return list(zip(self._names, self._addrs, self._types, self._modules, strict=True))

    # -- lookups ----------------------------------------------------------------------
    def _symbol(self, i: int, offset: int = 0) -> Symbol:
        addr = self._addrs[i]
        j = bisect.bisect_right(self._addrs, addr)
        size = self._addrs[j] - addr if j < len(self._addrs) else 0
        return Symbol(self._names[i], addr, size, self._types[i], self._modules[i], offset)

    def lookup(self, name: str) -> Symbol | None:
        """The symbol called ``name`` (the first one if several share the name)."""
        if self._by_name is None:
            self._by_name = {}
            for i, n in enumerate(self._names):
                self._by_name.setdefault(n, i)
        idx = self._by_name.get(name)
        return None if idx is None else self._symbol(idx)

    def address_of(self, name: str) -> int | None:
        sym = self.lookup(name)
        return None if sym is None else sym.address

    def symbolize(self, address: int) -> Symbol | None:
        """The symbol containing ``address`` (offset set), or None outside every symbol.

        Like the kernel's ``kallsyms_lookup``, aliases resolve to the first name
        at that address in table order.
        """
        j = bisect.bisect_right(self._addrs, address) - 1
        if j < self._first_kernel:
            return None
        base = self._addrs[j]
        i = bisect.bisect_left(self._addrs, base)
        # Prefer a text symbol among aliases (a data label at a function start is rare but real).
        for k in range(i, j + 1):
            if self._types[k] in "tTwW":
                i = k
                break
        sym = self._symbol(i, address - base)
        if sym.size == 0 or sym.offset >= min(sym.size, _MAX_OFFSET):
            return None
        return sym


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read symbol file {path}: {e.strerror}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise UsageError(f"cannot read symbol file {path}: {e}") from None
    return data.decode("ascii", errors="replace")


def _parse_nm_lines(text: str, *, allow_module: bool) -> Iterator[tuple[str, int, str, str | None]]:
    bad = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        try:
            addr = int(parts[0], 16)
        except ValueError:
            bad += 1
            if bad > 10:
                raise KernelError("not a System.map / kallsyms file (unparsable lines)") from None
            continue
        module = parts[3].strip("[]") if allow_module and len(parts) > 3 else None
        yield parts[2], addr, parts[1][:1], module


def _slide(rows: list[tuple[str, int, str, str | None]], info: VmcoreInfo | None, *, runtime: bool) -> int:
    """How far the file's core-kernel addresses are from the dump's."""
    if info is None:
        return 0
    text = next((a for n, a, _t, m in rows if n == "_text" and m is None), None)
    if text is None:
        if runtime:
            return 0
        text = _TEXT_BASE
    dump_text = _TEXT_BASE + (info.kerneloffset or 0)
    stext = info.symbol("_stext")
    if stext:
        st = next((a for n, a, _t, m in rows if n == "_stext" and m is None), None)
        if st is not None:
            return (stext - st) % (1 << 64) if stext != st else 0
    return (dump_text - text) % (1 << 64) if dump_text != text else 0


SNAPSHOT_NAMES = ("kallsyms.gz", "kallsyms")


def snapshot_beside(dump_path: str | None) -> str | None:
    """The load-time ``/proc/kallsyms`` snapshot in the dump's folder, if any."""
    if not dump_path:
        return None
    folder = os.path.dirname(os.path.abspath(dump_path))
    for name in SNAPSHOT_NAMES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None


def load_symbol_table(mem: KernelMemory | None, info: VmcoreInfo | None, *, system_map: str | None = None,
                      kallsyms: str | None = None, snapshot: str | None = None,
                      auto_snapshot: bool = True) -> SymbolTable:
    """The table the user asked for, else the dump's own kallsyms (+ modules from a snapshot).

    ``snapshot``: a ``/proc/kallsyms`` snapshot of the crashed boot; by
    default (``auto_snapshot``) the one beside the dump file.  If the dump's
    own kallsyms cannot be read the snapshot is used whole.
    """
    if system_map:
        return SymbolTable.from_system_map(system_map, info)
    if kallsyms:
        return SymbolTable.from_proc_kallsyms(kallsyms, info)
    if mem is None:
        raise KernelError("no symbol source: the dump has no usable VMCOREINFO and no --system-map/--kallsyms")
    snap = snapshot or (snapshot_beside(mem.source_path) if auto_snapshot else None)
    try:
        core = SymbolTable.from_kallsyms(mem, info)
    except KernelError:
        if snap is None:
            raise
        return SymbolTable.from_proc_kallsyms(snap, info)
    if snap is None:
        return core
    try:
        return core.with_modules_from(snap, info)
    except (KernelError, UsageError):
        return core
