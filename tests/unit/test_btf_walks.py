"""Task and module walks over a synthetic kernel whose layouts come from a synthetic BTF.

Each case writes real list_heads into the synthetic kernel's memory, so the
walks are exercised exactly as on a dump: link following, thread lists, per-CPU
current tasks, both ``struct module`` layouts, and corrupt links/loops that must
stop the walk with a flag instead of raising.
"""

from __future__ import annotations

import pytest
from btfbuild import BtfBuilder

from kdumpkit.analyze.report import build_report, render
from kdumpkit.kernel.btf import Btf
from kdumpkit.kernel.memory import KernelMemory, kernel_memory
from kdumpkit.kernel.modules import mark_crash, walk_modules
from kdumpkit.kernel.symbols import SymbolTable
from kdumpkit.kernel.tasks import state_letter, walk_tasks
from kdumpkit.kernel.testing import SyntheticKernel

TASK_SIZE, SIGNAL_SIZE, MODULE_SIZE = 128, 32, 256
# task_struct layout (bytes): __state 16 (in an anonymous union), on_cpu 20, tasks 32, exit_state 48,
# pid 52, tgid 56, thread_node 64, signal 80, comm 96; signal_struct.thread_head 16
# module: state 0, list 8, name 24 (56 bytes), core_layout 80 / init_layout 96 or mem[3] 80 (16 each)


def _btf(new_modules: bool) -> Btf:
    b = BtfBuilder()
    u32, s32 = b.int("unsigned int", 4), b.int("int", 4, signed=True)
    u64, char = b.int("long unsigned int", 8), b.int("char", 1, signed=True)
    vptr = b.ptr(0)
    lh = b.reserve()
    b.struct("list_head", 16, [("next", b.ptr(lh), 0), ("prev", b.ptr(lh), 64)], at=lh)
    sig = b.struct("signal_struct", SIGNAL_SIZE, [("nr_threads", s32, 0), ("thread_head", lh, 128)])
    anon = b.struct("", 8, [("__state", u32, 0), ("on_cpu", s32, 32)])
    b.struct("task_struct", TASK_SIZE, [
        ("", b.struct("", 8, [("", anon, 0), ("raw", u64, 0)], union=True), 128),
        ("tasks", lh, 256), ("exit_state", s32, 384), ("pid", s32, 416), ("tgid", s32, 448),
        ("thread_node", lh, 512), ("signal", b.ptr(sig), 640), ("comm", b.array(char, 16, u32), 768)])
    state = b.enum("module_state", {"MODULE_STATE_LIVE": 0, "MODULE_STATE_COMING": 1, "MODULE_STATE_GOING": 2})
    head = [("state", state, 0), ("list", lh, 64), ("name", b.array(char, 56, u32), 192)]
    if new_modules:
        b.enum("mod_mem_type", {"MOD_TEXT": 0, "MOD_DATA": 1, "MOD_RODATA": 2, "MOD_MEM_NUM_TYPES": 3})
        mm = b.struct("module_memory", 16, [("base", vptr, 0), ("size", u32, 64)])
        b.struct("module", MODULE_SIZE, [*head, ("mem", b.array(mm, 3, u32), 640)])
    else:
        ml = b.struct("module_layout", 16, [("base", vptr, 0), ("size", u32, 64), ("text_size", u32, 96)])
        b.struct("module", MODULE_SIZE, [*head, ("core_layout", ml, 640), ("init_layout", ml, 768)])
    return Btf.from_bytes(b.blob())


