"""The crashed kernel's loaded modules (``lsmod``), found by walking ``modules`` with BTF offsets.

Why: "which drivers were loaded, and was the crash in one of them" is core
triage, and the log's ``Modules linked in:`` line is printed only by oopses
(not by every panic) and may be cut.  The kernel's own list is exact.

``struct module`` moved its memory description in v6.4: ``mem[MOD_TEXT]``
(``struct module_memory``, one per ``enum mod_mem_type``) replaced
``core_layout``/``init_layout`` (``struct module_layout``).  Both are read
through BTF, so the same code serves 5.10, 6.1 and 6.12.  Sizes are what
``lsmod`` prints (every memory region, or core + init layout).

Bounded like the task walk: a cap, loop detection, and a bad link stops the
walk with ``problem`` set instead of raising.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from kdumpkit.errors import KdumpkitError, KernelError
from kdumpkit.kernel.btf import Btf
from kdumpkit.kernel.memory import KernelMemory
from kdumpkit.kernel.symbols import SymbolTable

__all__ = ["Module", "ModuleList", "mark_crash", "walk_modules"]

DEFAULT_CAP = 10_000
_KERNEL_SPACE = 0xFF00_0000_0000_0000  # lowest kernel address with 5-level paging (LA57)


@dataclass(frozen=True)
class Module:
    """One loaded module; ``text`` is its core text range ``[start, end)``."""

    address: int
    name: str
    base: int
    size: int
    state: str
    text: tuple[int, int]
    crash: bool = False

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "base": f"{self.base:#x}", "size": self.size, "state": self.state,
                "crash": self.crash}


@dataclass
class ModuleList:
    """What the walk found; ``complete`` is False when it stopped early (``problem`` says why)."""

    modules: list[Module] = field(default_factory=list)
    complete: bool = True
    problem: str | None = None
    layout: str = ""


class _Layout:
    """Where name/state/base/size are in ``struct module`` for this kernel."""

    def __init__(self, btf: Btf) -> None:
        self.list = btf.offsetof("module", "list")
        self.name = btf.field("module", "name")
        self.state = btf.field("module", "state")
        states = btf.enum_values(self.state.type_id) if self._is_enum(btf, self.state.type_id) else {}
        self.state_names = {v: k.removeprefix("MODULE_STATE_").lower() for k, v in states.items()}
        self.regions: list[tuple[int, int, int]] = []  # (base offset, size offset, size width)
        if btf.has_field("module", "mem"):
            types = btf.enum("mod_mem_type")
            n = types.get("MOD_MEM_NUM_TYPES", btf.array(btf.field("module", "mem").type_id)[1])
            text = types.get("MOD_TEXT", 0)
            self.kind = "mem[MOD_TEXT] (v6.4+)"
            order = [text] + [i for i in range(n) if i != text]
            for i in order:
                size = btf.field("module", f"mem[{i}].size")
                self.regions.append((btf.offsetof("module", f"mem[{i}].base"), size.offset, size.size))
            self.text_size = self.regions[0][1:]
        else:
            self.kind = "core_layout (before v6.4)"
            for lay in ("core_layout", "init_layout"):
                size = btf.field("module", f"{lay}.size")
                self.regions.append((btf.offsetof("module", f"{lay}.base"), size.offset, size.size))
            ts = btf.field("module", "core_layout.text_size")
            self.text_size = (ts.offset, ts.size)
        offsets = [self.name.offset + self.name.size, self.state.offset + self.state.size]
        offsets += [b + 8 for b, _s, _w in self.regions] + [s + w for _b, s, w in self.regions]
        self.span = max(offsets)

    @staticmethod
    def _is_enum(btf: Btf, type_id: int) -> bool:
        try:
            btf.enum_values(type_id)
        except KernelError:
            return False
        return True


def _int(raw: bytes, off: int, size: int) -> int:
    return int.from_bytes(raw[off:off + size], "little")


def _read_module(mem: KernelMemory, lay: _Layout, addr: int) -> Module:
    raw = mem.read_virt(addr, lay.span)
    name = raw[lay.name.offset:lay.name.offset + lay.name.size].split(b"\0", 1)[0].decode("utf-8", "replace")
    state = _int(raw, lay.state.offset, lay.state.size)
    base = _int(raw, lay.regions[0][0], 8)
    size = sum(_int(raw, s, w) for _b, s, w in lay.regions)
    text = _int(raw, *lay.text_size)
    return Module(addr, name, base, size, lay.state_names.get(state, str(state)), (base, base + text))


def walk_modules(mem: KernelMemory, btf: Btf, symbols: SymbolTable, *, cap: int = DEFAULT_CAP) -> ModuleList:
    """Every module on the kernel's ``modules`` list, in list order (newest first, like ``lsmod``)."""
    head = symbols.address_of("modules")
    if head is None:
        raise KernelError("no 'modules' list head in the symbol table")
    lay = _Layout(btf)
    out = ModuleList(layout=lay.kind)
    seen: set[int] = set()
    node = head
    try:
        for _ in range(cap + 1):
            node = mem.read_pointer(node)
            if node == head:
                return out
            if node < _KERNEL_SPACE:
                raise KernelError(f"list link is {node:#x}, not a kernel address")
            addr = node - lay.list
            if addr in seen:
                raise KernelError(f"module list loops back to {addr:#x}")
            if len(out.modules) >= cap:
                raise KernelError(f"stopped after {cap} modules (cap)")
            seen.add(addr)
            out.modules.append(_read_module(mem, lay, addr))
    except KdumpkitError as e:
        out.complete = False
        out.problem = f"walk stopped after {len(out.modules)} modules: {e}"
    return out


def mark_crash(mods: ModuleList, pcs: Iterable[int] = (), names: Iterable[str] = ()) -> list[str]:
    """Mark modules whose text holds one of ``pcs`` or whose name is in ``names`` (a logged
    ``[module]`` frame); returns the names of every module marked so far, in list order."""
    pcs = list(pcs)
    wanted = {n.replace("-", "_") for n in names}
    for i, m in enumerate(mods.modules):
        start, end = m.text
        if m.name in wanted or any(start <= pc < end for pc in pcs if end > start):
            mods.modules[i] = replace(m, crash=True)
    return [m.name for m in mods.modules if m.crash]
