"""``kdumpkit test``: crash *your* kernel with *your* configuration, in the lab, not on the host.

The running kernel (``/boot/vmlinuz-$(uname -r)`` with ``/lib/modules/$(uname
-r)``), or any lab suite or vmlinuz, boots in QEMU; ``kdumpkit load`` arms the
capture kernel, the scenario crashes it, and kdumpkit's capture initramfs
built from the user's capture settings (dump level, codec, extra modules,
crashkernel= size for the guest's RAM) writes the dump to the lab's raw disk.
The host restores it, verifies it, checks that the dump level and codec are
the configured ones, builds the triage report, and records a successful test
in ``/var/lib/kdumpkit/last-test.json`` (``kdumpkit status`` shows it).

What the lab cannot exercise (the real dump target, boot loader, systemd
units, final action, real hardware) is listed in every result.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdumpkit.errors import ConfigError, KdumpkitError, LabError, UsageError
from kdumpkit.lab.console import Line
from kdumpkit.lab.kernels import Kernel

DEFAULT_CONFIG = "/etc/kdumpkit/kdumpkit.toml"
DEFAULT_STATE_DIR = "/var/lib/kdumpkit"
RECORD_NAME = "last-test.json"
RECORD_VERSION = 1
LAB_CRASHKERNEL = "256M"  # what the lab uses when the configuration names no crashkernel=
KDUMPKIT_MIN_CRASHKERNEL_MB = 256  # measured smallest for the Python capture (docs/lab.md)
LAB_DEVICE = "/dev/vdb"
KERNEL_HINT = "give --kernel bookworm (a Debian kernel from the lab) or --kernel /path/vmlinuz --modules DIR"


# -- the kernel ---------------------------------------------------------------------
def resolve_kernel(kernel: str | None, modules: str | None, *, root: str | os.PathLike[str] = "/",
                   release: str | None = None) -> Kernel:
    """The kernel to test: a lab suite, a vmlinuz path, or (default) the running one.

    Raises :class:`UsageError` with a one-line reason and what to give instead.
    """
    from kdumpkit.lab import kernels
    from kdumpkit.lab.aptsrc import SUITES

    if kernel in SUITES:
        if modules:
            raise UsageError(f"--modules is for a vmlinuz path, not the lab kernel {kernel!r}")
        return kernels.fetch(kernel)
    if kernel is not None:
        img = Path(kernel)
        if not img.is_file():
            raise UsageError(f"no such kernel image {kernel!r} (known lab kernels: {', '.join(SUITES)})")
        _readable(img)
        if modules is not None and not Path(modules).is_dir():
            raise UsageError(f"no such modules directory: {modules}")
        return kernels.custom(img, modules)
    rootp = Path(root)
    rel = release or os.uname().release
    img = rootp / "boot" / f"vmlinuz-{rel}"
    if not img.is_file():
        raise UsageError(f"the running kernel {rel} has no image at /boot/vmlinuz-{rel}: {KERNEL_HINT}")
    _readable(img)
    if modules is None:
        for base in ("lib/modules", "usr/lib/modules"):
            if (rootp / base / rel).is_dir():
                modules = str(rootp / base / rel)
                break
        else:
            raise UsageError(f"the running kernel {rel} has no /lib/modules/{rel}: {KERNEL_HINT}")
    elif not Path(modules).is_dir():
        raise UsageError(f"no such modules directory: {modules}")
    return kernels.custom(img, modules, release=rel)


def _readable(img: Path) -> None:
    if not os.access(img, os.R_OK):
        raise UsageError(f"cannot read {img} (often mode 0600: run kdumpkit test as root, or copy the image "
                         "and give --kernel COPY --modules DIR)")


# -- the configuration ----------------------------------------------------------------
@dataclass
class LabPlan:
    """What the lab takes from the user's configuration, and what it cannot test."""

    config_path: str | None      # None: built-in defaults
    config_sha256: str | None
    dump_levels: tuple[int, ...]
    codec: str
    crashkernel: str             # the guest's crashkernel= (e.g. "256M")
    crashkernel_source: str
    mem_mb: int
    extra_modules: tuple[str, ...]
    capture_config: str          # the TOML the capture initramfs carries
    not_exercised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_user_config(path: str | None, default: str = DEFAULT_CONFIG) -> tuple[Any, str | None, str | None]:
    """(Config, path, sha256 of the file): ``--config``, else ``default`` if it exists, else built-in defaults."""
    from kdumpkit.setup.config import Config, loads_config

    if path is None:
        if not os.path.exists(default):
            return Config(), None, None
        path = default
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return loads_config(text, path), os.path.abspath(path), hashlib.sha256(data).hexdigest()


