"""Crash facts for ``kdumpkit info``: what happened, on which CPU, in which kernel.

Everything comes from the dump alone: VMCOREINFO (release, build id, crash
time), the kernel log (panic message, the ``CPU: n PID: p Comm: x`` line
``dump_stack()`` prints), and the NT_PRSTATUS notes (registers).  Missing
pieces never raise: each is named in :attr:`CrashFacts.missing` so ``info``
can still describe a damaged or filtered dump.
"""

from __future__ import annotations

import datetime
import re
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdumpkit.dump.elfnotes import PRSTATUS_PID_OFFSET, PRSTATUS_REG_OFFSET_X86_64, X86_64_USER_REGS
from kdumpkit.errors import KdumpkitError
from kdumpkit.kernel.vmcoreinfo import VmcoreInfo

if TYPE_CHECKING:
    from kdumpkit.dump.base import Dump, Note
    from kdumpkit.kernel.printk import PrintkLog

__all__ = ["CrashFacts", "X86_64_PRSTATUS_REGS", "crash_facts", "prstatus_x86_64"]

X86_64_PRSTATUS_REGS = X86_64_USER_REGS  # ``pr_reg`` order in an x86_64 ``elf_prstatus``
_X86_64_PR_PID = PRSTATUS_PID_OFFSET
_X86_64_PR_REG = PRSTATUS_REG_OFFSET_X86_64

# panic() prints "Kernel panic - not syncing: <msg>"; oopses and BUGs print these first.
_PANIC = re.compile(rb"Kernel panic - not syncing")
_OOPS = re.compile(rb"^(?:BUG: |Oops: |general protection fault|kernel BUG at |Unable to handle kernel |"
                   rb"sysrq: (?:SysRq : )?Trigger a crash|SysRq : Trigger a crash)")
_CPU_LINE = re.compile(rb"CPU: (\d+) (?:UID: \d+ )?PID: (\d+) Comm: (\S+)")


@dataclass
class CrashFacts:
    """What ``info`` says about the crash; ``missing`` names what could not be found."""

    release: str | None = None
    build_id: str | None = None
    crashtime: int | None = None
    panic_message: str | None = None
    crashing_cpu: int | None = None
    crashing_pid: int | None = None
    crashing_comm: str | None = None
    registers: dict[str, int] = field(default_factory=dict)
    cpus: int | None = None
    ram_bytes: int | None = None
    log_format: str | None = None
    log_partial: bool | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def crash_time(self) -> str | None:
        if self.crashtime is None:
            return None
        return datetime.datetime.fromtimestamp(self.crashtime, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "build_id": self.build_id,
            "crash_time": self.crash_time,
            "crashtime": self.crashtime,
            "panic_message": self.panic_message,
            "crashing_cpu": self.crashing_cpu,
            "crashing_pid": self.crashing_pid,
            "crashing_comm": self.crashing_comm,
            "registers": {k: f"{v:#018x}" for k, v in self.registers.items()},
            "cpus": self.cpus,
            "ram_bytes": self.ram_bytes,
            "log_format": self.log_format,
            "log_partial": self.log_partial,
            "missing": list(self.missing),
        }


def prstatus_x86_64(desc: bytes) -> tuple[int, dict[str, int]] | None:
    """``(pr_pid, registers)`` of an x86_64 ``elf_prstatus``, or None if too short."""
    if len(desc) < _X86_64_PR_REG + 8 * len(X86_64_PRSTATUS_REGS):
        return None
    pid = struct.unpack_from("<i", desc, _X86_64_PR_PID)[0]
    values = struct.unpack_from(f"<{len(X86_64_PRSTATUS_REGS)}Q", desc, _X86_64_PR_REG)
    return pid, dict(zip(X86_64_PRSTATUS_REGS, values, strict=True))


