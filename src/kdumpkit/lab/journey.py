"""The administrator's journey on a real installed Debian system, timed phase by phase.

``kdumpkit lab system --suite bookworm --out DIR`` boots a copy-on-write
overlay of the cached installed system (:mod:`kdumpkit.lab.sysimage`) through
its own GRUB, with two harness disks: the lab disk (label ``KDUMPKITLAB``:
the wheelhouse and the :data:`GUEST_SCRIPT` the image's boot hook runs) and
an empty results disk.  Across the guest's own reboots the script walks:

    install (venv + pip from the wheelhouse) → ``kdumpkit setup`` → reboot →
    kdumpkit-load.service loads at boot, ``kdumpkit status`` → SysRq-c →
    the capture kernel mounts /var/crash's filesystem by UUID and saves
    dmesg.txt, the dump and the manifest → final action reboot →
    kdumpkit-report.service writes the report → results tarred → poweroff

Nothing of kdump is done by the harness: the crashkernel= the second boot
uses is what ``setup`` wrote into GRUB's configuration, the capture kernel is
loaded by the unit ``setup`` enabled, the dump lands where the configuration
says.  The guest prints ``lab-journey: …`` lines (and the capture initramfs
its ``kdumpkit-init: …`` lines) on the serial console; their host-side times
make the phase table of ``DIR/journey.json``.  A failure names the phase and
the console log, which stays in ``DIR``.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdumpkit.errors import LabError
from kdumpkit.lab.qemu import VM, VMConfig, choose_accel
from kdumpkit.lab.sysimage import LAB_LABEL, SUITE_PYTHON, base_image, run_tool
from kdumpkit.lab.wheelhouse import build_wheelhouse

Log = Callable[[str], None]
#: Storage layouts and administrator actions (``--variant``): how the system disk is attached, and
#: shell functions the guest script calls before setup (``pre_setup``) and after the report (``after_report``).
VARIANT_HOOKS: dict[str, str] = {
    "default": "",
    "nvme": "",
    "sata": "",
    "xfs": """pre_setup() {  # /var/crash on its own XFS filesystem, as an admin would add it
    mkfs.xfs -q -f -L dumps /dev/disk/by-id/virtio-dumps && mkdir -p /var/crash &&
        echo 'LABEL=dumps /var/crash xfs defaults 0 2' >>/etc/fstab && mount /var/crash
}
""",
    "undo": """after_report() {  # kdumpkit setup --undo: boot entry, units and files back to what they were
    kdumpkit setup --undo --json >$ST/undo.json 2>$ST/undo.err || { mark "fail phase=undo reason=$(tail -n 1 $ST/undo.err)"; return; }
    left=""
    for f in /etc/default/grub.d/kdumpkit.cfg /etc/systemd/system/kdumpkit-load.service \
             /etc/systemd/system/kdumpkit-report.service /etc/kernel/postinst.d/zz-kdumpkit \
             /etc/sysctl.d/90-kdumpkit.conf; do
        [ -e "$f" ] && left="$left $f"
    done
    ls /var/lib/kdumpkit/initrd.img-* >/dev/null 2>&1 && left="$left capture-initramfs"
    grep -q crashkernel /boot/grub/grub.cfg && left="$left grub.cfg:crashkernel"
    systemctl -q is-enabled kdumpkit-load.service 2>/dev/null && left="$left enabled:kdumpkit-load"
    [ -z "$left" ] && mark "phase=undo ok" || mark "fail phase=undo reason=left:$left"
}
""",
}
VARIANTS = tuple(VARIANT_HOOKS)

#: What each kdump tool does in the guest script: install, configure, the unit that loads the
#: capture kernel at boot, its status command, and what happens after the capture reboot.
TOOL_HOOKS: dict[str, str] = {
    "kdumpkit": """LOAD_UNIT=kdumpkit-load.service
