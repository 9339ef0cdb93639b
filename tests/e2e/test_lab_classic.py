"""E2E: ``kdumpkit load --mode classic`` -- kexec_load with segments and a purgatory kdumpkit built itself.

One boot of the lab (``kdumpkit lab run --capture kdumpkit --load-mode
classic``): the first kernel loads the capture kernel through ``kexec_load``
(:mod:`kdumpkit.kexec.classic`), SysRq-c, the capture kernel boots from our
segments (our purgatory, boot_params, e820 and ``elfcorehdr=<addr>K``),
``kdumpkit capture`` writes the raw disk and the host restores and verifies
the dump.  Its RAM must be what a ``kexec_file_load`` run describes (the
reference set, loaded by ``kexec -p -s``): all System RAM from 1 MiB up, minus
the crash reservation.  Cached per kernel version + kdumpkit source hash
under ``<cache>/lab/e2e-classic/``; trixie only with ``KDUMPKIT_LAB_FULL=1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.dump import open_dump

FULL = os.environ.get("KDUMPKIT_LAB_FULL") == "1"
KERNELS = ["bookworm"] + (["trixie"] if FULL else [])
PAGE = 4096


def _run(kernel: str) -> Any:
    from kdumpkit.lab.cache import LAB_FORMAT_VERSION, lab_dir
    from kdumpkit.lab.kernels import fetch
    from kdumpkit.lab.run import RunResult, run
    from kdumpkit.setup.runtime import runtime_key

    k = fetch(kernel)
    d = lab_dir("e2e-classic") / f"{k.cache_key}-{runtime_key()}-v{LAB_FORMAT_VERSION}"
    if not (d / ".complete").is_file():
        for tool in ("qemu-system-x86_64", "busybox", "apt-get", "dpkg", "strip"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} not installed (make apt installs the lab's tools)")
        shutil.rmtree(d, ignore_errors=True)
        run(k, out=d, capture="kdumpkit", load_mode="classic", timeout=900)
        (d / ".complete").write_text("")
    return RunResult.load(d)


@pytest.fixture(scope="module", params=KERNELS)
def result(request: pytest.FixtureRequest) -> Any:
    return _run(request.param)


@pytest.fixture(scope="module")
def reference(result: Any) -> Any:
    """The kexec_file_load (``kexec -p -s``) reference crash of the same kernel: bookworm's is built if missing,
    the others are used when cached."""
    from kdumpkit.errors import LabError
    from kdumpkit.lab.reference import reference_set

    try:
        return reference_set(result.kernel, build=result.kernel == "bookworm")
    except LabError as e:
        pytest.skip(f"no cached {result.kernel} reference set: {e}")


def _crash_range(console: str) -> tuple[int, int]:
    """The first kernel's reservation, in pages: "Reserving 256MB of memory at 448MB for crashkernel" (<= 6.5)
    or "crashkernel reserved: 0x22000000 - 0x32000000 (256 MB)" (6.6+)."""
    m = re.search(r"Reserving (\d+)MB of memory at (\d+)MB for crashkernel", console)
    if m:
        start = int(m.group(2)) << 20
        return start // PAGE, (start + (int(m.group(1)) << 20)) // PAGE
    n = re.search(r"crashkernel reserved: 0x([0-9a-f]+) - 0x([0-9a-f]+)", console)
    assert n, "no crashkernel reservation in the console log"
    return int(n.group(1), 16) // PAGE, int(n.group(2), 16) // PAGE


def _capture_boot(console: str) -> str:
    """The capture kernel's part of the console log (from its "Command line: elfcorehdr=..." on)."""
    pos = [m.start() for m in re.finditer(r"\] Command line: ", console)]
    tail = console[pos[-1]:]
    assert "elfcorehdr=" in tail.splitlines()[0]
    return tail


def _e820(text: str) -> list[tuple[int, int, str]]:
    return [(int(a, 16), int(b, 16), t) for a, b, t in
            re.findall(r"BIOS-e820: \[mem 0x([0-9a-f]+)-0x([0-9a-f]+)\] (\S+)", text)]


