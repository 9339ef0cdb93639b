"""The triage report: what a person on call needs from a vmcore, in one page.

Why sections that degrade: a report is most needed on the worst dumps
(filtered, truncated, no VMCOREINFO, corrupt stacks).  Each section is built
on its own; any failure turns that section into ``unavailable: <reason>`` and
the rest of the report still appears.  Nothing here scans the whole dump:
VMCOREINFO, the log, the symbol table, ORC, one stack and (for modules and
processes) the kernel's BTF and two kernel lists are read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdumpkit.errors import KdumpkitError, KernelError
from kdumpkit.kernel.facts import CrashFacts, crash_facts
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

if TYPE_CHECKING:
    from kdumpkit.dump.base import Dump
    from kdumpkit.kernel.btf import Btf
    from kdumpkit.kernel.memory import KernelMemory
    from kdumpkit.kernel.printk import PrintkLog
    from kdumpkit.kernel.stack import Backtrace
    from kdumpkit.kernel.symbols import SymbolTable

__all__ = ["Report", "build_report", "crash_signature", "log_call_trace", "render"]

_CONTEXT_BEFORE = 10
_CONTEXT_AFTER = 40
_TAINT_LINE = re.compile(r"(Not tainted|Tainted: [A-Z ]+)")
_MODULES_LINE = re.compile(r"Modules linked in:(.*)")
_BARE_ADDRESS = re.compile(r"^\s*(\? )?0x[0-9a-f]+\s*$")
_TRACE_FRAME = re.compile(r"^\s*(\? )?([A-Za-z0-9_.$]+)\+(0x[0-9a-f]+)/(0x[0-9a-f]+)(?: \[(\S+)\])?")
_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")
_UTS_LEN = 65


@dataclass
class Report:
    """Section name → data (JSON-able), or the reason it is unavailable."""

    sections: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _ORDER:
            if name in self.sections:
                out[name] = self.sections[name]
            elif name in self.unavailable:
                out[name] = {"unavailable": self.unavailable[name]}
        return out


_ORDER = ("kernel", "crash", "signature", "cpu", "backtrace", "log_call_trace", "log", "modules", "processes",
          "symbols")
DEFAULT_MAX_TASKS = 20


class _Ctx:
    """What sections share, each piece computed at most once."""

    def __init__(self, dump: Dump, system_map: str | None, kallsyms: str | None,
                 max_tasks: int = DEFAULT_MAX_TASKS) -> None:
        self.dump = dump
        self.max_tasks = max_tasks
        self.system_map = system_map
        self.kallsyms = kallsyms
        self.info: VmcoreInfo | None = None
        self.mem: KernelMemory | None = None
        self.log: PrintkLog | None = None
        self.symbols: SymbolTable | None = None
        self.facts: CrashFacts | None = None
        self.backtrace: Backtrace | None = None
        self.btf: Btf | None = None
        self.btf_source = ""
        self.errors: dict[str, str] = {}


def _section(report: Report, name: str, fn: Callable[[], Any]) -> None:
    try:
        report.sections[name] = fn()
    except KdumpkitError as e:
        report.unavailable[name] = str(e)
    except Exception as e:  # noqa: BLE001 - a triage report must survive any corrupt structure
        report.unavailable[name] = f"internal error on this dump: {type(e).__name__}: {e}"


def build_report(dump: Dump, *, system_map: str | None = None, kallsyms: str | None = None,
                 max_tasks: int = DEFAULT_MAX_TASKS) -> Report:
    """Every section that the dump allows; never raises for damaged dumps.

    ``max_tasks``: how many tasks the ``processes`` section lists (all are counted).
    """
    ctx = _Ctx(dump, system_map, kallsyms, max_tasks)
    _prepare(ctx)
    report = Report()
    _section(report, "kernel", lambda: _kernel(ctx))
    _section(report, "crash", lambda: _crash(ctx))
    _section(report, "cpu", lambda: _cpu(ctx))
    _section(report, "backtrace", lambda: _backtrace(ctx))
    _section(report, "log_call_trace", lambda: _log_trace(ctx))
    _section(report, "log", lambda: _log_context(ctx))
    _section(report, "modules", lambda: _modules(ctx))
    _section(report, "processes", lambda: _processes(ctx))
    _section(report, "symbols", lambda: _symbols(ctx))
    _section(report, "signature", lambda: _signature(ctx, report))
    return report


def _prepare(ctx: _Ctx) -> None:
    from kdumpkit.kernel.memory import kernel_memory
    from kdumpkit.kernel.printk import get_printk_log
    from kdumpkit.kernel.symbols import load_symbol_table

    try:
        ctx.facts = crash_facts(ctx.dump)
    except Exception as e:  # noqa: BLE001
        ctx.errors["facts"] = f"{type(e).__name__}: {e}"
    try:
        ctx.info = VmcoreInfo.from_dump(ctx.dump)
        ctx.mem = kernel_memory(ctx.dump, ctx.info)
    except KdumpkitError as e:
        ctx.errors["kernel"] = str(e)
    if ctx.mem is not None:
        try:
            ctx.log = get_printk_log(ctx.mem, ctx.info)
        except KdumpkitError as e:
            ctx.errors["log"] = str(e)
    try:
        ctx.symbols = load_symbol_table(ctx.mem, ctx.info, system_map=ctx.system_map, kallsyms=ctx.kallsyms)
    except KdumpkitError as e:
        ctx.errors["symbols"] = str(e)
    except Exception as e:  # noqa: BLE001
        ctx.errors["symbols"] = f"internal error: {type(e).__name__}: {e}"


def _need(ctx: _Ctx, what: str) -> None:
    missing = {"kernel": ctx.mem, "log": ctx.log, "symbols": ctx.symbols, "facts": ctx.facts}[what]
    if missing is None:
        raise KernelError(ctx.errors.get(what) or ctx.errors.get("kernel") or f"no {what}")


# -- sections ---------------------------------------------------------------------
def _kernel(ctx: _Ctx) -> dict[str, Any]:
    if ctx.info is None:
        raise KernelError(ctx.errors.get("kernel", "no VMCOREINFO"))
    out: dict[str, Any] = {"release": ctx.info.osrelease, "build_id": ctx.info.build_id,
                           "arch": ctx.dump.arch}
    try:
        out["hostname"] = _uts_field(ctx, 1)
    except KdumpkitError as e:
        out["hostname"] = f"unavailable: {e}"
    out["taint"] = _taint(ctx)
    return out


def _uts_field(ctx: _Ctx, index: int) -> str:
    """Field ``index`` of ``init_uts_ns.name`` (struct new_utsname: 6 x 65 chars; 1 = nodename)."""
    assert ctx.info is not None
    _need(ctx, "kernel")
    assert ctx.mem is not None
    base = ctx.info.symbol("init_uts_ns")
    off = ctx.info.offset("uts_namespace.name")
    if base is None:
        raise KernelError("VMCOREINFO lacks SYMBOL(init_uts_ns)")
    if off is None:
        off = 4  # before v5.11 `name` followed a struct kref (4 bytes)
    raw = ctx.mem.read_virt(base + off + index * _UTS_LEN, _UTS_LEN)
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _taint(ctx: _Ctx) -> str:
    if ctx.log is not None:
        for rec in reversed(ctx.log.records):
            m = _TAINT_LINE.search(rec.text.decode("utf-8", "replace"))
            if m and b"CPU:" in rec.text:
                return m.group(1).strip() + " (from the log)"
    if ctx.symbols is not None and ctx.mem is not None:
        addr = ctx.symbols.address_of("tainted_mask")
        if addr is not None:
            mask = ctx.mem.read_ulong(addr)
            return f"tainted_mask={mask:#x}" + (" (not tainted)" if mask == 0 else "")
    return "unavailable: no 'Tainted:' line in the log and no tainted_mask symbol"


def _crash(ctx: _Ctx) -> dict[str, Any]:
    _need(ctx, "facts")
    f = ctx.facts
    assert f is not None
    out: dict[str, Any] = {"panic_message": f.panic_message, "crash_time": f.crash_time,
                           "crashtime": f.crashtime}
    if ctx.log is not None and ctx.log.records:
        ts = [r.ts_nsec for r in ctx.log.records if r.ts_nsec]
        if ts:
            out["uptime_seconds"] = round(max(ts) / 1e9, 3)
            out["uptime_note"] = "approximation: timestamp of the last log record"
    if f.missing:
        out["missing"] = list(f.missing)
    return out


def _cpu(ctx: _Ctx) -> dict[str, Any]:
    _need(ctx, "facts")
    f = ctx.facts
    assert f is not None
    if not f.registers:
        raise KernelError("no registers for the crashing CPU (no usable NT_PRSTATUS note)")
    return {"cpu": f.crashing_cpu, "pid": f.crashing_pid, "comm": f.crashing_comm,
            "registers": {k: f"{v:#018x}" for k, v in f.registers.items()}}


def _get_backtrace(ctx: _Ctx) -> Backtrace:
    if ctx.backtrace is None:
        from kdumpkit.kernel.stack import unwind_x86_64

        _need(ctx, "facts")
        _need(ctx, "kernel")
        _need(ctx, "symbols")
        assert ctx.facts is not None and ctx.mem is not None and ctx.symbols is not None
        if ctx.dump.arch != "x86_64":
            raise KernelError(f"unwinding {ctx.dump.arch} stacks is not supported")
        if not ctx.facts.registers:
            raise KernelError("no registers for the crashing CPU")
        ctx.backtrace = unwind_x86_64(ctx.mem, ctx.symbols, ctx.facts.registers)
    return ctx.backtrace


def _backtrace(ctx: _Ctx) -> dict[str, Any]:
    bt = _get_backtrace(ctx)
    return {"method": bt.method, "approximate": bt.method == "scan",
            "frames": [{"pc": f"{fr.pc:#x}", "sp": f"{fr.sp:#x}", "text": fr.format(), "function": fr.function,
                        "reliable": fr.reliable} for fr in bt.frames],
            "problems": list(bt.problems)}


def log_call_trace(log: PrintkLog) -> list[dict[str, Any]]:
    """Frames of the last ``Call Trace:`` block the kernel printed (``?`` lines marked unreliable)."""
    texts = [r.text.decode("utf-8", "replace") for r in log.records]
    start = max((i for i, t in enumerate(texts) if "Call Trace:" in t), default=None)
    if start is None:
        return []
    frames: list[dict[str, Any]] = []
    for t in texts[start + 1:start + 80]:
        for line in t.split("\n"):
            if line.strip() in ("<TASK>", "</TASK>", "<IRQ>", "</IRQ>", "<NMI>", "</NMI>"):
                continue
            m = _TRACE_FRAME.match(line)
            if not m:
                if _BARE_ADDRESS.match(line):
                    continue  # "? 0xffffffffc0237000": an address the kernel could not name (a module's init)
                return frames
            frames.append({"function": m.group(2), "offset": m.group(3), "size": m.group(4),
                           "module": m.group(5), "reliable": m.group(1) is None})
    return frames


def _log_trace(ctx: _Ctx) -> dict[str, Any]:
    _need(ctx, "log")
    assert ctx.log is not None
    frames = log_call_trace(ctx.log)
    if not frames:
        raise KernelError("no 'Call Trace:' block in the kernel log")
    out: dict[str, Any] = {"frames": [f"{'? ' if not f['reliable'] else ''}{f['function']}+{f['offset']}/{f['size']}"
                                      + (f" [{f['module']}]" if f["module"] else "") for f in frames]}
    try:
        bt = _get_backtrace(ctx)
        ours = [fr.function for fr in bt.frames if fr.function]
        theirs = [f["function"] for f in frames if f["reliable"]]
        common = [fn for fn in theirs if fn in ours]
        out["agreement"] = f"{len(common)} of {len(theirs)} reliable logged frames are in the unwound backtrace"
    except KdumpkitError:
        pass
    return out


def _panic_index(log: PrintkLog, message: str | None) -> int | None:
    if not message:
        return None
    key = message.encode()[:60]
    for i in range(len(log.records) - 1, -1, -1):
        if key in log.records[i].text:
            return i
    return None


def _log_context(ctx: _Ctx) -> dict[str, Any]:
    _need(ctx, "log")
    assert ctx.log is not None
    from kdumpkit.kernel.printk import format_plain

    idx = _panic_index(ctx.log, ctx.facts.panic_message if ctx.facts else None)
    recs = ctx.log.records
    if idx is None:
        chosen = recs[-_CONTEXT_BEFORE - _CONTEXT_AFTER:]
        note = "no panic/oops line found: last records"
    else:
        chosen = recs[max(idx - _CONTEXT_BEFORE, 0):idx + _CONTEXT_AFTER]
        note = f"records around the panic line (record {idx} of {len(recs)})"
    return {"note": note, "partial": ctx.log.partial, "lines": format_plain(chosen).splitlines()}


def _get_btf(ctx: _Ctx) -> Btf:
    """The dump's own BTF, loaded once (a failure is remembered, not retried)."""
    if ctx.btf is None:
        if "btf" in ctx.errors:
            raise KernelError(ctx.errors["btf"])
        from kdumpkit.kernel.btf import load_btf

        try:
            _need(ctx, "kernel")
            _need(ctx, "symbols")
        except KdumpkitError as e:
            ctx.errors["btf"] = f"BTF unavailable: no symbol table to locate it ({e})"
            raise KernelError(ctx.errors["btf"]) from None
        assert ctx.mem is not None and ctx.symbols is not None
        try:
            ctx.btf, ctx.btf_source = load_btf(ctx.mem, ctx.symbols)
        except KdumpkitError as e:
            ctx.errors["btf"] = f"BTF unavailable: {e}"
            raise KernelError(ctx.errors["btf"]) from None
    return ctx.btf