tool_install() {  # the README's way: a venv and the wheelhouse (Debian 13: python3-lzo from Debian)
    flags=""; python3 -c "import lzo" 2>/dev/null && flags=--system-site-packages
    python3 -m venv $flags /opt/kdumpkit &&
        /opt/kdumpkit/bin/pip install --no-index --find-links $LAB/wheelhouse kdumpkit &&
        ln -sf /opt/kdumpkit/bin/kdumpkit /usr/local/sbin/kdumpkit
}
tool_setup() { kdumpkit setup --json; }
tool_status() { kdumpkit status --json; }
tool_after_capture() {  # kdumpkit-report.service writes report.txt next to the dump
    i=0
    while [ $i -lt 900 ]; do
        s=$(systemctl show -p ActiveState --value kdumpkit-report.service)
        ran=$(systemctl show -p ExecMainExitTimestampMonotonic --value kdumpkit-report.service)
        [ "$s" != activating ] && [ "${ran:-0}" != 0 ] && break
        sleep 1; i=$((i + 1))
    done
}
""",
    "kdump-tools": """LOAD_UNIT=kdump-tools.service
tool_install() { dpkg -s kdump-tools | grep '^Version'; }  # installed with the image, as apt would
tool_setup() {  # Debian's documented steps: USE_KDUMP=1, crashkernel= from its grub drop-in
    sed -i 's/^USE_KDUMP=.*/USE_KDUMP=1/' /etc/default/kdump-tools && update-grub
}
tool_status() { kdump-config status; }
tool_after_capture() { :; }  # kdump-tools writes no report
""",
}
TOOLS = tuple(TOOL_HOOKS)
#: Image differences per tool: packages installed after the kernel (kdump-tools' kernel hook would
#: otherwise run mkinitramfs in the chroot and fail).  makedumpfile is only a Recommends of Debian 12's
#: kdump-tools: without it (apt --no-install-recommends, mmdebstrap's default) kdump-tools "saves" a
#: 0-byte dump and says "saved vmcore" (measured in this lab); named here so the comparison is fair.
TOOL_IMAGE: dict[str, dict[str, tuple[str, ...]]] = {"kdump-tools": {"late_packages": ("kdump-tools", "makedumpfile")}}
MEM_MB = 2560  # the default crashkernel= table (2G-64G:256M) reserves from 2 GiB of RAM on
RESULTS_SERIAL = "labresults"
TOTAL_TIMEOUT = 2400
SILENCE_TIMEOUT = 900  # no console line for this long: the guest hangs

GUEST_SCRIPT = r"""#!/bin/sh
# kdumpkit lab journey: run by the installed system's boot hook at every boot.
LAB=/run/kdumpkit-lab
ST=/var/lib/kdumpkit-lab
RESULTS=/dev/disk/by-id/virtio-@RESULTS@
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p $ST
mark() { echo "lab-journey: $* uptime=$(cut -d' ' -f1 /proc/uptime)" >/dev/ttyS0; echo "$(date +%s) $*" >>$ST/log; }
collect() {
    journalctl -b --no-pager -u kdumpkit-load.service -u kdumpkit-report.service >$ST/journal.txt 2>&1
    cp /proc/cmdline $ST/cmdline.txt 2>/dev/null
    cp -r /etc/default/grub.d $ST/grub.d 2>/dev/null
    grep -h crashkernel /boot/grub/grub.cfg >$ST/grub-cfg-crashkernel.txt 2>/dev/null
    ls -la /var/lib/kdumpkit >$ST/var-lib-kdumpkit.txt 2>&1
    ls -laR /var/crash >$ST/var-crash-ls.txt 2>&1
    systemd-analyze blame --no-pager >$ST/blame.txt 2>&1
    i=0; while [ ! -b $RESULTS ] && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
    tar -C / -cf $RESULTS var/crash var/lib/kdumpkit-lab && sync
}
finish() { collect; mark "phase=poweroff"; systemctl poweroff; sleep 120; poweroff -f; }
fail() { mark "fail phase=$1 reason=$2"; finish; exit 1; }
boots=$(($(cat $ST/boots 2>/dev/null || echo 0) + 1)); echo $boots >$ST/boots
state=$(cat $ST/state 2>/dev/null || echo install)
mark "boot n=$boots state=$state kernel=$(uname -r)"
[ -e $LAB/tool.sh ] && . $LAB/tool.sh
[ -e $LAB/variant.sh ] && . $LAB/variant.sh
case $state in
install)
    mark "phase=install start"
    tool_install >$ST/install.log 2>&1 || fail install "$(tail -n 1 $ST/install.log)"
    mark "phase=install done"
    command -v pre_setup >/dev/null && { pre_setup || fail pre-setup "variant step failed"; }
    mark "phase=setup start"
    tool_setup >$ST/setup.out 2>$ST/setup.err || fail setup "$(tail -n 1 $ST/setup.err)"
    mark "phase=setup done"
    echo armed >$ST/state; sync
    mark "phase=reboot"
    systemctl reboot
    ;;
