"""The crashed kernel's tasks (``ps``), found by walking ``init_task.tasks`` with BTF offsets.

Why: "what was running" is the second question after "where did it crash",
and without debuginfo the only thing telling where ``pid``, ``comm`` or
``__state`` sit in ``struct task_struct`` is the kernel's own BTF.

What is walked: ``init_task.tasks`` links every thread-group leader (one per
process, kernel threads included); each leader's threads are on its
``signal->thread_head`` list (``task_struct.thread_node``, v3.14+).  The
per-CPU ``current_task`` (``pcpu_hot.current_task`` on v6.2–v6.14) says
which task each CPU was running, which also brings in the idle tasks
(``swapper/N``), which are on no list.

Everything is bounded: at most ``cap`` tasks, a loop or a pointer that is not
a kernel address or cannot be read stops the walk and is reported in
``problem`` (the tasks found so far are kept); nothing here raises for a
corrupt list.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kdumpkit.errors import KdumpkitError, KernelError
from kdumpkit.kernel.btf import Btf, Member
from kdumpkit.kernel.memory import KernelMemory
from kdumpkit.kernel.symbols import SymbolTable

__all__ = ["Task", "TaskList", "current_tasks", "state_letter", "walk_tasks"]

DEFAULT_CAP = 100_000
_KERNEL_SPACE = 0xFF00_0000_0000_0000  # lowest kernel address with 5-level paging (LA57)
_MAX_CPUS = 8192
_STATE_CHARS = "RSDTtXZPI"  # the kernel's task_index_to_char()
# include/linux/sched.h bits (stable since v4.14)
_TASK_REPORT = 0x7F
_TASK_UNINTERRUPTIBLE, _TASK_NOLOAD, _TASK_RTLOCK_WAIT, _TASK_FROZEN = 0x2, 0x400, 0x1000, 0x8000
_TASK_IDLE = _TASK_UNINTERRUPTIBLE | _TASK_NOLOAD
_TASK_REPORT_IDLE = _TASK_REPORT + 1


def state_letter(state: int, exit_state: int) -> str:
    """The ``ps`` letter of a task, as the kernel's ``__task_state_index()`` computes it.

    ``state`` is ``__state`` (v5.14+) or ``state`` (a long before); like the
    kernel, only its low 32 bits count.  The v5.15+/v6.1+ bits (RTLOCK_WAIT,
    FROZEN) are never set on older kernels, so one formula serves all.
    """
    state &= 0xFFFF_FFFF
    report = (state | exit_state) & _TASK_REPORT
    if state & _TASK_IDLE == _TASK_IDLE:
        report = _TASK_REPORT_IDLE
    if state & (_TASK_RTLOCK_WAIT | _TASK_FROZEN):  # both are reported as D (v5.15+/v6.1+ bits; unused before)
        report = _TASK_UNINTERRUPTIBLE
    return _STATE_CHARS[report.bit_length()]


@dataclass(frozen=True)
class Task:
    """One task; ``cpu`` is set when it was some CPU's current task at the crash."""

    address: int
    pid: int
    tgid: int
    comm: str
    state: str
    state_value: int
    exit_state: int
    on_cpu: bool | None = None  # task_struct.on_cpu (CONFIG_SMP); None where absent
    cpu: int | None = None

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "tgid": self.tgid, "comm": self.comm, "state": self.state,
                "cpu": self.cpu, "address": f"{self.address:#x}"}


@dataclass
class TaskList:
    """What the walk found; ``complete`` is False when it stopped early (``problem`` says why)."""

    tasks: list[Task] = field(default_factory=list)
    complete: bool = True
    problem: str | None = None
    current: dict[int, int] = field(default_factory=dict)  # cpu -> task address
    current_source: str | None = None

    def find(self, address: int) -> Task | None:
        return next((t for t in self.tasks if t.address == address), None)