def _panic_from_log(log: PrintkLog) -> tuple[str | None, int | None, int | None, str | None]:
    """``(message, cpu, pid, comm)`` from the log: the last panic (else oops) line and the
    ``CPU: … PID: … Comm:`` line before it (dump_stack() after the panic/oops banner)."""
    texts = [r.text for r in log.records]
    idx = None
    for i in range(len(texts) - 1, -1, -1):
        if _PANIC.search(texts[i]):
            idx = i
            break
    if idx is None:
        for i in range(len(texts) - 1, -1, -1):
            if _OOPS.search(texts[i]):
                idx = i
                break
    if idx is None:
        return None, None, None, None
    msg = texts[idx].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    cpu = pid = None
    comm = None
    # dump_stack() prints the CPU line right after the panic line; an oops prints it
    # a few lines after its banner.  Look forward a little, then backward.
    window = list(range(idx, min(idx + 40, len(texts)))) + list(range(idx - 1, max(idx - 200, -1), -1))
    for i in window:
        m = _CPU_LINE.search(texts[i])
        if m:
            cpu, pid, comm = int(m.group(1)), int(m.group(2)), m.group(3).decode("utf-8", "replace")
            break
    return msg, cpu, pid, comm


def _pick_prstatus(notes: list[Note], cpu: int | None, pid: int | None, arch: str,
                   facts: CrashFacts) -> None:
    if arch != "x86_64":
        facts.missing.append(f"registers: NT_PRSTATUS layout for {arch} not supported")
        return
    decoded = [prstatus_x86_64(n.desc) for n in notes]
    chosen = None
    if pid:  # a real task (pid 0 is the idle task on every CPU)
        hits = [i for i, d in enumerate(decoded) if d is not None and d[0] == pid]
        if len(hits) == 1:
            chosen = hits[0]
    if chosen is None and cpu is not None and cpu < len(decoded):
        chosen = cpu  # notes are in CPU order
    if chosen is None or decoded[chosen] is None:
        facts.missing.append("crashing CPU registers")
        return
    entry = decoded[chosen]
    if entry is None:  # pragma: no cover - checked above
        return
    facts.registers = entry[1]
    if facts.crashing_cpu is None:
        facts.crashing_cpu = chosen
    if facts.crashing_pid is None:
        facts.crashing_pid = entry[0]


def crash_facts(dump: Dump) -> CrashFacts:
    """Gather what the dump says about its crash; never raises for missing pieces."""
    facts = CrashFacts()
    try:
        facts.ram_bytes = sum(e - s for s, e in dump.ram_runs()) * dump.page_size
    except KdumpkitError:
        facts.missing.append("RAM size")
    try:
        notes = dump.prstatus_notes()
        facts.cpus = len(notes)
    except KdumpkitError:
        notes = []
        facts.missing.append("CPU notes")
    try:
        info = VmcoreInfo.from_dump(dump)
    except KdumpkitError:
        facts.missing += ["VMCOREINFO", "release", "build id", "crash time", "kernel log"]
        _pick_prstatus(notes, None, None, dump.arch, facts)
        return facts
    try:
        facts.release = info.osrelease
        facts.build_id = info.build_id
        facts.crashtime = info.crashtime
    except KdumpkitError:
        pass
    for name, value in (("release", facts.release), ("build id", facts.build_id), ("crash time", facts.crashtime)):
        if value is None:
            facts.missing.append(name)
    cpu = pid = None
    try:
        from kdumpkit.kernel.memory import kernel_memory
        from kdumpkit.kernel.printk import get_printk_log

        log = get_printk_log(kernel_memory(dump, info), info)
        facts.log_format, facts.log_partial = log.format, log.partial
        msg, cpu, pid, comm = _panic_from_log(log)
        facts.panic_message, facts.crashing_cpu, facts.crashing_pid, facts.crashing_comm = msg, cpu, pid, comm
        if msg is None:
            facts.missing.append("panic message")
        if cpu is None:
            facts.missing.append("crashing CPU (no 'CPU: n PID: p' line in the log)")
    except KdumpkitError as e:
        facts.missing.append(f"kernel log ({e})")
    if notes:
        _pick_prstatus(notes, cpu, pid, dump.arch, facts)
    else:
        facts.missing.append("crashing CPU registers (no NT_PRSTATUS notes)")
    return facts