armed)
    i=0
    while [ $i -lt 900 ]; do
        s=$(systemctl show -p ActiveState --value $LOAD_UNIT)
        case $s in active|failed|inactive) [ "$s" != inactive ] || [ $i -gt 60 ] && break ;; esac
        sleep 1; i=$((i + 1))
    done
    mark "phase=loaded unit=$s crash_size=$(cat /sys/kernel/kexec_crash_size) loaded=$(cat /sys/kernel/kexec_crash_loaded)"
    tool_status >$ST/status.out 2>$ST/status.err
    mark "phase=status rc=$?"
    [ "$(cat /sys/kernel/kexec_crash_loaded)" = 1 ] || fail load "capture kernel not loaded (unit $s)"
    echo crashed >$ST/state; date +%s >$ST/crash-epoch; sync
    mark "phase=crash"
    echo c >/proc/sysrq-trigger
    sleep 60; fail crash "still running after SysRq-c"
    ;;
crashed)
    mark "phase=back"
    newest=$(find /var/crash -type f -printf '%T@\n' 2>/dev/null | sort -n | tail -n 1)
    mark "phase=files crash_epoch=$(cat $ST/crash-epoch) newest=${newest%.*} count=$(find /var/crash -type f | wc -l)"
    tool_after_capture
    mark "phase=report files=$(ls /var/crash/*/report.txt 2>/dev/null | wc -l)"
    command -v after_report >/dev/null && after_report
    echo done >$ST/state
    finish
    ;;
*)
    finish
    ;;