class _Layout:
    """``task_struct`` offsets from BTF, and one span that covers every field read."""

    def __init__(self, btf: Btf) -> None:
        self.tasks = btf.offsetof("task_struct", "tasks")
        self.pid = btf.field("task_struct", "pid")
        self.tgid = btf.field("task_struct", "tgid")
        self.comm = btf.field("task_struct", "comm")
        self.state = btf.field("task_struct", "__state" if btf.has_field("task_struct", "__state") else "state")
        self.exit_state = btf.field("task_struct", "exit_state")
        self.on_cpu = btf.field("task_struct", "on_cpu") if btf.has_field("task_struct", "on_cpu") else None
        self.signal = btf.field("task_struct", "signal").offset
        self.thread_node = btf.offsetof("task_struct", "thread_node")
        self.thread_head = btf.offsetof("signal_struct", "thread_head")
        fields = [self.pid, self.tgid, self.comm, self.state, self.exit_state] + ([self.on_cpu] if self.on_cpu else [])
        self.lo = min([f.offset for f in fields] + [self.signal])
        self.hi = max([f.offset + f.size for f in fields] + [self.signal + 8])


def _int(raw: bytes, off: int, size: int, signed: bool = False) -> int:
    return int.from_bytes(raw[off:off + size], "little", signed=signed)


def _read_task(mem: KernelMemory, lay: _Layout, addr: int) -> tuple[Task, int]:
    """The task at ``addr`` (one read of the span of its fields) and its ``signal`` pointer."""
    raw = mem.read_virt(addr + lay.lo, lay.hi - lay.lo)

    def get(f: Member, signed: bool = False) -> int:
        return _int(raw, f.offset - lay.lo, f.size, signed)

    comm_off = lay.comm.offset - lay.lo
    comm = raw[comm_off:comm_off + lay.comm.size].split(b"\0", 1)[0].decode("utf-8", "replace")
    state = get(lay.state, signed=True)
    exit_state = get(lay.exit_state)
    task = Task(addr, get(lay.pid, True), get(lay.tgid, True), comm, state_letter(state, exit_state), state,
                exit_state, bool(get(lay.on_cpu)) if lay.on_cpu else None)
    return task, _int(raw, lay.signal - lay.lo, 8)


def _pointer(mem: KernelMemory, addr: int) -> int:
    p = mem.read_pointer(addr)
    if p < _KERNEL_SPACE:
        raise KernelError(f"list link at {addr:#x} is {p:#x}, not a kernel address")
    return p


def current_tasks(mem: KernelMemory, btf: Btf, symbols: SymbolTable) -> tuple[dict[int, int], str]:
    """CPU → address of its current task, from the per-CPU ``current_task`` variable.

    v6.2–v6.14 keep it in ``pcpu_hot.current_task``; before and after, a per-CPU
    ``current_task``.  CPUs are those with a ``__per_cpu_offset`` up to ``nr_cpu_ids``.
    """
    var = symbols.address_of("current_task")
    how = "per-CPU current_task"
    if var is None:
        hot = symbols.address_of("pcpu_hot")
        if hot is None:
            raise KernelError("neither current_task nor pcpu_hot in the symbol table")
        var = hot + btf.offsetof("pcpu_hot", "current_task")
        how = "per-CPU pcpu_hot.current_task"
    offsets = symbols.address_of("__per_cpu_offset")
    if offsets is None:
        raise KernelError("no __per_cpu_offset in the symbol table")
    nr_addr = symbols.address_of("nr_cpu_ids")
    ncpus = min(mem.read_u32(nr_addr), _MAX_CPUS) if nr_addr is not None else 1
    out: dict[int, int] = {}
    for cpu in range(ncpus):
        base = mem.read_ulong(offsets + cpu * 8)
        try:
            cur = mem.read_pointer(base + var)
        except KdumpkitError:
            continue
        if cur >= _KERNEL_SPACE:
            out[cpu] = cur
    return out, how


