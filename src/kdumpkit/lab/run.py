"""One lab cycle: boot, prepare, crash, capture, extract.

``run()`` is what ``kdumpkit lab run`` and the reference set call.  It boots
the chosen kernel in QEMU with three sparse virtio disks (``vda`` workload
page cache, ``vdb`` raw ``/proc/vmcore``, ``vdc`` makedumpfile flattened
output), watches the console for the guest's markers, and writes the results
into ``out``.  Anything that goes wrong is a :class:`LabError` naming the
console log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kdumpkit.errors import LabError
from kdumpkit.lab import console, extract
from kdumpkit.lab.cache import LAB_FORMAT_VERSION
from kdumpkit.lab.initramfs import build as build_initramfs
from kdumpkit.lab.kernels import Kernel
from kdumpkit.lab.kernels import get as get_kernel
from kdumpkit.lab.qemu import VM, VMConfig, choose_accel

SCENARIOS = ("sysrq", "oops", "nmi", "softlockup", "panic_on_oom")
CAPTURES = ("makedumpfile", "raw", "kdumpkit", "kdumpkit-save")
WORKLOAD_DISK_MB = 64


@dataclass
class RunResult:
    """Where a run's outputs are, and what it measured."""

    out: Path
    kernel: str
    package_version: str
    release: str
    scenario: str
    capture: str
    accel: str
    mem_mb: int
    crashkernel: str
    timings: dict[str, float] = field(default_factory=dict)
    vmcore_size: int = 0
    flat_size: int | None = None
    lab_format: int = LAB_FORMAT_VERSION
    crash_dir: str | None = None   # --capture kdumpkit: the folder `kdumpkit restore-raw` made
    initramfs: dict[str, int] | None = None  # --capture kdumpkit: capture initramfs sizes

    @property
    def vmcore(self) -> Path:
        return self.out / "vmcore"

    @property
    def flat(self) -> Path | None:
        return self.out / "dump.flat" if self.flat_size is not None else None

    @property
    def console_log(self) -> Path:
        return self.out / "console.log"

    @property
    def dmesg(self) -> Path:
        return self.out / "dmesg.txt"

    @property
    def meminfo(self) -> Path:
        return self.out / "meminfo.txt"

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d

    @classmethod
    def load(cls, out: Path) -> RunResult:
        d = json.loads((out / "run.json").read_text())
        d["out"] = out
        return cls(**d)


def parse_crashkernel_mb(value: str) -> int:
    m = re.fullmatch(r"(\d+)([MG])", value.strip().upper())
    if not m:
        raise LabError(f"crashkernel must look like 256M or 1G, not {value!r}")
    return int(m.group(1)) * (1024 if m.group(2) == "G" else 1)


def _sparse_disk(path: Path, size_mb: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size_mb << 20)