def _log_modules(ctx: _Ctx) -> list[str] | None:
    if ctx.log is None:
        return None
    for rec in reversed(ctx.log.records):
        m = _MODULES_LINE.search(rec.text.decode("utf-8", "replace"))
        if m:
            return m.group(1).split()
    return None


def _crash_pcs_and_names(ctx: _Ctx) -> tuple[list[int], list[str]]:
    """Program counters of the unwound backtrace and ``[module]`` names of the logged Call Trace."""
    pcs: list[int] = []
    names: list[str] = []
    try:
        pcs = [fr.pc for fr in _get_backtrace(ctx).frames]
    except KdumpkitError:
        pass
    if ctx.log is not None:
        names = [f["module"] for f in log_call_trace(ctx.log) if f["module"] and f["reliable"]]
    return pcs, names


def _modules(ctx: _Ctx) -> dict[str, Any]:
    try:
        return _modules_btf(ctx)
    except KdumpkitError as e:
        why = str(e)
    names = _log_modules(ctx)
    if names is None:
        raise KernelError(f"{why}; and no 'Modules linked in:' line in the log"
                          + (f" ({ctx.errors['log']})" if "log" in ctx.errors else ""))
    return {"modules": [n.strip("[]") for n in names],
            "source": f"the log's 'Modules linked in:' line (may be truncated; {why})"}