class _Walk:
    """One bounded walk; ``add`` records a task, ``stop`` records why the walk ended early."""

    def __init__(self, mem: KernelMemory, lay: _Layout, cap: int, out: TaskList) -> None:
        self.mem, self.lay, self.cap, self.out = mem, lay, cap, out
        self.seen: set[int] = set()
        self.cpu_of = {addr: cpu for cpu, addr in sorted(out.current.items(), reverse=True)}

    @property
    def full(self) -> bool:
        return len(self.out.tasks) >= self.cap

    def add(self, addr: int) -> int:
        task, signal = _read_task(self.mem, self.lay, addr)
        cpu = self.cpu_of.get(addr)
        self.out.tasks.append(task if cpu is None else replace(task, cpu=cpu))
        self.seen.add(addr)
        return signal

    def stop(self, problem: str) -> None:
        self.out.complete = False
        self.out.problem = self.out.problem or problem

    def threads(self, leader: int, signal: int) -> None:
        """The other threads of ``leader``'s group, from ``signal->thread_head``; a broken
        thread list is recorded and skipped (the process list goes on)."""
        try:
            self._threads(leader, signal)
        except KdumpkitError as e:
            self.stop(f"threads of task {leader:#x} unreadable: {e}")

    def _threads(self, leader: int, signal: int) -> None:
        head = signal + self.lay.thread_head
        node = _pointer(self.mem, head)
        for _ in range(self.cap + 1):
            if node == head:
                return
            task = node - self.lay.thread_node
            if task in self.seen:
                if task != leader:
                    self.stop(f"thread list of {leader:#x} loops at {task:#x}")
                    return
            elif self.full:
                return
            else:
                self.add(task)
            node = _pointer(self.mem, node)
        self.stop(f"thread list of {leader:#x} does not end")


    def backward(self, head: int, threads: bool) -> None:
        """After a broken forward link: the rest of the list from its other end, following ``prev``
        (a filtered dump missing one task's page still shows the tasks after it)."""
        found: list[int] = []
        found_set: set[int] = set()
        prev = self.mem.pointer_size
        try:
            node = _pointer(self.mem, head + prev)
            while node != head and len(found) + len(self.out.tasks) < self.cap:
                task = node - self.lay.tasks
                if task in self.seen or task in found_set:
                    break
                found.append(task)
                found_set.add(task)
                node = _pointer(self.mem, node + prev)
        except KdumpkitError:
            pass  # the backward walk ends at the same hole
        recovered = 0
        for task in reversed(found):
            try:
                signal = self.add(task)
                if threads and signal >= _KERNEL_SPACE:
                    self.threads(task, signal)
            except KdumpkitError:
                continue  # the unreadable task itself
            recovered += 1
        if recovered:
            self.out.problem = f"{self.out.problem}; {recovered} more found walking the list backwards"


def walk_tasks(mem: KernelMemory, btf: Btf, symbols: SymbolTable, *, cap: int = DEFAULT_CAP,
               threads: bool = True) -> TaskList:
    """Every task reachable from ``init_task`` (itself first), threads after their leader,
    then CPUs' current tasks found on no list (the idle tasks)."""
    init = symbols.address_of("init_task")
    if init is None:
        raise KernelError("no init_task in the symbol table")
    out = TaskList()
    try:
        out.current, out.current_source = current_tasks(mem, btf, symbols)
    except KdumpkitError as e:
        out.current_source = f"unavailable: {e}"
    w = _Walk(mem, _Layout(btf), cap, out)
    head = init + w.lay.tasks
    leader = init
    try:
        while True:
            if w.full:
                w.stop(f"stopped after {cap} tasks (cap)")
                break
            signal = w.add(leader)
            if threads and signal >= _KERNEL_SPACE and leader != init:
                w.threads(leader, signal)
            nxt = _pointer(mem, leader + w.lay.tasks)
            if nxt == head:
                break
            leader = nxt - w.lay.tasks
            if leader in w.seen:
                w.stop(f"task list loops back to {leader:#x} without reaching init_task")
                w.backward(head, threads)
                break
    except KdumpkitError as e:
        w.stop(f"walk stopped at task {leader:#x}: {e}")
        w.backward(head, threads)
    for cpu, addr in sorted(out.current.items()):
        if addr not in w.seen and not w.full:
            try:
                w.add(addr)
            except KdumpkitError as e:
                w.stop(f"current task of CPU {cpu} at {addr:#x} unreadable: {e}")
    return out