esac
"""

#: (phase, marker that starts it, marker that ends it) in journey order.
PHASES = (
    ("first-boot", "qemu-start", "boot n=1"),
    ("install", "phase=install start", "phase=install done"),
    ("setup", "phase=setup start", "phase=setup done"),
    ("reboot", "phase=reboot", "boot n=2"),
    ("load-at-boot", "boot n=2", "phase=loaded"),
    ("crash-to-capture-start", "phase=crash", "kdumpkit-init: phase=capture-start"),
    ("capture", "kdumpkit-init: phase=capture-start", "kdumpkit-init: phase=capture-done"),
    ("panic-to-dump-on-disk", "phase=crash", "kdumpkit-init: phase=capture-done"),
    ("reboot-after-capture", "kdumpkit-init: phase=capture-done", "boot n=3"),
    ("report", "boot n=3", "phase=report"),
    ("total", "qemu-start", "phase=poweroff"),
)
#: Rows of :data:`PHASES` that span others (not a step a hang can be "in").
SPANS = frozenset({"panic-to-dump-on-disk", "total"})


@dataclass
class Journey:
    """What ``DIR/journey.json`` holds."""

    suite: str
    variant: str
    tool: str
    out: Path
    result: str = "fail"
    failed_phase: str | None = None
    reason: str = ""
    release: str = ""
    accel: str = ""
    mem_mb: int = MEM_MB
    markers: list[tuple[float, str]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    crash_dirs: list[str] = field(default_factory=list)
    files: dict[str, dict[str, int | str]] = field(default_factory=dict)
    crashkernel: str = ""
    image_build_seconds: float = 0.0

    @property
    def console_log(self) -> Path:
        return self.out / "console.log"

    def to_json(self) -> dict[str, Any]:
        return {"result": self.result, "suite": self.suite, "variant": self.variant, "tool": self.tool,
                "failed_phase": self.failed_phase, "reason": self.reason, "release": self.release,
                "accel": self.accel, "mem_mb": self.mem_mb, "crashkernel": self.crashkernel,
                "phases": self.phases, "crash_dirs": self.crash_dirs, "files": self.files,
                "console_log": str(self.console_log), "image_build_seconds": self.image_build_seconds,
                "markers": [{"t": t, "line": line} for t, line in self.markers]}


def guest_script() -> str:
    return GUEST_SCRIPT.replace("@RESULTS@", RESULTS_SERIAL)


def phase_table(markers: list[tuple[float, str]]) -> list[dict[str, Any]]:
    """Start, end and duration of each of :data:`PHASES` whose markers were seen."""
    def first(prefix: str) -> float | None:
        return next((t for t, line in markers if line.startswith(prefix)), None)

    rows = []
    for name, start, end in PHASES:
        t0, t1 = first(start), first(end)
        if t0 is not None and t1 is not None and t1 >= t0:
            rows.append({"name": name, "start": round(t0, 1), "end": round(t1, 1), "seconds": round(t1 - t0, 1)})
    files = next((line for _t, line in markers if line.startswith("phase=files")), "")
    got = dict(re.findall(r"(\w+)=(\d+)", files))
    if not any(r["name"] == "panic-to-dump-on-disk" for r in rows) and "crash_epoch" in got and "newest" in got:
        # A tool without console markers in its capture kernel: the guest's clock, from the crash to its
        # newest file in /var/crash (whole seconds).
        rows.append({"name": "panic-to-dump-on-disk", "seconds": float(int(got["newest"]) - int(got["crash_epoch"])),
                     "clock": "guest"})
    return rows


def _marker(text: str) -> str | None:
    """The marker part of a console line (``lab-journey: …`` or ``kdumpkit-init: …``), or None."""
    for tag in ("lab-journey: ", "kdumpkit-init: "):
        i = text.find(tag)
        if i >= 0:
            body = re.sub(r"\s*uptime=\S+$", "", text[i + len(tag):].strip())
            return body if tag == "lab-journey: " else "kdumpkit-init: " + body
    return None


def make_lab_disk(path: Path, content: Path) -> None:
    """An ext4 image labelled :data:`LAB_LABEL` holding ``content`` (mkfs.ext4 -d: no loop device)."""
    size_mb = max(64, int(sum(p.stat().st_size for p in content.rglob("*") if p.is_file()) * 1.3) // (1 << 20) + 32)
    with open(path, "wb") as f:
        f.truncate(size_mb << 20)
    run_tool(["mkfs.ext4", "-q", "-F", "-L", LAB_LABEL, "-d", str(content), str(path)], "mkfs.ext4 (lab disk)",
             timeout=300)


def overlay(base: Path, path: Path) -> None:
    run_tool(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(path)],
             "qemu-img create", timeout=120)


def system_drives(variant: str, disk: Path, work: Path) -> list[str]:
    """QEMU arguments attaching the system disk (and a variant's extra disks) the way ``variant`` has it."""
    if variant not in VARIANT_HOOKS:
        raise LabError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    drive = ["-drive", f"file={disk},if=none,id=sysdisk,format=qcow2,cache=unsafe"]
    if variant == "nvme":
        return [*drive, "-device", "nvme,drive=sysdisk,serial=sysdisk,bootindex=0"]
    if variant == "sata":
        return [*drive, "-device", "ahci,id=ahci0", "-device", "ide-hd,drive=sysdisk,bus=ahci0.0,bootindex=0"]
    args = [*drive, "-device", "virtio-blk-pci,drive=sysdisk,bootindex=0"]
    if variant == "xfs":
        dumps = work / "dumps.img"
        with open(dumps, "wb") as f:
            f.truncate(4 << 30)
        args += ["-drive", f"file={dumps},if=none,id=dumps,format=raw,cache=unsafe",
                 "-device", "virtio-blk-pci,drive=dumps,serial=dumps"]
    return args


def extract_results(results: Path, out: Path) -> None:
    """The guest's tar of /var/crash and the journey's state, written on the raw results disk."""
    with tarfile.open(results, "r:") as tar:
        tar.extractall(out / "guest-tar", filter="data")
    base = out / "guest-tar"
    if (base / "var/crash").is_dir():
        shutil.rmtree(out / "var-crash", ignore_errors=True)
        shutil.move(str(base / "var/crash"), out / "var-crash")
    if (base / "var/lib/kdumpkit-lab").is_dir():
        shutil.rmtree(out / "guest", ignore_errors=True)
        shutil.move(str(base / "var/lib/kdumpkit-lab"), out / "guest")
    shutil.rmtree(base, ignore_errors=True)


def _watch(vm: VM, j: Journey, t_start: float, log: Log) -> None:
    seen = 0
    last = time.monotonic()
    deadline = t_start + TOTAL_TIMEOUT
    while True:
        lines = vm.wait_lines(seen, 5)
        seen += len(lines)
        if lines:
            last = time.monotonic()
        for ln in lines:
            m = _marker(ln.text)
            if m is None:
                continue
            j.markers.append((round(ln.t, 1), m))
            log(f"[{ln.t:7.1f} s] {m}")
            if m.startswith("fail phase=") and j.failed_phase is None:
                fields = dict(re.findall(r"(\w+)=(\S+)", m.split(" reason=")[0]))
                j.failed_phase = fields.get("phase", "?")
                j.reason = m.split(" reason=", 1)[1] if " reason=" in m else m
            elif m.startswith("kdumpkit-init: fail") and j.failed_phase is None:
                j.failed_phase, j.reason = "capture", m
        if not vm.running():
            return
        now = time.monotonic()
        if now > deadline or now - last > SILENCE_TIMEOUT:
            j.failed_phase = j.failed_phase or _current_phase(j.markers)
            j.reason = j.reason or (f"no console output for {SILENCE_TIMEOUT} s" if now - last > SILENCE_TIMEOUT
                                    else f"not finished after {TOTAL_TIMEOUT} s")
            vm.kill()
            return


def _current_phase(markers: list[tuple[float, str]]) -> str:
    """The phase the guest was in at its last marker (for a hang)."""
    seen = {line.split(" uptime=")[0] for _t, line in markers}
    current = "first-boot"
    for name, start, _end in PHASES:
        if name not in SPANS and any(s.startswith(start) for s in seen):
            current = name
    return current


def run_journey(*, suite: str = "bookworm", variant: str = "default", tool: str = "kdumpkit", out: Path,
                accel: str = "auto", log: Log = lambda m: None) -> Journey:
    """The whole journey; ``out`` gets journey.json, console.log, var-crash/, report.txt, guest/."""
    if tool not in TOOLS:
        raise LabError(f"unknown tool {tool!r} (known: {', '.join(TOOLS)})")
    if variant not in VARIANT_HOOKS:  # fail before anything is built
        raise LabError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    out.mkdir(parents=True, exist_ok=True)
    j = Journey(suite, variant, tool, out)
    img = base_image(suite, accel=accel, log=log, **TOOL_IMAGE.get(tool, {}))
    j.release, j.image_build_seconds = img.release, img.build_seconds
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    (work / "lab").mkdir(parents=True)
    wheels = build_wheelhouse(work / "lab" / "wheelhouse", SUITE_PYTHON[suite], log)
    log(f"wheelhouse: {len(wheels)} wheels")
    (work / "lab" / "journey").write_text(guest_script())
    (work / "lab" / "variant.sh").write_text(VARIANT_HOOKS[variant])
    (work / "lab" / "tool.sh").write_text(TOOL_HOOKS[tool])
    make_lab_disk(work / "lab.img", work / "lab")
    overlay(img.disk, work / "system.qcow2")
    results = work / "results.img"
    with open(results, "wb") as f:
        f.truncate(2 << 30)
    j.accel = choose_accel(accel)
    extra = [*system_drives(variant, work / "system.qcow2", work),
             "-drive", f"file={work / 'lab.img'},if=virtio,format=raw,readonly=on",
             "-drive", f"file={results},if=none,id=results,format=raw,cache=unsafe",
             "-device", f"virtio-blk-pci,drive=results,serial={RESULTS_SERIAL}"]
    vm = VM(VMConfig(None, None, "", MEM_MB, [], j.accel, 2, extra=extra, reboot=True), j.console_log)
    t_start = time.monotonic()
    vm.start(work)
    j.markers.append((0.0, "qemu-start"))
    try:
        _watch(vm, j, t_start, log)
        vm.finish(60)
    finally:
        vm.kill()
    j.phases = phase_table(j.markers)
    try:
        extract_results(results, out)
    except (OSError, tarfile.TarError) as e:
        j.reason = j.reason or f"no results from the guest ({e})"
    _judge(j)
    (out / "journey.json").write_text(json.dumps(j.to_json(), indent=2) + "\n")
    if j.result == "pass":
        shutil.rmtree(work, ignore_errors=True)
    return j


#: What a crash folder must hold per tool (a name, or a name plus a suffix such as kdump-tools'
#: ``dump.202612031400``).
NEEDED_FILES = {"kdumpkit": ("vmcore", "dmesg.txt", "manifest.json", "report.txt"), "kdump-tools": ("dump", "dmesg")}


def _judge(j: Journey) -> None:
    """Pass: every phase ran, and /var/crash holds a dump with its dmesg, manifest and report."""
    crash = j.out / "var-crash"
    dirs = sorted(d for d in crash.iterdir() if d.is_dir()) if crash.is_dir() else []
    j.crash_dirs = [d.name for d in dirs]
    for d in dirs:
        for f in sorted(d.iterdir()):
            st = f.stat()
            j.files[f"{d.name}/{f.name}"] = {"size": st.st_size, "mode": oct(st.st_mode & 0o777)}
    # What the last boot really ran with (after an undo, GRUB's configuration no longer says it).
    j.crashkernel = (_cmdline_crashkernel(j.out / "guest" / "cmdline.txt")
                     or _cmdline_crashkernel(j.out / "guest" / "grub-cfg-crashkernel.txt"))
    if dirs:
        report = dirs[-1] / "report.txt"
        if report.is_file():
            shutil.copyfile(report, j.out / "report.txt")
    needed = NEEDED_FILES[j.tool]
    have = {f.name for f in dirs[-1].iterdir()} if dirs else set()
    missing = [n for n in needed if not any(h == n or h.startswith(n + ".") for h in have)]
    done = any(line.startswith("phase=report") for _t, line in j.markers)
    if j.variant == "undo" and not any(line == "phase=undo ok" for _t, line in j.markers):
        done = False
    if j.failed_phase is None and done and not missing:
        j.result = "pass"
        return
    j.result = "fail"
    if j.failed_phase is None:
        j.failed_phase = "report" if done else _current_phase(j.markers)
        j.reason = j.reason or (f"missing in /var/crash: {', '.join(missing)}" if missing else "journey incomplete")


def _cmdline_crashkernel(path: Path) -> str:
    try:
        m = re.search(r"crashkernel=(\S+)", path.read_text())
    except OSError:
        return ""
    return m.group(1) if m else ""


def failure_line(j: Journey) -> str:
    """One line: the phase that failed, why, and where the console log is."""
    return f"journey {j.suite}/{j.variant}: phase {j.failed_phase} failed: {j.reason} (console: {j.console_log})"
