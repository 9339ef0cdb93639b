"""kdumpkit setup on fixture trees: boot loader, sysctls, units, idempotency, undo, invalid crashkernel=.

Every command goes to a recording runner; nothing touches this machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from kdumpkit.cli.main import main
from kdumpkit.errors import ConfigError
from kdumpkit.setup import bootloader, sysctl, systemd
from kdumpkit.setup.installer import setup, undo
from kdumpkit.setup.system import MARK, Context

GiB = 1 << 30
EXE = "/usr/bin/kdumpkit"


class FakeRunner:
    """Records commands; emulates what ``systemctl enable/disable`` leave on disk."""

    def __init__(self, root: Path, fail: Sequence[str] = ()) -> None:
        self.root = root
        self.calls: list[list[str]] = []
        self.fail = set(fail)

    def __call__(self, argv: Sequence[str]) -> int:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] in self.fail:
            return 1
        wants = self.root / systemd.WANTS_DIR
        if argv[:2] == ["systemctl", "enable"]:
            wants.mkdir(parents=True, exist_ok=True)
            for u in argv[2:]:
                (wants / u).symlink_to(f"/etc/systemd/system/{u}")
        elif argv[:2] == ["systemctl", "disable"]:
            for u in argv[2:]:
                if not u.startswith("-"):
                    (wants / u).unlink(missing_ok=True)
        return 0

    def commands(self) -> list[str]:
        return [" ".join(c) for c in self.calls]


def make_root(tmp: Path, *, ram: int = 16 * GiB, cmdline: str = "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro quiet",
              programs: Sequence[str] = ("update-grub", "sysctl", "systemctl"), grub: bool = True,
              sysrq: str | None = "438") -> Path:
    (tmp / "proc/sys/kernel").mkdir(parents=True)
    (tmp / "proc/iomem").write_text(f"00001000-0009fbff : System RAM\n00100000-{ram - 0x9f000 + 0x100000 - 1:08x} "
                                    ": System RAM\n")
    (tmp / "proc/cmdline").write_text(cmdline + "\n")
    if sysrq is not None:
        (tmp / "proc/sys/kernel/sysrq").write_text(sysrq + "\n")
    if grub:
        (tmp / "etc/default/grub.d").mkdir(parents=True)
        (tmp / "etc/default/grub").write_text('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    (tmp / "usr/sbin").mkdir(parents=True)
    for p in programs:
        f = tmp / "usr/sbin" / p
        f.write_text("#!/bin/sh\n")
        f.chmod(0o755)
    return tmp


def changed_paths(result_changes: Sequence[object]) -> list[str]:
    return [c.target for c in result_changes if getattr(c, "changed", False)]  # type: ignore[attr-defined]


# -- crashkernel choice ----------------------------------------------------------------
def test_choose_default_table(tmp_path: Path) -> None:
    c = bootloader.choose(make_root(tmp_path))
    assert c.text == "2G-64G:256M,64G-:512M" and c.reserves == 256 << 20 and not c.warnings
    assert bootloader.choose(tmp_path, "auto-plan").text == c.text


def test_choose_given_and_warnings(tmp_path: Path) -> None:
    root = make_root(tmp_path, ram=1 * GiB)
    assert bootloader.choose(root, "192M").reserves == 192 << 20
    c = bootloader.choose(root)  # the table reserves nothing below 2G
    assert c.reserves == 0 and any("reserves nothing" in w for w in c.warnings)
    assert any("offset" in w for w in bootloader.choose(root, "128M@16M").warnings)


@pytest.mark.parametrize("spec", ["auto", "12Q", "256M,medium", "1G-512M:128M", "", "2G"])
def test_choose_invalid(tmp_path: Path, spec: str) -> None:
    root = make_root(tmp_path, ram=2 * GiB)
    with pytest.raises(ConfigError):
        bootloader.choose(root, spec)


def test_choose_range_too_big_for_ram(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not below"):
        bootloader.choose(make_root(tmp_path, ram=1 * GiB), "0-:1G")


def test_choose_without_ram_info(tmp_path: Path) -> None:
    c = bootloader.choose(tmp_path, "256M")
    assert c.ram is None and any("not checked" in w for w in c.warnings)


def test_method_detection(tmp_path: Path) -> None:
    assert bootloader.method(make_root(tmp_path / "a")) == "grub-dropin"
    assert bootloader.method(make_root(tmp_path / "b", programs=("grubby",), grub=False)) == "grubby"
    assert bootloader.method(make_root(tmp_path / "c", programs=(), grub=False)) == "manual"


# -- the whole setup, Debian style -------------------------------------------------------
def test_setup_debian_then_idempotent_then_undo(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    run = FakeRunner(root)
    r = setup(root=root, runner=run, live=True, exe=EXE)
    assert r.crashkernel == "2G-64G:256M,64G-:512M" and r.reboot_needed
    dropin = (root / bootloader.GRUB_DROPIN).read_text()
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel=2G-64G:256M,64G-:512M"' in dropin
    conf = (root / sysctl.SYSCTL_CONF).read_text()
    assert "kernel.sysrq = 446" in conf and "kernel.panic_on_oops = 1" in conf
    assert "kernel.unknown_nmi_panic = 1" in conf and "softlockup_panic" not in conf
    load = (root / systemd.UNIT_DIR / systemd.LOAD_UNIT).read_text()
    assert f"ExecStart={EXE} load\n" in load and f"ExecStop={EXE} unload" in load
    assert "After=local-fs.target" in load and "kexec_crash_size" in load and "Type=oneshot" in load
    report = (root / systemd.UNIT_DIR / systemd.REPORT_UNIT).read_text()
    assert f"ExecStart={EXE} setup post-boot --config /etc/kdumpkit/kdumpkit.toml" in report
    assert "RequiresMountsFor=/var/crash" in report
    hook = root / systemd.POSTINST_HOOK
    assert os.access(hook, os.X_OK) and f"{EXE} initramfs build" in hook.read_text()
    assert run.commands() == ["update-grub", "sysctl --system", "systemctl daemon-reload",
                              "systemctl enable kdumpkit-load.service kdumpkit-report.service"]

    # second run: nothing changes, no command runs
    run2 = FakeRunner(root)
    r2 = setup(root=root, runner=run2, live=True, exe=EXE)
    assert not r2.changed and run2.calls == [] and r2.reboot_needed

    # undo: every file gone (the capture initramfs setup built too), units disabled, grub regenerated
    image = root / systemd.initrd_path("6.1.0-99-amd64")
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"\x1f\x8b gzip, no mark inside")
    run3 = FakeRunner(root)
    u = undo(root=root, runner=run3, live=True)
    assert u.changed
    for rel in (bootloader.GRUB_DROPIN, bootloader.STATE, sysctl.SYSCTL_CONF, systemd.POSTINST_HOOK,
                f"{systemd.UNIT_DIR}/{systemd.LOAD_UNIT}", f"{systemd.UNIT_DIR}/{systemd.REPORT_UNIT}",
                systemd.initrd_path("6.1.0-99-amd64")):
        assert not (root / rel).exists(), rel
    assert run3.commands() == ["systemctl disable --now kdumpkit-load.service kdumpkit-report.service",
                               "systemctl daemon-reload", "update-grub"]
    assert (root / "etc/default/grub").exists()  # the admin's file is never touched
    # undo twice: nothing left to do
    run4 = FakeRunner(root)
    assert not undo(root=root, runner=run4, live=True).changed and run4.calls == []


def test_setup_already_booted_with_value(tmp_path: Path) -> None:
    root = make_root(tmp_path, cmdline="ro crashkernel=2G-64G:256M,64G-:512M")
    r = setup(root=root, runner=FakeRunner(root), live=True, exe=EXE)
    assert not r.reboot_needed
    assert any("systemctl start" in c.target for c in r.changes)


def test_setup_new_value_updates_dropin(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    setup(root=root, runner=FakeRunner(root), live=True, exe=EXE)
    run = FakeRunner(root)
    r = setup(root=root, runner=run, live=True, exe=EXE, crashkernel="384M")
    assert "crashkernel=384M" in (root / bootloader.GRUB_DROPIN).read_text()
    assert run.commands() == ["update-grub"]
    assert any(c.action == "update" and c.target == "/" + bootloader.GRUB_DROPIN for c in r.changes)


def test_setup_kdump_tools_dropin_noted(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / bootloader.KDUMP_TOOLS_DROPIN).write_text('GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT '
                                                      'crashkernel=384M-:128M"\n')
    r = setup(root=root, runner=FakeRunner(root), live=True, exe=EXE)
    assert any("kdump-tools.cfg" in c.target for c in r.changes if c.kind == "note")
    assert sorted(os.listdir(root / "etc/default/grub.d")) == ["kdump-tools.cfg", "kdumpkit.cfg"]  # ours sorts last


def test_setup_grubby(tmp_path: Path) -> None:
    root = make_root(tmp_path, programs=("grubby", "sysctl", "systemctl"), grub=False)
    run = FakeRunner(root)
    setup(root=root, runner=run, live=True, exe=EXE, crashkernel="512M")
    assert run.calls[0] == ["grubby", "--update-kernel=ALL", "--args=crashkernel=512M"]
    assert not (root / bootloader.GRUB_DROPIN).exists()
    run2 = FakeRunner(root)
    setup(root=root, runner=run2, live=True, exe=EXE, crashkernel="512M")
    assert run2.calls == []
    run3 = FakeRunner(root)
    undo(root=root, runner=run3, live=True)
    assert ["grubby", "--update-kernel=ALL", "--remove-args=crashkernel"] in run3.calls


def test_setup_manual_bootloader(tmp_path: Path) -> None:
    root = make_root(tmp_path, programs=(), grub=False)
    run = FakeRunner(root)
    r = setup(root=root, runner=run, live=True, exe=EXE)
    notes = [c.target for c in r.changes if c.kind == "note"]
    assert any("yourself" in n and "crashkernel=" in n for n in notes)
    assert any("no systemctl" in n for n in notes) and any("no sysctl" in n for n in notes)
    assert run.calls == []


def test_setup_invalid_crashkernel_writes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    run = FakeRunner(root)
    with pytest.raises(ConfigError):
        setup(root=root, runner=run, live=True, exe=EXE, crashkernel="auto")
    assert run.calls == [] and not (root / "etc/systemd").exists() and not (root / "etc/sysctl.d").exists()


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    before = sorted(str(p) for p in root.rglob("*"))
    run = FakeRunner(root)
    r = setup(root=root, runner=run, live=True, exe=EXE, dry_run=True)
    assert r.changed and run.calls == []
    assert sorted(str(p) for p in root.rglob("*")) == before
    assert all(c.action == "skipped" for c in r.changes if c.kind == "command")


def test_offline_root_skips_commands(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    run = FakeRunner(root)
    r = setup(root=root, runner=run, exe=EXE)  # live defaults to root == "/"
    assert run.calls == [] and (root / sysctl.SYSCTL_CONF).exists()
    assert any(c.action == "skipped" and "not the running system" in c.detail for c in r.changes)


def test_failed_command_is_recorded(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    r = setup(root=root, runner=FakeRunner(root, fail=("update-grub",)), live=True, exe=EXE)
    assert any(c.action == "failed" and c.target == "update-grub" for c in r.changes)
    assert (root / sysctl.SYSCTL_CONF).exists()  # later steps still ran


def test_only_steps(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    r = setup(root=root, runner=FakeRunner(root), live=True, exe=EXE, steps=("sysctl",))
    assert r.crashkernel is None and changed_paths(r.changes) == ["/" + sysctl.SYSCTL_CONF, "sysctl --system"]
    with pytest.raises(ConfigError):
        setup(root=root, steps=("bogus",))


def test_config_drives_sysctls_crashkernel_and_append(tmp_path: Path) -> None:
    root = make_root(tmp_path, sysrq="1")
    cfg = tmp_path / "k.toml"
    cfg.write_text('[[target]]\ntype = "local"\npath = "/srv/crash"\n\n[extra]\ncmdline_append = "nousb"\n\n'
                   '[extra.setup]\ncrashkernel = "320M"\nsoftlockup_panic = true\nunknown_nmi_panic = false\n')
    r = setup(root=root, runner=FakeRunner(root), live=True, exe=EXE, config=str(cfg))
    assert r.crashkernel == "320M"
    conf = (root / sysctl.SYSCTL_CONF).read_text()
    assert "kernel.sysrq = 1" in conf and "kernel.softlockup_panic = 1" in conf and "unknown_nmi" not in conf
    assert "ExecStart=/usr/bin/kdumpkit load --append nousb" in (root / systemd.UNIT_DIR / systemd.LOAD_UNIT).read_text()
    report = (root / systemd.UNIT_DIR / systemd.REPORT_UNIT).read_text()
    assert f"--config {cfg}" in report and "RequiresMountsFor=/srv/crash" in report


def test_config_default_path_under_root(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "etc/kdumpkit").mkdir(parents=True)
    (root / "etc/kdumpkit/kdumpkit.toml").write_text('[extra.setup]\ncrashkernel = "256M"\n')
    assert setup(root=root, runner=FakeRunner(root), live=True, exe=EXE).crashkernel == "256M"


def test_bad_setup_table(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    cfg = tmp_path / "k.toml"
    cfg.write_text("[extra.setup]\npanic_on_oops = 1\n")
    with pytest.raises(ConfigError, match="true or false"):
        setup(root=root, config=str(cfg), exe=EXE)
    cfg.write_text("[extra.setup]\ncrashkernel = 5\n")
    with pytest.raises(ConfigError):
        setup(root=root, config=str(cfg), exe=EXE)


# -- sysctl details ------------------------------------------------------------------------
@pytest.mark.parametrize(("setting", "current", "expect"), [
    (True, 438, 446), (True, 1, 1), (True, 0, 8), (True, None, 446), (True, 8, 8), (16, 438, 16), (False, 438, None)])
def test_sysrq_value(setting: bool | int, current: int | None, expect: int | None) -> None:
    assert sysctl.sysrq_value(setting, current) == expect


def test_sysrq_without_dump_bit_warns(tmp_path: Path) -> None:
    ctx = Context(make_root(tmp_path), runner=FakeRunner(tmp_path), live=False)
    sysctl.install(ctx, {"setup": {"sysrq": 16}})
    assert any("no dump bit" in c.target for c in ctx.changes)


def test_undo_keeps_foreign_files(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "etc/sysctl.d").mkdir(parents=True)
    (root / sysctl.SYSCTL_CONF).write_text("kernel.sysrq = 1\n")  # same name, not ours
    r = undo(root=root, runner=FakeRunner(root), live=True)
    assert (root / sysctl.SYSCTL_CONF).exists()
    assert any("not written by kdumpkit" in c.target for c in r.changes)


def test_written_files_carry_mark(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    setup(root=root, exe=EXE)
    for rel in (bootloader.GRUB_DROPIN, bootloader.STATE, sysctl.SYSCTL_CONF, systemd.POSTINST_HOOK,
                f"{systemd.UNIT_DIR}/{systemd.LOAD_UNIT}", f"{systemd.UNIT_DIR}/{systemd.REPORT_UNIT}"):
        assert MARK in (root / rel).read_text(), rel


# -- CLI -------------------------------------------------------------------------------------
def test_cli_setup_json_and_undo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path)
    assert main(["setup", "--root", str(root), "--exe", EXE, "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dry_run"] and data["changed"] and data["crashkernel"] == "2G-64G:256M,64G-:512M"
    assert not (root / sysctl.SYSCTL_CONF).exists()
    assert main(["setup", "--root", str(root), "--exe", EXE]) == 0
    out = capsys.readouterr().out
    assert "create" in out and "reboot needed" in out
    assert main(["setup", "--root", str(root), "--exe", EXE]) == 0
    assert "nothing to change" in capsys.readouterr().out
    assert main(["setup", "--root", str(root), "--undo"]) == 0
    assert "remove" in capsys.readouterr().out and not (root / sysctl.SYSCTL_CONF).exists()


def test_cli_setup_invalid_crashkernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path)
    assert main(["setup", "--root", str(root), "--crashkernel", "256M,medium"]) == 2
    assert "crashkernel=" in capsys.readouterr().err


# -- post-boot: raw restore and reports ------------------------------------------------------
def _crash_folder(base: Path, name: str = "host-2024-05-06-07:08:09", vmcore: bytes | None = None) -> Path:
    from kdumpkit.capture.engine import SaveOptions, save_to_file
    from kdumpkit.dump.testing import synthetic_dump

    d = base / name
    d.mkdir(parents=True)
    (d / "dmesg.txt").write_text("log\n")
    if vmcore is None:
        save_to_file(synthetic_dump(), str(d / "vmcore"), SaveOptions(dump_levels=(0,), selfcheck=False))
    else:
        (d / "vmcore").write_bytes(vmcore)
    return d


def test_post_boot_reports_each_new_dump_once(tmp_path: Path) -> None:
    from kdumpkit.setup.config import Config, Target
    from kdumpkit.setup.postboot import REPORT_JSON, REPORT_TXT, post_boot

    good = _crash_folder(tmp_path / "var/crash")
    bad = _crash_folder(tmp_path / "var/crash", "host-2024-05-07-07:08:09", vmcore=b"not a dump at all" * 100)
    (tmp_path / "var/crash/unrelated").mkdir()
    cfg = Config(targets=(Target("local", path="/var/crash"),))
    logs: list[str] = []
    res = post_boot(cfg, root=tmp_path, log=logs.append)
    assert res.reported == [str(good)] and res.failed == [str(bad)]
    assert (good / REPORT_TXT).read_text().startswith("kdumpkit crash report")
    assert json.loads((good / REPORT_JSON).read_text())["kernel"]["release"] == "6.1.0-synthetic"
    assert (good / REPORT_TXT).stat().st_mode & 0o777 == 0o600
    assert "no report" in (bad / REPORT_TXT).read_text() and "error" in json.loads((bad / REPORT_JSON).read_text())
    assert len(logs) == 2
    again = post_boot(cfg, root=tmp_path)  # reports exist: nothing to do, the bad dump is not retried
    assert again.as_dict() == {"restored": [], "reported": [], "failed": []}


def test_post_boot_raw_restore_then_report(tmp_path: Path) -> None:
    from kdumpkit.errors import NotADumpError, OutputError
    from kdumpkit.setup.config import Config, Target
    from kdumpkit.setup.postboot import post_boot

    calls: list[tuple[str, str]] = []

    def restore(device: str, out_dir: str) -> str:
        calls.append((device, out_dir))
        if device.endswith("vdb"):
            return str(_crash_folder(Path(out_dir), "raw-2024-05-06-07:08:09"))
        if device.endswith("vdc"):
            raise NotADumpError("nothing")
        raise OutputError("cannot open")

    cfg = Config(targets=(Target("raw", device="/dev/vdb"), Target("raw", device="/dev/vdc"),
                          Target("raw", device="/dev/vdd"), Target("ssh", host="h", key="/k")),
                 rootfs_path="/var/crash")
    res = post_boot(cfg, root=tmp_path, make=lambda p: ("text\n", {"ok": p}), restore=restore)
    assert [c[0] for c in calls] == [str(tmp_path / "dev/vdb"), str(tmp_path / "dev/vdc"), str(tmp_path / "dev/vdd")]
    assert res.restored == [str(tmp_path / "var/crash/raw-2024-05-06-07:08:09")]
    assert res.reported == res.restored and res.failed == ["/dev/vdd"]


def test_report_dirs() -> None:
    from kdumpkit.setup.config import Config, Target
    from kdumpkit.setup.postboot import report_dirs

    assert report_dirs(Config()) == ["/var/crash"]
    cfg = Config(targets=(Target("nfs", server="n:/e"), Target("local", path="/a"), Target("local", path="/a")),
                 failure_action="dump_to_rootfs", rootfs_path="/b")
    assert report_dirs(cfg) == ["/a", "/b"]


def test_cli_post_boot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _crash_folder(tmp_path / "srv/crash")
    cfg = tmp_path / "k.toml"
    cfg.write_text('[[target]]\ntype = "local"\npath = "/srv/crash"\n')
    assert main(["setup", "post-boot", "--config", str(cfg), "--root", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reported"] == [str(d)] and (d / "report.txt").exists()


def test_setup_builds_capture_initramfs_when_missing_or_stale(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "proc/sys/kernel/osrelease").write_text("6.1.0-99-amd64\n")
    cfg = tmp_path / "k.toml"
    cfg.write_text("codec = \"zstd\"\n")
    run = FakeRunner(root)
    setup(root=root, runner=run, live=True, exe=EXE, config=str(cfg))
    build = f"{EXE} initramfs build --kernel-release 6.1.0-99-amd64 --config {cfg}"
    assert build in run.commands()
    initrd = root / systemd.initrd_path("6.1.0-99-amd64")
    initrd.parent.mkdir(parents=True, exist_ok=True)
    initrd.write_bytes(b"cpio")
    os.utime(cfg, (1_000_000, 1_000_000))
    run2 = FakeRunner(root)
    assert not setup(root=root, runner=run2, live=True, exe=EXE, config=str(cfg)).changed and run2.calls == []
    os.utime(cfg, None)  # config edited after the build: rebuild
    os.utime(initrd, (1_000_000, 1_000_000))
    run3 = FakeRunner(root)
    setup(root=root, runner=run3, live=True, exe=EXE, config=str(cfg))
    assert run3.commands() == [build]
    hook = (root / systemd.POSTINST_HOOK).read_text()
    assert f"config={cfg}\n" in hook and 'initramfs build --kernel-release "$version" "$@"' in hook


def test_post_boot_with_default_config_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # kdumpkit-report.service passes --config /etc/kdumpkit/kdumpkit.toml even before one was written
    d = _crash_folder(tmp_path / "var/crash")
    assert main(["setup", "post-boot", "--config", "/etc/kdumpkit/kdumpkit.toml", "--root", str(tmp_path)]) == 0
    assert (d / "report.txt").exists() and "report:" in capsys.readouterr().err


def test_units_quote_values_the_systemd_way() -> None:
    assert systemd.unit_arg("/usr/local/sbin/kdumpkit") == "/usr/local/sbin/kdumpkit"
    assert systemd.unit_arg('/etc/my dir/100%$x"y\\') == '"/etc/my dir/100%%$$x\\"y\\\\"'
    with pytest.raises(ConfigError, match="control characters"):
        systemd.unit_arg("/var/crash\n[Service]\nExecStartPre=/bin/evil")
    with pytest.raises(ConfigError):
        systemd.unit_path("/var/my crash")
    unit = systemd.load_unit("/usr/local/sbin/kdumpkit", append="x=1 y=2")
    unit_section, service = unit.split("[Service]")
    assert "ExecCondition=" not in unit_section and "ExecCondition=" in service  # systemd ignores it in [Unit]
    assert 'ExecStart=/usr/local/sbin/kdumpkit load --append "x=1 y=2"' in service
    report = systemd.report_unit("/opt/k d/kdumpkit", "/etc/kdumpkit/kdumpkit.toml", ["/var/crash"])
    assert 'ExecStart="/opt/k d/kdumpkit" setup post-boot --config /etc/kdumpkit/kdumpkit.toml' in report


def test_sysctls_without_procps_go_to_proc_sys(tmp_path: Path) -> None:
    root = make_root(tmp_path, programs=("update-grub", "systemctl"))  # a minimal Debian: no sysctl binary
    for key in ("panic_on_oops", "unknown_nmi_panic", "softlockup_panic"):
        (root / f"proc/sys/kernel/{key}").write_text("0\n")
    result = setup(root=root, runner=FakeRunner(root), live=True, exe=EXE, steps=("sysctl",))
    assert (root / "proc/sys/kernel/panic_on_oops").read_text() == "1\n"
    assert int((root / "proc/sys/kernel/sysrq").read_text()) & 8
    assert any("values written to /proc/sys" in c.target for c in result.changes)
