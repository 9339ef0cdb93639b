"""Kernel module dependencies and load order, without ``modinfo`` or ``depmod``.

Debian's kernel packages carry no ``modules.dep`` (it is made at install time),
so the dependencies come from each module's ``.modinfo`` ELF section
(``depends=a,b``), parsed here; ``modules.dep`` is used when present.
"""

from __future__ import annotations

import struct
from pathlib import Path

from kdumpkit.errors import LabError


def _canon(name: str) -> str:
    return name.replace("-", "_")


def modinfo(data: bytes) -> dict[str, list[str]]:
    """Key → values of the ``.modinfo`` section of an ELF64/ELF32 little-endian ``.ko``."""
    if data[:4] != b"\x7fELF":
        raise LabError("not an ELF module")
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
        shfmt, off_i, size_i = end + "IIQQQQIIQQ", 4, 5
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)
        shfmt, off_i, size_i = end + "IIIIIIIIII", 4, 5
    sections = [struct.unpack_from(shfmt, data, shoff + i * shentsize) for i in range(shnum)]
    strtab = sections[shstrndx]
    names = data[strtab[off_i]:strtab[off_i] + strtab[size_i]]
    out: dict[str, list[str]] = {}
    for sh in sections:
        nm = names[sh[0]:names.index(b"\0", sh[0])].decode()
        if nm != ".modinfo":
            continue
        for item in data[sh[off_i]:sh[off_i] + sh[size_i]].split(b"\0"):
            if b"=" in item:
                k, v = item.decode("utf-8", "replace").split("=", 1)
                out.setdefault(k, []).append(v)
    return out


def module_index(modules_dir: Path) -> dict[str, Path]:
    """Canonical module name (``_`` for ``-``) → path of its plain ``.ko``."""
    return {_canon(p.name[:-3]): p for p in sorted(modules_dir.rglob("*.ko"))}


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """``modules.dep`` lines ``kernel/a.ko: kernel/b.ko ...`` → name → dependency names."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[_canon(Path(mod).name.split(".ko")[0])] = [_canon(Path(d).name.split(".ko")[0]) for d in rest.split()]
    return deps


def dependencies(modules_dir: Path, index: dict[str, Path] | None = None) -> dict[str, list[str]]:
    """Name → direct dependencies for every module (modules.dep, else .modinfo on demand)."""
    dep_file = modules_dir / "modules.dep"
    if dep_file.is_file():
        return parse_modules_dep(dep_file.read_text())
    index = index if index is not None else module_index(modules_dir)
    return _LazyDeps(index)


class _LazyDeps(dict[str, list[str]]):
    """Reads a module's ``.modinfo`` only when its dependencies are asked for."""

    def __init__(self, index: dict[str, Path]) -> None:
        super().__init__()
        self._index = index

    def __missing__(self, name: str) -> list[str]:
        path = self._index.get(name)
        if path is None:
            raise KeyError(name)
        dep = modinfo(path.read_bytes()).get("depends", [""])[0]
        self[name] = [_canon(d) for d in dep.split(",") if d]
        return self[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (dict.__contains__(self, name) or name in self._index)


def load_order(wanted: list[str], deps: dict[str, list[str]], *, builtin: set[str] | None = None) -> list[str]:
    """Modules to insert, dependencies first, each once, in a stable order.

    Names in ``builtin`` (compiled into the kernel) are skipped; unknown names
    raise, since a missing driver would only show up as a hung guest.
    """
    builtin = builtin or set()
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = _canon(name)
        if name in builtin or state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise LabError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        if name not in deps:
            raise LabError(f"module {name} not found")
        state[name] = 1
        for d in deps[name]:
            visit(d, chain + (name,))
        state[name] = 2
        order.append(name)

    for w in wanted:
        visit(w, ())
    return order


def builtin_modules(modules_dir: Path) -> set[str]:
    """Names listed in ``modules.builtin`` (drivers compiled into the kernel)."""
    f = modules_dir / "modules.builtin"
    if not f.is_file():
        return set()
    return {_canon(Path(line.strip()).name.split(".ko")[0]) for line in f.read_text().splitlines() if line.strip()}
