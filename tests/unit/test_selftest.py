"""``kdumpkit test`` without QEMU: kernel resolution, config -> lab parameters, the record, status reading it."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.cli.main import main
from kdumpkit.dump.kdump import write_kdump
from kdumpkit.dump.sink import FileSink
from kdumpkit.dump.testing import default_vmcoreinfo, synthetic_dump
from kdumpkit.errors import ConfigError, UsageError
from kdumpkit.kexec.status import LAST_TEST, OK, WARN, check_last_test, status
from kdumpkit.lab import selftest
from kdumpkit.lab.kernels import Kernel
from kdumpkit.lab.run import RunResult
from kdumpkit.setup.config import loads_config

REL = "6.1.0-test-amd64"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDUMPKIT_CACHE", str(tmp_path / "cache"))


def _toml(tmp: Path, text: str) -> str:
    p = tmp / "kdumpkit.toml"
    p.write_text(text)
    return str(p)


# -- kernel resolution ---------------------------------------------------------------
def test_running_kernel_without_image_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as e:
        selftest.resolve_kernel(None, None, root=tmp_path, release=REL)
    msg = str(e.value)
    assert f"/boot/vmlinuz-{REL}" in msg and "--kernel bookworm" in msg and "--modules DIR" in msg
    assert "\n" not in msg and e.value.exit_code == 2


def test_running_kernel_without_modules(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / f"vmlinuz-{REL}").write_bytes(b"MZ kernel")
    with pytest.raises(UsageError, match=f"no /lib/modules/{REL}.*--kernel bookworm"):
        selftest.resolve_kernel(None, None, root=tmp_path, release=REL)


def test_running_kernel_found(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / f"vmlinuz-{REL}").write_bytes(b"MZ kernel")
    (tmp_path / "usr/lib/modules" / REL / "kernel").mkdir(parents=True)
    k = selftest.resolve_kernel(None, None, root=tmp_path, release=REL)
    assert k.release == REL and k.vmlinuz == (tmp_path / "boot" / f"vmlinuz-{REL}").resolve()
    assert k.modules_dir == (tmp_path / "usr/lib/modules" / REL).resolve()


def test_kernel_path_and_modules_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such kernel image"):
        selftest.resolve_kernel(str(tmp_path / "vmlinuz-x"), None)
    img = tmp_path / "vmlinuz-x"
    img.write_bytes(b"MZ")
    with pytest.raises(UsageError, match="no such modules directory"):
        selftest.resolve_kernel(str(img), str(tmp_path / "nomods"))
    with pytest.raises(UsageError, match="--modules is for a vmlinuz path"):
        selftest.resolve_kernel("bookworm", str(tmp_path))
    k = selftest.resolve_kernel(str(img), None)
    assert k.name == "custom" and k.release == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_image(tmp_path: Path) -> None:
    img = tmp_path / "vmlinuz-x"
    img.write_bytes(b"MZ")
    img.chmod(0)
    with pytest.raises(UsageError, match="cannot read"):
        selftest.resolve_kernel(str(img), None)


# -- configuration -> lab parameters -------------------------------------------------
USER_TOML = """\
dump_level = "11,31"
codec = "zstd"
format = "elf"
final_action = "reboot"
num_threads = 2

[[target]]
type = "ssh"
destination = "kdump@backup.example.org"
key = "/root/.ssh/kdump_id"

[[target]]
type = "local"
path = "/var/crash"

[keep]
count = 3

[extra]
extra_modules = ["e1000e", "ahci"]