def _modules_btf(ctx: _Ctx) -> dict[str, Any]:
    from kdumpkit.kernel.modules import mark_crash, walk_modules

    btf = _get_btf(ctx)
    assert ctx.mem is not None and ctx.symbols is not None
    mods = walk_modules(ctx.mem, btf, ctx.symbols)
    pcs, names = _crash_pcs_and_names(ctx)
    crash = mark_crash(mods, pcs, names)
    out: dict[str, Any] = {"modules": [m.name for m in mods.modules], "count": len(mods.modules),
                           "crash_modules": crash, "details": [m.to_json() for m in mods.modules],
                           "source": f"the kernel's module list ({mods.layout}), offsets from {ctx.btf_source}"}
    if not mods.complete:
        out["problem"] = mods.problem
    logged = _log_modules(ctx)
    if logged is not None:
        missing = sorted({n.strip("[]") for n in logged} - {m.name for m in mods.modules})
        if missing:
            out["in_log_not_in_list"] = missing
    return out


def _processes(ctx: _Ctx) -> dict[str, Any]:
    """Crashing task first, then the first ``max_tasks`` in list order, and counts per state."""
    from kdumpkit.kernel.tasks import walk_tasks

    btf = _get_btf(ctx)
    assert ctx.mem is not None and ctx.symbols is not None
    tl = walk_tasks(ctx.mem, btf, ctx.symbols)
    f = ctx.facts
    crashing = None
    how = ""
    cpu = f.crashing_cpu if f else None
    if cpu is not None and cpu in tl.current:
        crashing = tl.find(tl.current[cpu])
        how = f"current task of crashing CPU {cpu} ({tl.current_source})"
    if crashing is None and f is not None and f.crashing_pid is not None:
        crashing = next((t for t in tl.tasks if t.pid == f.crashing_pid
                         and (f.crashing_comm is None or t.comm == f.crashing_comm)), None)
        how = "the task matching the log's 'CPU: N PID: P Comm: C' line"
    if crashing is not None and f is not None and f.crashing_pid is not None and crashing.pid != f.crashing_pid:
        how += f" (the log says PID {f.crashing_pid} Comm {f.crashing_comm})"
    states: dict[str, int] = {}
    for t in tl.tasks:
        states[t.state] = states.get(t.state, 0) + 1
    listed = [t for t in tl.tasks if t is not crashing][:max(ctx.max_tasks, 0)]
    out: dict[str, Any] = {
        "count": len(tl.tasks), "states": dict(sorted(states.items(), key=lambda kv: -kv[1])),
        "crashing": None if crashing is None else {**crashing.to_json(), "source": how},
        "tasks": [t.to_json() for t in listed], "shown": len(listed),
        "source": f"init_task.tasks and thread lists, offsets from {ctx.btf_source}; "
                  f"CPU current tasks: {tl.current_source}",
    }
    if not tl.complete:
        out["problem"] = tl.problem
    return out