class _Kernel:
    """A synthetic kernel with tasks and modules laid out as :func:`_btf` declares."""

    def __init__(self) -> None:
        self.k = SyntheticKernel()
        self.init = self.k.variable("init_task", TASK_SIZE)
        self.modules_head = self.k.variable("modules", 16)
        self.pcpu = self.k.variable("__per_cpu_offset", 16)
        self.nr = self.k.variable("nr_cpu_ids", 4)
        self.k.write_u32(self.nr, 2)
        self.areas = [self.k.kmalloc(0x1000) for _ in range(2)]
        for cpu, area in enumerate(self.areas):
            self.k.write_ulong(self.pcpu + 8 * cpu, area)
        self.tasks = [self.init]
        self._task(self.init, 0, 0, "swapper/0", 0)
        self._link(self.init + 32, [self.init + 32])
        self._link(self.modules_head, [self.modules_head])

    def _link(self, head: int, nodes: list[int]) -> None:
        for a, b in zip(nodes, nodes[1:] + nodes[:1], strict=True):
            self.k.write_ulong(a, b)
            self.k.write_ulong(b + 8, a)

    def _task(self, addr: int, pid: int, tgid: int, comm: str, state: int, exit_state: int = 0) -> None:
        self.k.write_u32(addr + 16, state)
        self.k.write_u32(addr + 48, exit_state)
        self.k.write_u32(addr + 52, pid)
        self.k.write_u32(addr + 56, tgid)
        self.k.write_virt(addr + 96, comm.encode()[:15].ljust(16, b"\0"))

    def process(self, pid: int, comm: str, state: int, threads: int = 0, exit_state: int = 0,
                align: int = 64) -> list[int]:
        sig = self.k.kmalloc(SIGNAL_SIZE, align)
        group = [self.k.kmalloc(TASK_SIZE, align) for _ in range(threads + 1)]
        for i, t in enumerate(group):
            self._task(t, pid + i, pid, comm, state, exit_state)
            self.k.write_ulong(t + 80, sig)
        self._link(sig + 16, [sig + 16] + [t + 64 for t in group])
        self.tasks.append(group[0])
        self._link(self.init + 32, [t + 32 for t in self.tasks])
        return group

    def module(self, name: str, base: int, size: int, new: bool, state: int = 0) -> int:
        m = self.k.kmalloc(MODULE_SIZE)
        self.k.write_u32(m, state)
        self.k.write_virt(m + 24, name.encode())
        self.k.write_ulong(m + 80, base)
        self.k.write_u32(m + 88, size)
        if not new:
            self.k.write_u32(m + 92, size // 2)  # core_layout.text_size
        self.k.write_ulong(m + 96, base + size)  # init_layout / mem[1]
        self.k.write_u32(m + 104, 0x100)
        return m

    def set_current(self, cpu: int, task: int) -> None:
        self.k.write_ulong(self.areas[cpu] + 0x40, task)

    def mem_and_symbols(self, excluded: tuple[int, ...] = ()) -> tuple[KernelMemory, SymbolTable]:
        """Memory as a dump shows it (``excluded``: virtual addresses whose pages a filter dropped)."""
        rows = [(n, a, "D", None) for n, a in self.k.symbols.items()] + [("current_task", 0x40, "A", None)]
        pfns = [(va - self.k.direct_map) // 4096 for va in excluded]
        return kernel_memory(self.k.dump(excluded=pfns), self.k.vmcoreinfo()), SymbolTable(rows, "test")


def test_state_letters() -> None:
    assert [state_letter(s, 0) for s in (0, 1, 2, 4, 8, 0x40, 0x402, 0x8002, 0x1000)] == list("RSDTtPIDD")
    assert state_letter(0, 0x20) == "Z" and state_letter(0x80, 0x10) == "X"


def test_walk_tasks_threads_and_currents() -> None:
    kk = _Kernel()
    init = kk.process(1, "init", 1)[0]
    worker = kk.process(100, "daemon", 2, threads=2)
    kk.process(200, "idle-kworker", 0x402)
    kk.process(300, "zombie", 0x80, exit_state=0x20)
    idle1 = kk.k.kmalloc(TASK_SIZE)
    kk._task(idle1, 0, 0, "swapper/1", 0)
    kk.set_current(0, init)
    kk.set_current(1, idle1)
    mem, syms = kk.mem_and_symbols()
    tl = walk_tasks(mem, _btf(False), syms)
    assert tl.complete, tl.problem
    got = [(t.pid, t.tgid, t.comm, t.state, t.cpu) for t in tl.tasks]
    assert got == [(0, 0, "swapper/0", "R", None), (1, 1, "init", "S", 0), (100, 100, "daemon", "D", None),
                   (101, 100, "daemon", "D", None), (102, 100, "daemon", "D", None),
                   (200, 200, "idle-kworker", "I", None), (300, 300, "zombie", "Z", None),
                   (0, 0, "swapper/1", "R", 1)]
    assert tl.current == {0: init, 1: idle1} and tl.current_source == "per-CPU current_task"
    assert tl.find(worker[2]) is not None
    capped = walk_tasks(mem, _btf(False), syms, cap=3)
    assert len(capped.tasks) == 3 and not capped.complete and "cap" in (capped.problem or "")


def test_walk_tasks_corrupt_link_and_loop() -> None:
    kk = _Kernel()
    a = kk.process(1, "init", 1)[0]
    b = kk.process(2, "kthreadd", 1)[0]
    kk.process(3, "third", 1)
    kk.k.write_ulong(b + 32, 0x1234)  # b.tasks.next: not a kernel address
    mem, syms = kk.mem_and_symbols()
    tl = walk_tasks(mem, _btf(False), syms)
    assert [t.pid for t in tl.tasks] == [0, 1, 2, 3] and not tl.complete  # 3: from init_task.tasks.prev
    assert "not a kernel address" in (tl.problem or "") and "1 more found" in (tl.problem or "")
    kk.k.write_ulong(b + 32, a + 32)  # b -> a: a loop that never reaches init_task
    kk.k.write_ulong(kk.tasks[3] + 40, kk.tasks[3] + 32)  # and a prev link that loops on itself
    mem, syms = kk.mem_and_symbols()
    tl = walk_tasks(mem, _btf(False), syms)
    assert [t.pid for t in tl.tasks] == [0, 1, 2, 3] and "loops" in (tl.problem or "")


def test_walk_tasks_past_excluded_pages() -> None:
    """A filtered dump without one task's page: the tasks after it come from the backward walk;
    a process whose signal_struct page is missing keeps its place (only its threads are lost)."""
    kk = _Kernel()
    kk.process(1, "init", 1)
    hole = kk.process(2, "gone", 1, align=4096)[0]
    kk.k.kmalloc(4096, 4096)  # nothing else in the hole's page
    kk.process(3, "after", 1)
    kk.process(4, "last", 1)
    mem, syms = kk.mem_and_symbols(excluded=(hole,))
    tl = walk_tasks(mem, _btf(False), syms)
    assert [t.pid for t in tl.tasks] == [0, 1, 3, 4] and not tl.complete
    assert "excluded" in (tl.problem or "") and "2 more found walking the list backwards" in (tl.problem or "")
    kk = _Kernel()
    group = kk.process(1, "init", 1, threads=1, align=4096)
    kk.process(2, "next", 1)
    sig = kk.k.kmalloc(4096, 4096)
    kk.k.write_ulong(group[0] + 80, sig)  # a signal_struct in a page the filter dropped
    mem, syms = kk.mem_and_symbols(excluded=(sig,))
    tl = walk_tasks(mem, _btf(False), syms)
    assert [t.pid for t in tl.tasks] == [0, 1, 2] and "threads of task" in (tl.problem or "")


@pytest.mark.parametrize("new", [False, True])
def test_walk_modules_both_layouts(new: bool) -> None:
    kk = _Kernel()
    m1 = kk.module("virtio_blk", 0xFFFF_FFFF_C000_0000, 0x3000, new)
    m2 = kk.module("crashmod", 0xFFFF_FFFF_C001_0000, 0x2000, new, state=1)
    kk._link(kk.modules_head, [kk.modules_head, m2 + 8, m1 + 8])
    mem, syms = kk.mem_and_symbols()
    mods = walk_modules(mem, _btf(new), syms)
    assert mods.complete and ("mem[" in mods.layout) == new
    assert [(m.name, m.base, m.size, m.state) for m in mods.modules] == [
        ("crashmod", 0xFFFF_FFFF_C001_0000, 0x2100, "coming"), ("virtio_blk", 0xFFFF_FFFF_C000_0000, 0x3100, "live")]
    text_end = 0x2000 if new else 0x1000
    assert mark_crash(mods, pcs=[0xFFFF_FFFF_C001_0000 + text_end - 1]) == ["crashmod"]
    assert mark_crash(mods, names=["virtio-blk"]) == ["crashmod", "virtio_blk"]
    assert [m.crash for m in mods.modules] == [True, True]
    kk.k.write_ulong(m2 + 8, m2 + 8)  # points at itself
    mods = walk_modules(mem, _btf(new), syms)
    assert [m.name for m in mods.modules] == ["crashmod"] and "loops" in (mods.problem or "")


def test_report_without_btf_is_partial() -> None:
    """No kallsyms and no BTF in a synthetic kernel: modules from the log, processes unavailable."""
    k = SyntheticKernel()
    k.lockless_log([], count_bits=5, size_bits=12)
    r = build_report(k.dump())
    j = r.to_json()
    assert set(j["processes"]) == {"unavailable"}
    assert "unavailable" in j["modules"]
    assert "processes" in render(r, "text") and "## processes" in render(r, "markdown")


def test_report_processes_render() -> None:
    """The text renderer on a processes section as the BTF walk makes it."""
    from kdumpkit.analyze.report import Report

    rep = Report()
    task = {"pid": 1, "tgid": 1, "comm": "init", "state": "R", "cpu": 0, "address": "0x1"}
    rep.sections["processes"] = {"count": 3, "states": {"R": 2, "S": 1}, "shown": 1,
                                 "crashing": {**task, "source": "current task of crashing CPU 0"},
                                 "tasks": [{**task, "pid": 2, "comm": "kthreadd", "state": "S", "cpu": None}],
                                 "source": "test", "problem": "stopped"}
    rep.sections["modules"] = {"modules": ["a", "b"], "crash_modules": ["b"], "source": "test"}
    text = render(rep, "text")
    assert ">       1       1 R    0  init" in text and "(1 more not shown)" in text
    assert "a b (crash)" in text and "problem: stopped" in text


def test_load_btf_by_symbols_and_by_scan() -> None:
    """``__start_BTF``/``__stop_BTF`` when kallsyms has them, else a scan of rodata for the header."""
    from kdumpkit.errors import KernelError
    from kdumpkit.kernel.btf import load_btf

    kk = _Kernel()
    b = BtfBuilder()
    b.struct("task_struct", 8, [("pid", b.int("int", 4, signed=True), 32)])
    blob = b.blob()
    rodata = kk.k.variable("__start_rodata", 0x3000)
    at = kk.k.variable("btf_blob", len(blob))
    kk.k.write_virt(rodata + 0x1000, b"\x9f\xeb\x01\x00" + b"\xff" * 20)  # a magic with an implausible header
    kk.k.write_virt(at, blob)
    mem, syms = kk.mem_and_symbols()
    with_syms = SymbolTable([(n, a, "D", None) for n, a in kk.k.symbols.items()]
                            + [("__start_BTF", at, "R", None), ("__stop_BTF", at + len(blob), "R", None)], "t")
    btf, how = load_btf(mem, with_syms)
    assert btf.offsetof("task_struct", "pid") == 4 and "__start_BTF" in how
    btf, how = load_btf(mem, syms)
    assert btf.offsetof("task_struct", "pid") == 4 and "scan of rodata" in how
    with pytest.raises(KernelError, match="BTF not found"):
        load_btf(mem, SymbolTable([("init_task", kk.init, "D", None)], "t"))
