"""Reference dumps: one real crash per kernel, built once, cached, shared.

Tests across kdumpkit compare against these: the raw ELF ``/proc/vmcore`` copy,
makedumpfile's flattened output made inside the guest, and the formats the
host's makedumpfile makes from the ELF copy (made lazily, on first use, since
each costs 0.1–3 s).  The cache key is the kernel package version plus
:data:`~kdumpkit.lab.cache.LAB_FORMAT_VERSION`.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kdumpkit.errors import LabError
from kdumpkit.lab.cache import LAB_FORMAT_VERSION, lab_dir
from kdumpkit.lab.kernels import Kernel, fetch
from kdumpkit.lab.run import RunResult, run

MEM_MB = 1024
CRASHKERNEL = "256M"
SCENARIO = "sysrq"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (pytest workers, other helpers)."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class ReferenceSet:
    """Paths of one reference crash; host-made formats appear on first access."""

    kernel: str            # suite name, e.g. "bookworm"
    package_version: str   # Debian package version of the kernel
    release: str           # uname -r of the crashed kernel (= VMCOREINFO OSRELEASE)
    dir: Path              # the cache directory holding everything below
    kernel_dir: Path       # unpacked kernel package root
    vmlinuz: Path
    config: Path | None
    vmcore: Path           # raw ELF copy of /proc/vmcore
    flat: Path             # makedumpfile -F -c -d 31, run in the capture kernel
    dmesg: Path            # ground truth: dmesg printed right before the crash
    meminfo: Path          # ground truth: /proc/meminfo right before the crash
    console: Path          # the whole serial console log
    run_json: Path         # run.json: timings, sizes, accel

    # -- made on the host from the ELF copy, lazily -------------------------
    @property
    def kdump_c31(self) -> Path:
        """makedumpfile -c -d 31 (kdump-compressed, zlib)."""
        return self._make("kdump-c31", ["-c", "-d", "31"])

    @property
    def kdump_l31(self) -> Path:
        """makedumpfile -l -d 31 (kdump-compressed, lzo)."""
        return self._make("kdump-l31", ["-l", "-d", "31"])

    @property
    def kdump_c0(self) -> Path:
        """makedumpfile -c -d 0 (kdump-compressed, nothing excluded; ~3 s)."""
        return self._make("kdump-c0", ["-c", "-d", "0"])

    @property
    def elf_E31(self) -> Path:  # noqa: N802 - the makedumpfile option is -E
        """makedumpfile -E -d 31 (ELF with excluded pages left out)."""
        return self._make("elf-E31", ["-E", "-d", "31"])

    @property
    def split(self) -> tuple[Path, Path]:
        """makedumpfile --split -c -d 31 into two files."""
        a, b = self.dir / "split-c31.1", self.dir / "split-c31.2"
        if not (a.is_file() and b.is_file()):
            with _locked(self.dir / ".lock"):
                if not (a.is_file() and b.is_file()):
                    ta, tb = a.with_name(a.name + ".tmp"), b.with_name(b.name + ".tmp")
                    _makedumpfile(["--split", "-c", "-d", "31", str(self.vmcore), str(ta), str(tb)], [ta, tb])
                    ta.rename(a)
                    tb.rename(b)
        return a, b

    @property
    def dmesg_makedumpfile(self) -> Path:
        """makedumpfile --dump-dmesg of the ELF copy (the kernel log as the dump holds it)."""
        out = self.dir / "dmesg-makedumpfile.txt"
        if not out.is_file():
            with _locked(self.dir / ".lock"):
                if not out.is_file():
                    tmp = out.with_name(out.name + ".tmp")
                    _makedumpfile(["--dump-dmesg", str(self.vmcore), str(tmp)], [tmp])
                    tmp.rename(out)
        return out

    def run_result(self) -> RunResult:
        return RunResult.load(self.dir)

    def _make(self, name: str, opts: list[str]) -> Path:
        out = self.dir / name
        if not out.is_file():
            with _locked(self.dir / ".lock"):
                if not out.is_file():
                    tmp = out.with_name(out.name + ".tmp")
                    _makedumpfile([*opts, str(self.vmcore), str(tmp)], [tmp])
                    tmp.rename(out)
        return out


def _makedumpfile(args: list[str], outputs: list[Path]) -> None:
    if shutil.which("makedumpfile") is None:
        raise LabError("makedumpfile not found on the host (make apt)")
    for o in outputs:
        o.unlink(missing_ok=True)
    p = subprocess.run(["makedumpfile", *args], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LabError(f"makedumpfile {' '.join(args[:-len(outputs) - 1])} failed: {last}")


def _set_dir(k: Kernel) -> Path:
    return lab_dir("reference") / f"{k.name}-{k.package_version}-v{LAB_FORMAT_VERSION}"


def _from_dir(k: Kernel, d: Path) -> ReferenceSet:
    r = RunResult.load(d)
    return ReferenceSet(k.name, k.package_version, r.release, d, k.root, k.vmlinuz, k.config,
                        d / "vmcore", d / "dump.flat", d / "dmesg.txt", d / "meminfo.txt",
                        d / "console.log", d / "run.json")


def reference_set(kernel: str = "bookworm", *, build: bool = True, timeout: float = 900) -> ReferenceSet:
    """The cached reference crash of ``kernel`` (a suite name), building it if needed.

    Scenario sysrq, 1024 MiB guest, crashkernel=256M, capture makedumpfile.
    With ``build=False`` a missing set raises :class:`LabError` instead of
    booting QEMU (about a minute with TCG).
    """
    k = fetch(kernel)
    d = _set_dir(k)
    if (d / ".complete").is_file():
        return _from_dir(k, d)
    if not build:
        raise LabError(f"no cached reference set for {kernel} ({k.package_version}); run `kdumpkit lab demo`")
    with _locked(lab_dir("reference") / f".{kernel}.lock"):
        if not (d / ".complete").is_file():
            tmp = d.with_name(d.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                run(k, out=tmp, mem_mb=MEM_MB, crashkernel=CRASHKERNEL, scenario=SCENARIO,
                    capture="makedumpfile", timeout=timeout)
            except BaseException:
                # ~1 GB of half-made outputs; a LabError names the console log's kept copy.
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            (tmp / ".complete").write_text(f"{k.package_version} v{LAB_FORMAT_VERSION}\n")
            shutil.rmtree(d, ignore_errors=True)
            tmp.rename(d)
            # run.json records where the run was written; point it at the final place.
            r = RunResult.load(d)
            r.out = d
            import json

            (d / "run.json").write_text(json.dumps(r.to_json(), indent=2) + "\n")
    return _from_dir(k, d)