def _symbols(ctx: _Ctx) -> dict[str, Any]:
    _need(ctx, "symbols")
    assert ctx.symbols is not None
    return {"source": ctx.symbols.source, "count": len(ctx.symbols)}


#: Frames that only say how a kernel version implements panic(): v6.12.y stable kernels put ``vpanic``
#: between ``__crash_kexec`` and ``panic``.  Left out of signatures so one crash signs alike everywhere.
PANIC_INTERNALS = frozenset({"vpanic"})


def crash_signature(functions: list[str], message: str | None) -> str:
    """A stable id of "this kind of crash": top 5 function names + the message without numbers."""
    norm = _NUMBERS.sub("N", message or "").strip()
    text = "|".join(functions[:5]) + "\n" + norm
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _signature(ctx: _Ctx, report: Report) -> dict[str, Any]:
    message = ctx.facts.panic_message if ctx.facts else None
    functions: list[str] = []
    basis = "backtrace"
    try:
        bt = _get_backtrace(ctx)
        # A stack scan also finds stale return addresses that change from run to run:
        # sign only what an unwinder (ORC, frame pointers) vouches for.
        if bt.method != "scan":
            functions = [fr.function for fr in bt.frames if fr.function and fr.function not in PANIC_INTERNALS]
    except KdumpkitError:
        pass
    if not functions and ctx.log is not None:
        functions = [f["function"] for f in log_call_trace(ctx.log) if f["reliable"]]
        basis = "log call trace"
    if not functions and not message:
        raise KernelError("neither a backtrace nor a panic message to sign")
    return {"id": crash_signature(functions, message), "functions": functions[:5],
            "message": _NUMBERS.sub("N", message or ""), "basis": basis if functions else "message only"}