def lab_crashkernel(cfg: Any, mem_mb: int) -> tuple[str, str]:
    """The guest's ``crashkernel=`` from ``[extra.setup] crashkernel`` at ``mem_mb`` of RAM; (value, source)."""
    from kdumpkit.kexec import crashkernel as ck

    setup = cfg.extra.get("setup", {})
    spec = setup.get("crashkernel") if isinstance(setup, dict) else None
    if spec is None:
        return LAB_CRASHKERNEL, "the lab's default: the configuration sets no [extra.setup] crashkernel"
    if not isinstance(spec, str):
        raise ConfigError("extra.setup.crashkernel: expected a string such as \"2G-64G:256M,64G-:512M\"")
    size = ck.parse(spec).size_for(mem_mb << 20)
    if size == 0:
        raise UsageError(f"crashkernel={spec} reserves nothing in a {mem_mb} MiB guest: give --mem with the RAM "
                         "size it is meant for")
    mb = -(-size // (1 << 20))
    if mb >= mem_mb:
        raise UsageError(f"crashkernel={spec} ({mb}M) does not fit in a {mem_mb} MiB guest: give a larger --mem")
    return f"{mb}M", f"configuration: crashkernel={spec} in a {mem_mb} MiB guest"


def capture_config_text(cfg: Any) -> str:
    """The user's capture settings with the lab's raw target and power-off actions."""
    levels = ", ".join(str(v) for v in cfg.dump_levels)
    return ("# kdumpkit test: the user's capture settings; target and actions are the lab's\n"
            f"dump_level = [{levels}]\n"
            f'codec = "{cfg.codec}"\n'
            f"dmesg = {'true' if cfg.dmesg else 'false'}\n"
            f"selfcheck = {'true' if cfg.selfcheck else 'false'}\n"
            f"num_threads = {cfg.num_threads}\n"
            'final_action = "poweroff"\n'
            'failure_action = "poweroff"\n\n'
            "[[target]]\n"
            'type = "raw"\n'
            f'device = "{LAB_DEVICE}"\n')


def plan(config: str | None, mem_mb: int, *, default_config: str = DEFAULT_CONFIG) -> LabPlan:
    """Map the user's configuration onto lab parameters."""
    if mem_mb < 256:
        raise UsageError(f"--mem {mem_mb}: the guest needs at least 256 MiB")
    cfg, path, digest = load_user_config(config, default_config)
    crashkernel, source = lab_crashkernel(cfg, mem_mb)
    mods = cfg.extra.get("extra_modules", [])
    if isinstance(mods, str):
        mods = mods.split()
    if not isinstance(mods, list) or not all(isinstance(m, str) for m in mods):
        raise ConfigError("extra.extra_modules: expected a list of module names")
    p = LabPlan(path, digest, tuple(cfg.dump_levels), cfg.codec, crashkernel, source, mem_mb, tuple(mods),
                capture_config_text(cfg))
    p.not_exercised = not_exercised(cfg)
    if int(crashkernel[:-1]) < KDUMPKIT_MIN_CRASHKERNEL_MB:
        p.notes.append(f"crashkernel={crashkernel} is below the {KDUMPKIT_MIN_CRASHKERNEL_MB}M measured for "
                       "kdumpkit's Python capture (docs/lab.md): the capture may run out of memory")
    return p


def not_exercised(cfg: Any) -> list[str]:
    """What the lab run does not test for this configuration, one sentence each."""
    out: list[str] = []
    for i, t in enumerate(cfg.targets):
        what = {"ssh": "the network, the ssh key and the remote side", "nfs": "the network and the NFS mount",
                "local": "mounting that file system and writing files there",
                "raw": "that device and its driver"}[t.type]
        out.append(f"target {i + 1} ({t.describe()}) is replaced by the lab's raw disk {LAB_DEVICE}: "
                   f"{what} are not tested")
    if len(cfg.targets) > 1:
        out.append(f"the fallback chain of {len(cfg.targets)} targets: only the lab disk is written")
    if cfg.format != "kdump":
        out.append(f"format = {cfg.format}: a raw disk always gets the flattened kdump format")
    out.append(f"final_action = {cfg.final_action}, failure_action = {cfg.failure_action}: "
               "the lab powers the guest off instead")
    if cfg.keep.active:
        out.append("[keep] retention: the lab disk holds one dump only")
    if isinstance(cfg.extra.get("cmdline_append"), str) and cfg.extra["cmdline_append"]:
        out.append("extra.cmdline_append: the lab uses its own capture kernel command line")
    out.append("kdumpkit setup (boot loader crashkernel=, sysctls, systemd units) and the machine's own "
               "firmware, storage and devices: the lab loads the capture kernel with kdumpkit load in a QEMU guest "
               "with virtio disks")
    return out


# -- the run --------------------------------------------------------------------------
@dataclass
class SelftestResult:
    ok: bool
    reason: str                 # "" when ok
    record: dict[str, Any]      # what last-test.json holds (also for failures, in OUT/test.json)
    record_path: str | None     # where the success record went (None: not written)
    report_text: str = ""
    out: str = ""
    warnings: list[str] = field(default_factory=list)


def run_selftest(kernel: str | Kernel | None = None, modules: str | None = None, config: str | None = None,
                 out: str | os.PathLike[str] | None = None, *, accel: str = "auto", timeout: float = 900,
                 scenario: str = "sysrq", mem_mb: int = 1024, state_dir: str | os.PathLike[str] | None = None,
                 default_config: str = DEFAULT_CONFIG, on_line: Callable[[Line], None] | None = None,
                 on_phase: Callable[[str], None] | None = None) -> SelftestResult:
    """One crash cycle of ``kernel`` with the user's capture settings; verify, report, record.

    Bad input (kernel, configuration, sizes) raises :class:`UsageError` /
    :class:`ConfigError` before anything boots; a failure of the cycle or of a
    check is a result with ``ok=False``.
    """
    from kdumpkit.lab.aptsrc import SUITES
    from kdumpkit.lab.run import SCENARIOS, run

    say = on_phase or (lambda msg: None)
    t0 = time.monotonic()
    if scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    p = plan(config, mem_mb, default_config=default_config)
    suite = isinstance(kernel, str) and kernel in SUITES
    # A path or the running kernel is checked before any output (bad input: one line);
    # a lab suite may be downloaded, which takes a while, so it comes after the first line.
    k = kernel if isinstance(kernel, Kernel) else None if suite else resolve_kernel(kernel, modules)
    say(f"configuration: {p.config_path or 'built-in defaults (no ' + default_config + ')'}; dump level "
        f"{','.join(map(str, p.dump_levels))}, codec {p.codec}, crashkernel={p.crashkernel} ({p.crashkernel_source})"
        + (f", extra modules {' '.join(p.extra_modules)}" if p.extra_modules else ""))
    for note in p.notes:
        say(f"note: {note}")
    if k is None:
        k = resolve_kernel(str(kernel), modules)
    say(f"kernel: {k.name} {k.release} ({k.vmlinuz})")
    if out is None:
        raise UsageError("run_selftest needs an output directory")
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "version": RECORD_VERSION, "result": "fail",
        "kernel": {"name": k.name, "release": k.release, "package_version": k.package_version,
                   "vmlinuz": str(k.vmlinuz)},
        "host_release": os.uname().release,
        "config": {"path": p.config_path, "sha256": p.config_sha256} if p.config_path else None,
        "dump_levels": list(p.dump_levels), "codec": p.codec, "crashkernel": p.crashkernel,
        "crashkernel_source": p.crashkernel_source, "mem_mb": mem_mb, "extra_modules": list(p.extra_modules),
        "scenario": scenario, "time": _utc(time.time()), "timestamp": int(time.time()),
        "not_exercised": p.not_exercised,
    }
    say(f"lab: booting in QEMU ({scenario}); the first run builds the capture initramfs (~10 s)")
    try:
        result = run(k, out=outdir, mem_mb=mem_mb, crashkernel=p.crashkernel, scenario=scenario, capture="kdumpkit",
                     timeout=timeout, accel=accel, on_line=on_line, capture_config=p.capture_config,
                     capture_modules=p.extra_modules)
    except LabError as e:
        return _failed(record, f"lab: {e}", t0, outdir)
    record.update(accel=result.accel, timings=result.timings)
    if result.release:
        record["kernel"]["release"] = result.release
    assert result.crash_dir is not None
    crash = Path(result.crash_dir)
    vmcore = crash / "vmcore"
    say(f"verify: {vmcore}")
    try:
        checks, details = check_dump(vmcore, p, result.release)
    except KdumpkitError as e:
        return _failed(record, f"the captured dump: {e}", t0, outdir)
    record.update(details)
    record["dump_size"] = vmcore.stat().st_size
    say("report: kdumpkit report")
    report_text, summary = _report(vmcore)
    record["report"] = summary
    (outdir / "report.txt").write_text(report_text)
    if checks:
        return _failed(record, "; ".join(checks), t0, outdir, report_text)
    record["result"] = "pass"
    record["duration_s"] = round(time.monotonic() - t0, 1)
    record["out"] = str(outdir.resolve())
    _write_json(outdir / "test.json", record)
    res = SelftestResult(True, "", record, None, report_text, str(outdir))
    sdir = Path(state_dir if state_dir is not None else DEFAULT_STATE_DIR)
    try:
        res.record_path = str(write_record(record, sdir))
        say(f"record: {res.record_path}")
    except OSError as e:
        res.warnings.append(f"the test passed but {sdir / RECORD_NAME} could not be written ({e.strerror}); "
                            "kdumpkit status will not show it (run as root, or give --state-dir)")
    return res