def run(kernel: str | Kernel = "bookworm", *, out: str | os.PathLike[str], mem_mb: int = 1024,
        crashkernel: str = "256M", scenario: str = "sysrq", capture: str = "makedumpfile",
        timeout: float = 600, accel: str = "auto", smp: int = 2,
        on_line: Callable[[console.Line], None] | None = None, capture_config: str | None = None,
        capture_modules: tuple[str, ...] = (), live: bool = False, load_mode: str = "file",
        network: bool = False) -> RunResult:
    """Run one crash cycle and write its outputs into ``out``.

    A :class:`LabError` after QEMU started says which phase failed and names
    a copy of the console log that outlives ``out`` (:func:`kept_failure`).

    Outputs: ``vmcore`` (ELF copy of /proc/vmcore), ``dump.flat`` (makedumpfile
    ``-F -c -d 31`` run in the capture kernel), ``console.log``, ``dmesg.txt``
    and ``meminfo.txt`` (ground truth printed by the first kernel right before
    the crash) and ``run.json``.  ``on_line`` sees each console line as it
    arrives (for live output).  With ``capture="kdumpkit"``, ``capture_config``
    (TOML) replaces the lab's capture configuration and ``capture_modules`` go
    into the capture initramfs too (``kdumpkit test``).  With ``live`` (needs
    ``capture="kdumpkit"``: the guest has kdumpkit) the guest first runs
    ``kdumpkit live -d 31 -l`` and ``kdumpkit estimate /proc/kcore`` on
    itself; outputs ``live.vmcore``, the guest's dmesg right before and after
    it (``live-dmesg-before.txt``, ``live-dmesg-after.txt``), the estimate
    (``live-estimate.json``) and ``/proc/meminfo`` right after it.  ``load_mode`` is ``kdumpkit load --mode`` in the
    guest (``capture="kdumpkit"``): ``file`` (kexec_file_load) or ``classic`` (kexec_load).
    ``network`` gives the guest a virtio-net NIC on QEMU's user-mode network
    (the host's loopback is 10.0.2.2), for ssh and nfs targets; the raw disk
    may then hold no dump (``crash_dir`` None: the dump went over the network).
    With ``capture="kdumpkit-save"`` kexec-tools loads the lab image with the
    Python runtime inside, and the capture kernel runs ``kdumpkit save -F -l
    -d 31 /proc/vmcore`` itself (the makedumpfile drop-in): ``dump.flat`` is
    its output.
    """
    if scenario not in SCENARIOS:
        raise LabError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    if capture not in CAPTURES:
        raise LabError(f"unknown capture {capture!r}; known: {', '.join(CAPTURES)}")
    if live and capture != "kdumpkit":
        raise LabError("a live dump in the guest needs --capture kdumpkit (the guest then has kdumpkit)")
    if load_mode not in ("file", "classic"):
        raise LabError(f"unknown load mode {load_mode!r}; known: file, classic")
    ck_mb = parse_crashkernel_mb(crashkernel)
    if ck_mb >= mem_mb:
        raise LabError(f"crashkernel={crashkernel} does not fit in {mem_mb} MiB")
    k = kernel if isinstance(kernel, Kernel) else get_kernel(kernel)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    for name in ("vmcore", "dump.flat", "dmesg.txt", "meminfo.txt", "run.json", "status.json", "live.vmcore",
                 "live-dmesg-before.txt", "live-dmesg-after.txt", "live-estimate.json", "live-meminfo.txt"):
        (outdir / name).unlink(missing_ok=True)
    shutil.rmtree(outdir / "crash", ignore_errors=True)
    log = outdir / "console.log"
    accel_used = choose_accel(accel)
    extra_modules: list[str] = []
    extra_files: dict[str, Path] = {}
    if scenario in ("oops", "softlockup"):
        from kdumpkit.lab.crashmod import crash_module

        extra_files["lib/modules/lab/kdumpkit_lab_crash.ko"] = crash_module(k)

    sizes: dict[str, int] | None = None
    capture_initrd = runtime = None
    if capture in ("kdumpkit", "kdumpkit-save"):
        from kdumpkit.lab.capture_images import capture_images

        ci = capture_images(k, config_text=capture_config, modules=tuple(capture_modules))
        runtime, sizes = ci.runtime.read_bytes(), ci.sizes
        if capture == "kdumpkit":
            capture_initrd = ci.capture_initrd.read_bytes()

    vm: VM | None = None  # once QEMU has started, a failure keeps its console log
    extracting = False
    try:
        with tempfile.TemporaryDirectory(prefix="kdumpkit-lab-") as tmp:
            work = Path(tmp)
            images = build_initramfs(k, work, extra_modules, extra_files, capture_initrd=capture_initrd,
                                     runtime=runtime, runtime_in_capture=capture == "kdumpkit-save")
            disks = [work / "workload.img", work / "raw.img", work / "flat.img"]
            _sparse_disk(disks[0], WORKLOAD_DISK_MB)
            _sparse_disk(disks[1], mem_mb + 64)
            _sparse_disk(disks[2], mem_mb + 64)
            cmdline = (f"console=ttyS0 crashkernel={crashkernel} panic=1 rdinit=/init "
                       f"kdumpkit_lab.scenario={scenario} kdumpkit_lab.capture={capture} kdumpkit_lab.mem_mb={mem_mb}")
            if scenario == "softlockup":
                cmdline += " softlockup_panic=1"
            if live:
                cmdline += " kdumpkit_lab.live=1"
            if load_mode != "file":
                cmdline += f" kdumpkit_lab.load_mode={load_mode}"
            vm = VM(VMConfig(k.vmlinuz, images.initrd, cmdline, mem_mb, disks, accel_used, smp, network=network), log)
            vm.on_line = on_line
            vm.start(work)
            shutil.copyfile(work / "qemu.cmd", outdir / "qemu.cmd")
            try:
                info = _watch(vm, timeout, log)
            finally:
                vm.kill()
            lines = vm.lines
            extracting = True
            t_extract = time.monotonic()
            expected = int(info["vmcore-size"]) if "vmcore-size" in info else None
            crash_dir: str | None = None
            flat_size: int | None = None
            if capture == "kdumpkit" and network and not _holds_raw_dump(disks[1]):
                vmcore_size = 0  # the dump went to an ssh/nfs target
            elif capture == "kdumpkit":
                crash_dir, vmcore_size = _restore(disks[1], outdir / "crash", log)
            else:
                vmcore_size = extract.extract_elf(disks[1], outdir / "vmcore", expected)
            if capture in ("makedumpfile", "kdumpkit-save"):
                flat_size = extract.extract_flat(disks[2], outdir / "dump.flat")
            if live:
                live_size = int(info.get("live-size", "0"))
                if live_size <= 0:
                    raise LabError("the guest reported no live dump size", str(log))
                extract.sparse_copy(disks[2], outdir / "live.vmcore", live_size)
            timings = console.phase_times(lines)
            timings["extract"] = round(time.monotonic() - t_extract, 2)
            timings["total"] = round(lines[-1].t if lines else 0.0, 2)

        texts = [ln.text for ln in lines]
        dmesg = console.block(texts, "dmesg")
        meminfo = console.block(texts, "meminfo")
        if dmesg is None or meminfo is None:
            raise LabError("ground truth (dmesg/meminfo) missing from the console", str(log))
        (outdir / "dmesg.txt").write_text(dmesg)
        (outdir / "meminfo.txt").write_text(meminfo)
        for name, suffix in (("live-dmesg-before", "txt"), ("live-dmesg-after", "txt"), ("live-estimate", "json"),
                             ("live-meminfo", "txt")):
            text = console.block(texts, name)
            if text is not None:
                (outdir / f"{name}.{suffix}").write_text(text)
        status = console.block(texts, "status")
        if status is not None:
            (outdir / "status.json").write_text(status)
        result = RunResult(outdir, k.name, k.package_version, info.get("release", ""), scenario, capture,
                           accel_used, mem_mb, crashkernel, timings, vmcore_size, flat_size, crash_dir=crash_dir,
                           initramfs=sizes)
        (outdir / "run.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    except LabError as e:
        if vm is None:
            raise
        raise kept_failure(e, vm, log, f"{k.name}-{scenario}-{capture}", extracting) from None
    return result


#: The phase a run is in after each guest marker (console.PHASES, plus the host's steps).
_PHASE_AFTER = {"boot-done": "prepare", "trigger": "crash", "capture-start": "capture", "capture-done": "shutdown"}


def failed_phase(lines: list[console.Line], extracting: bool = False) -> str:
    """The phase a failing run was in: boot, prepare, crash, capture_boot, capture, shutdown, extract."""
    if extracting:
        return "extract"
    phase = "boot"
    for ln in lines:
        m = console.marker(ln.text)
        if m and "phase" in m:
            phase = _PHASE_AFTER.get(m["phase"], phase)
        elif phase == "crash" and "Linux version" in ln.text:
            phase = "capture_boot"  # the capture kernel's first line
    return phase


def kept_failure(err: LabError, vm: VM, log: Path, what: str, extracting: bool) -> LabError:
    """``err`` restated in one line with the failed phase, naming a console log that is kept.

    The run's own files may be in a temporary directory (``lab demo``, the
    reference build, ``estimate-crashkernel``) that is deleted before the
    error is read, so the console log and QEMU's command line are copied to
    ``<cache>/lab/failed/<time>-<what>-*/`` first.
    """
    from kdumpkit.lab.cache import failed_dir

    phase = failed_phase(vm.lines, extracting)
    reason = str(err.args[0]) if err.args else "failed"
    keep = failed_dir(what)
    kept_log = keep / "console.log"
    if log.is_file():
        shutil.copyfile(log, kept_log)
    else:
        kept_log.write_text("(QEMU wrote no console output)\n")
    cmd = log.parent / "qemu.cmd"
    if cmd.is_file():
        shutil.copyfile(cmd, keep / "qemu.cmd")
    msg = f"lab run {what} failed in phase {phase}: {reason}"
    (keep / "error.txt").write_text(msg + "\n")
    return LabError(msg, str(kept_log))


def _holds_raw_dump(disk: Path) -> bool:
    """Whether kdumpkit's raw target header is on ``disk``."""
    from kdumpkit.capture.targets import RAW_MAGIC

    with open(disk, "rb") as f:
        return f.read(len(RAW_MAGIC)) == RAW_MAGIC


def _restore(disk: Path, dest: Path, log: Path) -> tuple[str, int]:
    """``kdumpkit restore-raw`` of the raw disk: (crash folder, vmcore size)."""
    from kdumpkit.capture.rawrestore import restore_raw
    from kdumpkit.errors import KdumpkitError

    try:
        r = restore_raw(str(disk), str(dest), wipe=False)
    except KdumpkitError as e:
        raise LabError(f"restoring the raw target: {e}", str(log)) from None
    if not r.complete:
        raise LabError(f"the raw target holds an incomplete dump ({r.folder})", str(log))
    return r.folder, r.vmcore_size


def _watch(vm: VM, timeout: float, log: Path) -> dict[str, str]:
    """Follow the console until the capture is done; the markers' key/values."""
    info: dict[str, str] = {}
    seen = 0
    nmi_sent = False
    while True:
        for ln in vm.wait_lines(seen, 0.5):
            seen += 1
            m = console.marker(ln.text)
            if not m:
                continue
            if "fail" in m:
                raise LabError(f"guest: {m['fail']}", str(log))
            if m.get("phase") == "boot-done" and "release" in m:
                info["release"] = m["release"]
            if m.get("request") == "nmi" and not nmi_sent:
                time.sleep(1)
                vm.qmp("inject-nmi")
                nmi_sent = True
            for k, v in m.items():
                info.setdefault(k, v) if k != "phase" else None
            if m.get("phase") == "capture-done":
                rc = vm.finish(30)
                if rc != 0:
                    raise LabError(f"QEMU exited with {rc} after the capture", str(log))
                return info
        if not vm.running() and len(vm.lines) <= seen:
            vm.finish(5)
            raise LabError(f"guest stopped before the capture finished (last phase: {console.last_phase(vm.lines)})",
                           str(log))
        if vm.elapsed() > timeout:
            raise LabError(f"timed out after {timeout:.0f}s (last phase: {console.last_phase(vm.lines)})", str(log))


def copy_run(src: Path, dst: Path) -> None:
    """Copy a run's outputs (sparse files stay sparse with cp)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