# -- rendering ----------------------------------------------------------------------
def render(report: Report, fmt: str = "text") -> str:
    """``text`` or ``markdown`` (JSON is :meth:`Report.to_json`)."""
    md = fmt == "markdown"
    out: list[str] = ["# kdumpkit crash report" if md else "kdumpkit crash report", ""]
    for name, data in report.to_json().items():
        out.append(f"## {name}" if md else f"== {name} ==")
        if isinstance(data, dict) and set(data) == {"unavailable"}:
            out.append(f"unavailable: {data['unavailable']}")
        elif name == "backtrace":
            out.append(f"method: {data['method']}" + (" (approximate)" if data["approximate"] else ""))
            block = [f"  #{i:<2} {fr['text']}" for i, fr in enumerate(data["frames"])]
            out += _block(block, md)
            out += [f"  note: {p}" for p in data["problems"]]
        elif name == "log":
            out.append(data["note"] + (" (log partial)" if data["partial"] else ""))
            out += _block(data["lines"], md)
        elif name == "log_call_trace":
            out += _block(data["frames"], md)
            if "agreement" in data:
                out.append(data["agreement"])
        elif name == "cpu":
            out.append(f"cpu {data['cpu']}  pid {data['pid']}  comm {data['comm']}")
            regs = list(data["registers"].items())
            out += _block(["  ".join(f"{k.upper():>8}: {v}" for k, v in regs[i:i + 3])
                           for i in range(0, len(regs), 3)], md)
        elif name == "modules":
            crash = set(data.get("crash_modules", []))
            out.append(" ".join(n + (" (crash)" if n in crash else "") for n in data["modules"]) or "(none)")
            out.append(f"source: {data['source']}")
            out += [f"{k}: {data[k]}" for k in ("problem", "in_log_not_in_list") if k in data]
        elif name == "processes":
            out += _render_processes(data, md)
        else:
            for k, v in data.items():
                out.append(f"- **{k}**: {v}" if md else f"{k}: {v}")
        out.append("")
    return "\n".join(out)