def check_dump(vmcore: Path, p: LabPlan, release: str) -> tuple[list[str], dict[str, Any]]:
    """Problems of the restored dump against the plan (empty: pass), and what was found."""
    from kdumpkit.dump import open_dump
    from kdumpkit.dump.verify import verify_dump

    problems: list[str] = []
    with open_dump(str(vmcore)) as d:
        info = d.info().details
        fmt = d.format_name
        rep = verify_dump(d)
        raw = d.vmcoreinfo_raw() or b""
    level = info.get("dump_level")
    codec = info.get("compression")
    osrel = next((ln.split("=", 1)[1] for ln in raw.decode("utf-8", "replace").splitlines()
                  if ln.startswith("OSRELEASE=")), None)
    if not rep.ok:
        problems.append(f"kdumpkit verify: {rep.problem_count} problem(s), first: {rep.problems[0]}")
    if level not in p.dump_levels:
        problems.append(f"dump level {level}, configured {','.join(map(str, p.dump_levels))}")
    if codec != p.codec:
        problems.append(f"codec {codec}, configured {p.codec}")
    if release and osrel != release:
        problems.append(f"the dump's OSRELEASE {osrel!r} is not the booted kernel's {release!r}")
    details = {"dump_level": level, "dump_codec": codec, "dump_format": fmt,
               "dump_osrelease": osrel,
               "verify": {"ok": rep.ok, "pages_checked": rep.pages_checked, "problem_count": rep.problem_count,
                          "warnings": rep.warnings}}
    return problems, details


def _report(vmcore: Path) -> tuple[str, dict[str, Any]]:
    from kdumpkit.analyze.report import build_report, render
    from kdumpkit.dump import open_dump

    with open_dump(str(vmcore)) as d:
        rep = build_report(d)
    kernel = rep.sections.get("kernel", {})
    crash = rep.sections.get("crash", {})
    sig = rep.sections.get("signature", {})
    summary = {"release": kernel.get("release"), "panic_message": crash.get("panic_message"),
               "signature": sig.get("id") if isinstance(sig, dict) else None, "unavailable": sorted(rep.unavailable)}
    return render(rep, "text"), summary


def _failed(record: dict[str, Any], reason: str, t0: float, outdir: Path, report_text: str = "") -> SelftestResult:
    record["result"] = "fail"
    record["reason"] = reason
    record["duration_s"] = round(time.monotonic() - t0, 1)
    record["out"] = str(outdir.resolve())
    _write_json(outdir / "test.json", record)
    return SelftestResult(False, reason, record, None, report_text, str(outdir))


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_record(record: dict[str, Any], state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> Path:
    """Write the success record atomically (``state_dir/last-test.json``, mode 0644); its path."""
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / RECORD_NAME
    tmp = d / f".{RECORD_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