def test_capture_kernel_booted_from_our_segments(result: Any) -> None:
    console = result.console_log.read_text(errors="replace")
    assert "loaded (classic)" in console and "kexec_load segments" in console
    assert re.search(r"0x[0-9a-f]+-0x[0-9a-f]+ +512 bytes .* purgatory  \(entry\)", console)
    start, end = _crash_range(console)
    cap = _capture_boot(console)
    # our boot_params: the command line ends with kexec-tools' elfcorehdr=<KiB>K (kexec_file prepends 0x...)
    m = re.search(r"Command line: .* elfcorehdr=(\d+)K\s*$", cap.splitlines()[0])
    assert m and int(m.group(1)) << 10 == start * PAGE
    # and our e820: the crash range minus the elfcorehdr page is the only RAM above 1 MiB
    usable = [(a, b) for a, b, t in _e820(cap) if t == "usable"]
    assert usable == [(0x1000, 0x9FBFF), (start * PAGE + PAGE, end * PAGE - 1)]
    status = json.loads((result.out / "status.json").read_text())
    assert status["ready"] is True
    assert set(result.timings) >= {"boot", "prepare", "crash", "capture_boot", "capture"}


def test_e820_like_kexec_file(result: Any, reference: Any) -> None:
    """The capture kernel's e820, crash range aside, is the one the kernel's kexec_file gave the reference run.

    Only where the usable part of the crash range starts may differ: it starts
    after the elfcorehdr, which is one page here and in 6.1's kexec_file, but
    on 6.6+ (CONFIG_CRASH_HOTPLUG) kexec_file reserves room for a header that
    hotplug can rewrite (0xe00b0 bytes on trixie).
    """

    def shape(console: str) -> list[tuple[int, int, str]]:
        start, end = _crash_range(console)
        return [(a, b, t) if t != "usable" or a < 1 << 20 else (-1, b - start * PAGE, t)
                for a, b, t in _e820(_capture_boot(console))]

    assert shape(result.console_log.read_text(errors="replace")) == shape(reference.console.read_text(
        errors="replace"))


def test_dump_captured_and_verifies(result: Any) -> None:
    from kdumpkit.cli.main import main

    crash_dir = Path(result.crash_dir)
    manifest = json.loads((crash_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert sorted(p.name for p in crash_dir.iterdir()) == ["dmesg.txt", "kallsyms.gz", "manifest.json", "vmcore"]
    assert main(["verify", str(crash_dir / "vmcore")]) == 0
    with open_dump(str(crash_dir / "vmcore")) as d:
        info = d.vmcoreinfo_raw()
        assert info is not None
        m = re.search(rb"^OSRELEASE=(.*)$", info, re.M)
        assert m and m.group(1).decode() == result.release
    log = (crash_dir / "dmesg.txt").read_text(errors="replace")
    assert "sysrq triggered crash" in log


def _ram(path: Path) -> list[tuple[int, int]]:
    with open_dump(str(path)) as d:
        return [(a, b) for a, b in d.ram_runs()]


def _merge(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(runs):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def test_dump_ram_equals_a_kexec_file_load_run(result: Any, reference: Any) -> None:
    """PT_LOADs: System RAM from 1 MiB up minus the crash range, in our elfcorehdr as in the kernel's own."""
    ours = _ram(Path(result.crash_dir) / "vmcore")
    theirs = _ram(reference.vmcore)
    our_crash = _crash_range(result.console_log.read_text(errors="replace"))
    ref_crash = _crash_range(reference.console.read_text(errors="replace"))
    for runs, crash in ((ours, our_crash), (theirs, ref_crash)):
        assert runs[0][0] == 0x100                                   # the low 1 MiB is left out
        assert all(b <= crash[0] or a >= crash[1] for a, b in runs)  # so is the reservation
    # the crash ranges differ between boots (the first kernel's initramfs differs); put them back and compare
    assert _merge(ours + [our_crash]) == _merge(theirs + [ref_crash])
    assert len(ours) == len(theirs)