def _render_processes(data: dict[str, Any], md: bool) -> list[str]:
    states = "  ".join(f"{k} {v}" for k, v in data["states"].items())
    lines = [f"{data['count']} tasks ({states})"]
    rows = [f"  {'':1} {'PID':>7} {'TGID':>7} ST {'CPU':>3}  COMM"]
    tasks = ([{**data["crashing"], "mark": ">"}] if data["crashing"] else []) + data["tasks"]
    for t in tasks:
        cpu = "" if t["cpu"] is None else str(t["cpu"])
        rows.append(f"  {t.get('mark', ''):1} {t['pid']:>7} {t['tgid']:>7} {t['state']:2} {cpu:>3}  {t['comm']}")
    lines += _block(rows, md)
    shown = data["shown"] + (1 if data["crashing"] else 0)
    if shown < data["count"]:
        lines.append(f"({data['count'] - shown} more not shown)")
    if data["crashing"]:
        lines.append(f"> crashing task: {data['crashing']['source']}")
    else:
        lines.append("crashing task: not identified")
    if "problem" in data:
        lines.append(f"problem: {data['problem']}")
    lines.append(f"source: {data['source']}")
    return lines


def _block(lines: list[str], md: bool) -> list[str]:
    return ["```", *lines, "```"] if md else lines
