"""Backtraces of x86_64 kernel stacks without debuginfo.

Why three methods: the ORC walk (the kernel's own ``unwind_next_frame``
logic over the dump's ORC table) is exact but needs the tables and sane
registers; a frame-pointer walk works on CONFIG_FRAME_POINTER kernels; a
stack scan for text addresses always gives *something* and is marked
approximate (``reliable=False``), like the kernel's ``?`` lines.

The first registers come from the crashing CPU's NT_PRSTATUS note; on a
panic those were saved by ``crash_setup_regs()`` in ``__crash_kexec``, so
the first frame is the crash path itself and the frames below it match the
kernel's printed "Call Trace" from ``panic`` down.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kdumpkit.errors import KdumpkitError
from kdumpkit.kernel.memory import KernelMemory
from kdumpkit.kernel.orc import OrcTable
from kdumpkit.kernel.symbols import Symbol, SymbolTable

__all__ = ["Backtrace", "Frame", "unwind_x86_64"]

THREAD_SIZE = 16 << 10  # x86_64 kernel stacks (KASAN doubles it; scanning stops at the top anyway)
_MAX_FRAMES = 64
_TEXT_TYPES = frozenset("tTwW")
# struct pt_regs (x86_64) field order
_PT_REGS = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di",
            "orig_ax", "ip", "cs", "flags", "sp", "ss")
_PRSTATUS_TO_PT = {"rax": "ax", "rbx": "bx", "rcx": "cx", "rdx": "dx", "rsi": "si", "rdi": "di", "rbp": "bp",
                   "rsp": "sp", "rip": "ip", "eflags": "flags", "orig_rax": "orig_ax"}


@dataclass(frozen=True)
class Frame:
    pc: int
    sp: int
    symbol: Symbol | None
    reliable: bool = True

    def format(self) -> str:
        name = self.symbol.format() if self.symbol else f"{self.pc:#x}"
        return ("" if self.reliable else "? ") + name

    @property
    def function(self) -> str | None:
        return self.symbol.name if self.symbol else None


@dataclass
class Backtrace:
    method: str
    """``orc``, ``frame-pointer`` or ``scan`` (approximate)."""
    frames: list[Frame] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class _State:
    def __init__(self, regs: dict[str, int]) -> None:
        self.ip = regs.get("rip", 0)
        self.sp = regs.get("rsp", 0)
        self.bp = regs.get("rbp", 0)
        self.signal = True  # the first ip is exact, not a return address
        self.regs: dict[str, int] | None = {_PRSTATUS_TO_PT.get(k, k): v for k, v in regs.items()}
        self.full_regs = True


def symbolize_pc(symbols: SymbolTable, pc: int, *, return_address: bool) -> Symbol | None:
    """Like the kernel's ``%pB``: a return address is looked up at ``pc - 1``, so a call to a
    noreturn function (``panic()``) that ends its caller names the caller, not the next
    function; the offset shown is still that of ``pc``."""
    if not return_address:
        return symbols.symbolize(pc)
    sym = symbols.symbolize(pc - 1)
    return None if sym is None else replace(sym, offset=sym.offset + 1)


def _is_text(symbols: SymbolTable, pc: int) -> Symbol | None:
    sym = symbols.symbolize(pc)
    return sym if sym is not None and sym.type in _TEXT_TYPES else None


def _orc_walk(mem: KernelMemory, symbols: SymbolTable, orc: OrcTable, regs: dict[str, int]) -> Backtrace:
    bt = Backtrace("orc")
    st = _State(regs)
    reliable = True
    resyncs = 0
    for _ in range(_MAX_FRAMES):
        sym = symbolize_pc(symbols, st.ip, return_address=not st.signal)
        bt.frames.append(Frame(st.ip, st.sp, sym, reliable))
        reliable = True
        if sym is None:
            bt.problems.append(f"{st.ip:#x} is not in the kernel's symbol table (module or user code)")
            break
        entry = orc.find(st.ip if st.signal else st.ip - 1)
        if entry is not None and entry.type == "end":
            break
        if entry is None or entry.type == "undefined":
            # e.g. __crash_kexec is STACK_FRAME_NON_STANDARD (its inline asm saves
            # the registers): the kernel's own unwinder stops there too.  Resume at
            # the next return address on the stack that ORC describes.
            if resyncs >= 3 or not _resync(mem, symbols, orc, st):
                bt.problems.append(f"no usable ORC entry for {sym.format()}")
                break
            resyncs += 1
            bt.problems.append(f"ORC has no rule for {sym.format()}: resumed by a stack scan at {st.sp - 8:#x}")
            reliable = False
            continue
        try:
            if not _orc_step(mem, st, entry.sp_reg, entry.sp_offset, entry.bp_reg, entry.bp_offset, entry.type):
                bt.problems.append(f"cannot compute the caller's stack pointer at {sym.format()} ({entry.sp_reg})")
                break
        except KdumpkitError as e:
            bt.problems.append(f"stack unreadable after {sym.format()}: {e}")
            break
        if st.regs is not None and st.regs.get("cs", 0) & 3:
            break  # returned to user mode: the kernel stack ends here
    return bt


def _stack_above(mem: KernelMemory, sp: int) -> bytes:
    """The stack from ``sp`` up to its top: a task stack (THREAD_SIZE-aligned), else the rest of
    ``sp``'s page — the IST exception stacks (NMI, #DF, #MC …) are one page each, between guard
    pages, so a THREAD_SIZE read from them runs into unmapped memory."""
    top = (sp | (THREAD_SIZE - 1)) + 1
    try:
        return bytes(mem.read_virt(sp, top - sp)) if 0 < top - sp <= THREAD_SIZE else b""
    except KdumpkitError:
        page_top = (sp | (mem.page_size - 1)) + 1
        return bytes(mem.read_virt(sp, page_top - sp))


def _resync(mem: KernelMemory, symbols: SymbolTable, orc: OrcTable, st: _State) -> bool:
    """Move ``st`` to the first return address above ``sp`` that has a defined ORC rule."""
    try:
        data = _stack_above(mem, st.sp)
    except KdumpkitError:
        return False
    for off in range(0, len(data) - 7, 8):
        word = int.from_bytes(data[off:off + 8], "little")
        sym = _is_text(symbols, word)
        if sym is None or sym.offset == 0:
            continue
        entry = orc.find(word - 1)
        if entry is not None and entry.type not in ("undefined", "end"):
            st.ip, st.sp, st.signal = word, st.sp + off + 8, False
            st.regs, st.full_regs = None, False
            return True
    return False


def _orc_step(mem: KernelMemory, st: _State, sp_reg: str, sp_off: int, bp_reg: str, bp_off: int,
              kind: str) -> bool:
    """One ``unwind_next_frame()`` step; False when the rule needs a register we lack."""
    regs = st.regs if st.full_regs else None
    if sp_reg == "sp":
        cfa = st.sp + sp_off
    elif sp_reg == "bp":
        cfa = st.bp + sp_off
    elif sp_reg == "sp_indirect":
        cfa = mem.read_u64(st.sp) + sp_off
    elif sp_reg == "bp_indirect":
        cfa = mem.read_u64(st.bp + sp_off)
    elif sp_reg in ("dx", "di", "r10", "r13") and regs is not None and sp_reg in regs:
        cfa = regs[sp_reg] + sp_off
    else:
        return False
    old_bp = st.bp
    if kind == "call":
        st.ip = mem.read_u64(cfa - 8)
        st.sp = cfa
        st.regs, st.full_regs, st.signal = None, False, False
    elif kind == "regs":
        values = [mem.read_u64(cfa + 8 * i) for i in range(len(_PT_REGS))]
        st.regs = dict(zip(_PT_REGS, values, strict=True))
        st.ip, st.sp = st.regs["ip"], st.regs["sp"]
        st.full_regs, st.signal = True, True
    elif kind == "regs_partial":
        ip, cs, flags, sp, ss = (mem.read_u64(cfa + 8 * i) for i in range(5))
        st.regs = {"ip": ip, "cs": cs, "flags": flags, "sp": sp, "ss": ss}
        st.ip, st.sp = ip, sp
        st.full_regs, st.signal = False, True
    else:
        return False
    if bp_reg == "undefined":
        if kind == "regs" and st.regs is not None:
            st.bp = st.regs["bp"]
    elif bp_reg == "prev_sp":
        st.bp = mem.read_u64(cfa + bp_off)
    elif bp_reg == "bp":
        st.bp = mem.read_u64(old_bp + bp_off)
    return True


def _fp_walk(mem: KernelMemory, symbols: SymbolTable, regs: dict[str, int]) -> Backtrace:
    bt = Backtrace("frame-pointer")
    pc, bp = regs.get("rip", 0), regs.get("rbp", 0)
    bt.frames.append(Frame(pc, regs.get("rsp", 0), symbols.symbolize(pc)))
    top = (bp | (THREAD_SIZE - 1)) + 1
    try:
        while len(bt.frames) < _MAX_FRAMES and bp and bp + 16 <= top:
            ret = mem.read_u64(bp + 8)
            sym = _is_text(symbols, ret)
            if sym is None:
                break
            bt.frames.append(Frame(ret, bp + 16, symbolize_pc(symbols, ret, return_address=True) or sym))
            nxt = mem.read_u64(bp)
            if nxt <= bp:
                break
            bp = nxt
    except KdumpkitError as e:
        bt.problems.append(f"frame chain unreadable: {e}")
    return bt


def _scan(mem: KernelMemory, symbols: SymbolTable, regs: dict[str, int]) -> Backtrace:
    bt = Backtrace("scan")
    pc, sp = regs.get("rip", 0), regs.get("rsp", 0)
    bt.frames.append(Frame(pc, sp, symbols.symbolize(pc), reliable=False))
    try:
        data = _stack_above(mem, sp)
    except KdumpkitError as e:
        bt.problems.append(f"stack unreadable: {e}")
        return bt
    for off in range(0, len(data) - 7, 8):
        word = int.from_bytes(data[off:off + 8], "little")
        if _is_text(symbols, word - 1) is None:
            continue
        sym = symbolize_pc(symbols, word, return_address=True)
        if sym is not None:
            bt.frames.append(Frame(word, sp + off, sym, reliable=False))
            if len(bt.frames) >= _MAX_FRAMES:
                break
    return bt


def unwind_x86_64(mem: KernelMemory, symbols: SymbolTable, regs: dict[str, int]) -> Backtrace:
    """The best backtrace the dump allows: ORC, else frame pointers, else a scan.

    Never raises for bad data: problems are listed in :attr:`Backtrace.problems`.
    """
    problems: list[str] = []
    if not regs.get("rip") or not regs.get("rsp"):
        return Backtrace("none", problems=["no registers (rip/rsp are zero)"])
    try:
        orc = OrcTable.from_kernel(mem, symbols)
        bt = _orc_walk(mem, symbols, orc, regs)
        if len(bt.frames) >= 3:
            return bt
        problems += [f"orc: {p}" for p in bt.problems] or ["orc: walk gave fewer than 3 frames"]
    except KdumpkitError as e:
        problems.append(f"orc: {e}")
    bt = _fp_walk(mem, symbols, regs)
    if len(bt.frames) >= 3:
        bt.problems = problems + bt.problems
        return bt
    problems += [f"frame-pointer: {p}" for p in bt.problems] or ["frame-pointer: walk gave fewer than 3 frames"]
    bt = _scan(mem, symbols, regs)
    bt.problems = problems + bt.problems
    return bt