[extra.setup]
crashkernel = "512M-2G:320M,2G-:512M"
"""


def test_plan_maps_the_user_configuration(tmp_path: Path) -> None:
    path = _toml(tmp_path, USER_TOML)
    p = selftest.plan(path, 1024)
    assert p.config_path == path and p.config_sha256 == hashlib.sha256(USER_TOML.encode()).hexdigest()
    assert p.dump_levels == (11, 31) and p.codec == "zstd" and p.extra_modules == ("e1000e", "ahci")
    assert p.crashkernel == "320M" and "512M-2G:320M" in p.crashkernel_source
    assert selftest.plan(path, 4096).crashkernel == "512M"  # the range for the guest's RAM
    cap = loads_config(p.capture_config)
    assert cap.dump_levels == (11, 31) and cap.codec == "zstd" and cap.num_threads == 2
    assert [t.describe() for t in cap.targets] == ["raw:/dev/vdb"] and cap.final_action == "poweroff"
    text = "\n".join(p.not_exercised)
    assert "ssh:kdump@backup.example.org:/var/crash" in text and "/dev/vdb" in text
    assert "local:/var/crash" in text and "fallback chain of 2" in text and "format = elf" in text
    assert "final_action = reboot" in text and "[keep]" in text
    assert "kdump_id" not in json.dumps(p.__dict__)  # no key paths in what is printed or recorded
    assert not p.notes


def test_plan_defaults_and_small_crashkernel(tmp_path: Path) -> None:
    p = selftest.plan(None, 1024, default_config=str(tmp_path / "absent.toml"))
    assert p.config_path is None and p.dump_levels == (31,) and p.codec == "lzo" and p.crashkernel == "256M"
    assert "lab's default" in p.crashkernel_source and p.extra_modules == ()
    p = selftest.plan(None, 1024, default_config=_toml(tmp_path, '[extra.setup]\ncrashkernel = "192M"\n'))
    assert p.config_path and p.crashkernel == "192M" and "below the 256M" in p.notes[0]


def test_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        selftest.plan(str(tmp_path / "missing.toml"), 1024)
    with pytest.raises(ConfigError, match="codec"):
        selftest.plan(_toml(tmp_path, 'codec = "gzip9"\n'), 1024)
    with pytest.raises(UsageError, match="reserves nothing in a 1024 MiB guest"):
        selftest.plan(_toml(tmp_path, '[extra.setup]\ncrashkernel = "2G-:256M"\n'), 1024)
    with pytest.raises(UsageError, match="does not fit"):
        selftest.plan(_toml(tmp_path, '[extra.setup]\ncrashkernel = "1G"\n'), 1024)
    with pytest.raises(ConfigError, match="extra_modules"):
        selftest.plan(_toml(tmp_path, "[extra]\nextra_modules = 3\n"), 1024)


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", "--kernel", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such kernel image" in err
    assert main(["test", "--config", str(tmp_path / "missing.toml"), "--kernel", "bookworm"]) == 2
    assert "cannot read" in capsys.readouterr().err


# -- the whole flow with the lab replaced by a synthetic dump --------------------------
def _fake_lab(release: str, level: int, codec: str) -> Any:
    def fake_run(kernel: Kernel, *, out: Path, **kw: Any) -> RunResult:
        crash = Path(out) / "crash" / "host-2026"
        crash.mkdir(parents=True)
        src = synthetic_dump(ram=[(0, 512)], vmcoreinfo=default_vmcoreinfo(osrelease=release))
        with FileSink(str(crash / "vmcore")) as s:
            write_kdump(src, s, codec=codec, dump_level=level)
        fake_run.kw = kw  # type: ignore[attr-defined]
        return RunResult(Path(out), kernel.name, kernel.package_version, release, kw["scenario"], "kdumpkit",
                         "tcg", kw["mem_mb"], kw["crashkernel"], {"boot": 1.0, "capture": 2.0}, 1,
                         crash_dir=str(crash))
    return fake_run


def _kernel(tmp: Path) -> tuple[str, str]:
    img = tmp / "vmlinuz-synthetic"
    img.write_bytes(b"MZ")
    mods = tmp / "6.1.0-synthetic"
    mods.mkdir()
    return str(img), str(mods)


def test_cli_pass_writes_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake_lab("6.1.0-synthetic", 31, "lzo")
    monkeypatch.setattr("kdumpkit.lab.run.run", fake)
    img, mods = _kernel(tmp_path)
    cfg = _toml(tmp_path, 'dump_level = 31\ncodec = "lzo"\n[extra]\nextra_modules = ["ahci"]\n')
    state = tmp_path / "state"
    rc = main(["test", "--kernel", img, "--modules", mods, "--config", cfg, "--out", str(tmp_path / "out"),
               "--state-dir", str(state)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS: custom 6.1.0-synthetic: dump level 31, lzo, crashkernel=256M" in out
    assert "not exercised by the lab:" in out and "local:/var/crash" in out
    assert fake.kw["capture_modules"] == ("ahci",) and 'codec = "lzo"' in fake.kw["capture_config"]
    rec = json.loads((state / "last-test.json").read_text())
    assert rec["result"] == "pass" and rec["kernel"]["release"] == "6.1.0-synthetic"
    assert rec["config"] == {"path": cfg, "sha256": hashlib.sha256(Path(cfg).read_bytes()).hexdigest()}
    assert rec["dump_level"] == 31 and rec["dump_codec"] == "lzo" and rec["codec"] == "lzo"
    assert rec["crashkernel"] == "256M" and rec["verify"]["ok"] and rec["dump_size"] > 0
    assert rec["duration_s"] >= 0 and rec["time"].endswith("Z") and rec["timings"]["capture"] == 2.0
    assert (tmp_path / "out" / "test.json").is_file() and (tmp_path / "out" / "report.txt").is_file()


def test_cli_fail_on_wrong_codec_and_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("kdumpkit.lab.run.run", _fake_lab("6.1.0-synthetic", 31, "zlib"))
    img, mods = _kernel(tmp_path)
    cfg = _toml(tmp_path, 'codec = "lzo"\n')
    state = tmp_path / "state"
    rc = main(["test", "--kernel", img, "--modules", mods, "--config", cfg, "--out", str(tmp_path / "out"),
               "--state-dir", str(state), "--json"])
    cap = capsys.readouterr()
    assert rc == 1 and "FAIL" in cap.err and "codec zlib, configured lzo" in cap.err
    assert json.loads(cap.out)["result"] == "fail"
    assert not (state / "last-test.json").exists()  # only successes are recorded


# -- the record as status reads it ----------------------------------------------------
def _record(release: str, cfg: dict[str, str] | None = None, age: float = 7200) -> dict[str, Any]:
    return {"version": 1, "result": "pass", "kernel": {"name": "custom", "release": release},
            "config": cfg, "dump_levels": [31], "codec": "lzo", "crashkernel": "256M",
            "time": "2026-11-23T17:00:00Z", "timestamp": int(time.time() - age)}


def test_status_last_test(tmp_path: Path) -> None:
    root = tmp_path
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(REL + "\n")
    c = check_last_test(root)
    assert c.status == WARN and "no successful kdumpkit test" in c.detail
    (root / "etc/kdumpkit").mkdir(parents=True)
    conf = root / "etc/kdumpkit/kdumpkit.toml"
    conf.write_text("codec = 'lzo'\n")
    digest = hashlib.sha256(conf.read_bytes()).hexdigest()
    path = selftest.write_record(_record(REL, {"path": "/etc/kdumpkit/kdumpkit.toml", "sha256": digest}),
                                 root / "var/lib/kdumpkit")
    assert path == root / LAST_TEST and oct(path.stat().st_mode & 0o777) == "0o644"
    c = check_last_test(root)
    assert c.status == OK and f"passed 2 h ago (2026-11-23T17:00:00Z): kernel {REL}" in c.detail
    assert "dump level 31, lzo, crashkernel=256M" in c.detail
    conf.write_text("codec = 'zstd'\n")
    c = check_last_test(root)
    assert c.status == WARN and "kdumpkit.toml changed since" in c.detail
    selftest.write_record(_record("6.1.0-56-amd64", age=3 * 86400), root / "var/lib/kdumpkit")
    c = check_last_test(root)
    assert c.status == WARN and "3 days ago" in c.detail and f"the running kernel is {REL}" in c.detail
    (root / LAST_TEST).write_text("{not json")
    assert "unreadable" in check_last_test(root).detail
    st = status(root)
    assert st.checks[-1].name == "last test" and st.checks[-1].status == WARN
