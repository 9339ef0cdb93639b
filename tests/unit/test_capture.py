"""``kdumpkit capture``: the target chain, dmesg first, manifest, retention, actions, raw device, receiver."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdumpkit.capture import session
from kdumpkit.capture.engine import FileOutput, Output
from kdumpkit.capture.rawrestore import read_header, restore_raw
from kdumpkit.capture.receive import client_request, receive
from kdumpkit.capture.retention import CrashDir, apply_retention, plan_retention
from kdumpkit.capture.targets import Destination, LocalDestination, RawDestination, destination_for
from kdumpkit.cli.main import main
from kdumpkit.dump import open_dump
from kdumpkit.dump.base import Buffer
from kdumpkit.dump.convert import convert
from kdumpkit.dump.sink import Sink
from kdumpkit.dump.testing import SyntheticDump, assert_same_pages, synthetic_dump
from kdumpkit.errors import NoSpaceError, NotADumpError, UsageError
from kdumpkit.setup.config import Config, Keep, Target, loads_config


class LimitedSink(Sink):
    """Raises NoSpaceError once a write would pass ``limit`` bytes (a tiny disk)."""

    def __init__(self, inner: Sink, limit: int) -> None:
        self.inner, self.limit = inner, limit

    def pwrite(self, offset: int, data: Buffer) -> None:
        if offset + len(data) > self.limit:
            raise NoSpaceError(f"limit {self.limit}")
        self.inner.pwrite(offset, data)


LOG = b"[    0.000000] Linux version 6.1.0-synthetic\n[   42.000000] sysrq: Trigger a crash\n"
RAM = [(0, 1500), (2048, 3000)]


@pytest.fixture(autouse=True)
def fake_kernel_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthetic dumps have no printk ring; give them one through the session's extractor."""
    monkeypatch.setattr(session, "dmesg_bytes", lambda dump: LOG)


def src() -> SyntheticDump:
    return synthetic_dump(ram=RAM, zero_fraction=0.5)


class Actions:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, name: str) -> None:
        self.calls.append(name)


def cfg(text: str) -> Config:
    return loads_config(text)


def test_local_capture(tmp_path: Path) -> None:
    act = Actions()
    c = cfg(f'dump_level = 1\ncodec = "zlib"\nfinal_action = "halt"\n[[target]]\ntype = "local"\npath = "{tmp_path}"')
    rep = session.capture(c, src(), action=act)
    assert act.calls == ["halt"]
    saved = rep.saved
    assert saved is not None and saved.status == "complete"
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1
    folder = folders[0]
    assert folder.name.startswith(rep.crash_id) and folder.name.count("-") >= 3
    assert sorted(p.name for p in folder.iterdir()) == ["dmesg.txt", "manifest.json", "vmcore"]
    assert (folder / "dmesg.txt").read_bytes() == LOG
    m = json.loads((folder / "manifest.json").read_text())
    assert m["status"] == "complete" and m["dump"]["dump_level"] == 1 and m["dump"]["codec"] == "zlib"
    assert m["kernel"]["release"] == "6.1.0-synthetic"
    assert set(m["files"]) == {"dmesg.txt", "vmcore"}
    import hashlib

    assert m["files"]["vmcore"]["sha256"] == hashlib.sha256((folder / "vmcore").read_bytes()).hexdigest()
    assert {"dmesg", "vmcore", "checksums"} <= set(m["timings"])
    with open_dump(str(folder / "vmcore")) as d:
        assert_same_pages(src(), d)


class Recording(LocalDestination):
    """A local destination that notes the order of writes and can run out of space."""

    def __init__(self, target: Target, order: list[str], limit: int | None = None) -> None:
        super().__init__(target, fmt="kdump")
        self.order, self.limit = order, limit

    def write_small(self, name: str, data: bytes) -> None:
        self.order.append(name)
        super().write_small(name, data)

    def open_vmcore(self) -> Output:
        self.order.append("vmcore")
        out = FileOutput(os.path.join(self.dir, self.vmcore_name))
        if self.limit is not None:
            out.sink = LimitedSink(out.sink, self.limit)
        return out


def test_dmesg_first_then_vmcore_then_manifest(tmp_path: Path) -> None:
    order: list[str] = []
    c = cfg(f'dump_level = 0\n[[target]]\ntype = "local"\npath = "{tmp_path}"')
    session.capture(c, src(), action=Actions(), destination=lambda t: Recording(t, order))
    assert order == ["dmesg.txt", "vmcore", "manifest.json"]


def test_enospc_all_levels_keeps_dmesg_and_falls_through(tmp_path: Path) -> None:
    order: list[str] = []
    small, big = tmp_path / "small", tmp_path / "big"
    c = cfg(f'dump_level = "0,1"\nfailure_action = "shell"\n'
            f'[[target]]\ntype = "local"\npath = "{small}"\n[[target]]\ntype = "local"\npath = "{big}"')
    act = Actions()
    rep = session.capture(c, src(), action=act,
                          destination=lambda t: Recording(t, order, 50_000 if t.path == str(small) else None))
    assert [o.status for o in rep.outcomes] == ["dmesg-only", "complete"]
    assert order == ["dmesg.txt", "vmcore", "vmcore", "manifest.json", "dmesg.txt", "vmcore", "manifest.json"]
    first = next(small.iterdir())
    assert sorted(p.name for p in first.iterdir()) == ["dmesg.txt", "manifest.json"]  # no truncated vmcore
    assert json.loads((first / "manifest.json").read_text())["status"] == "dmesg-only"
    assert act.calls == ["reboot"]  # saved somewhere: the final action


def test_failure_action_when_nothing_worked(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    c = cfg(f'failure_action = "poweroff"\ndump_level = 0\n[[target]]\ntype = "local"\npath = "{blocker}/sub"')
    act = Actions()
    rep = session.capture(c, src(), action=act)
    assert rep.saved is None and act.calls == ["poweroff"]
    assert rep.outcomes[0].status == "failed" and rep.outcomes[0].error


def test_dump_to_rootfs(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    c = cfg(f'failure_action = "dump_to_rootfs"\nrootfs_path = "{rootfs}"\ndump_level = 0\n'
            f'[[target]]\ntype = "raw"\ndevice = "{tmp_path}/missing-device"')
    act = Actions()
    rep = session.capture(c, src(), action=act)
    assert [o.status for o in rep.outcomes] == ["failed", "complete"]
    assert act.calls == ["reboot"] and len(list(rootfs.iterdir())) == 1


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_unreachable_ssh_falls_back_fast(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("not really a key")
    key.chmod(0o600)
    c = cfg(f'dump_level = 0\n[[target]]\ntype = "ssh"\ndestination = "nobody@127.0.0.1"\nport = {_closed_port()}\n'
            f'key = "{key}"\nconnect_timeout = 3\npath = "/var/crash"\n'
            f'[[target]]\ntype = "local"\npath = "{tmp_path}/local"')
    logs: list[str] = []
    t0 = time.monotonic()
    rep = session.capture(c, src(), action=Actions(), log=logs.append)
    assert time.monotonic() - t0 < 20
    assert [o.status for o in rep.outcomes] == ["failed", "complete"]
    assert "cannot reach" in rep.outcomes[0].error
    assert str(key) not in json.dumps(rep.outcomes[1].manifest)


def test_retention_never_deletes_current(tmp_path: Path) -> None:
    now = time.time()
    dirs = [CrashDir(str(tmp_path / f"h-2024-01-0{i}-00:00:00"), now - i * 86400, 100) for i in range(1, 6)]
    current = dirs[-1].path  # even the oldest-looking folder survives when it is the one just written
    doomed = plan_retention(dirs, Keep(count=1), current, now)
    assert current not in [d.path for d in doomed] and len(doomed) == 3
    doomed = plan_retention(dirs, Keep(age_days=2.5), current, now)
    assert [d.path for d in doomed] == [dirs[2].path, dirs[3].path]
    doomed = plan_retention(dirs, Keep(size=250), current, now)
    assert current not in [d.path for d in doomed] and sum(1 for _ in doomed) == 3


def test_retention_on_disk(tmp_path: Path) -> None:
    for i in range(4):
        d = tmp_path / f"host-2024-01-0{i + 1}-00:00:00"
        d.mkdir()
        (d / "vmcore").write_bytes(b"x" * 10)
        os.utime(d, (1_700_000_000 + i, 1_700_000_000 + i))
    (tmp_path / "unrelated").mkdir()
    newest = tmp_path / "host-2024-01-04-00:00:00"
    removed = apply_retention(str(tmp_path), Keep(count=2), str(newest))
    assert len(removed) == 2 and (tmp_path / "unrelated").exists() and newest.exists()


def test_retention_after_capture(tmp_path: Path) -> None:
    c = cfg(f'dump_level = 0\n[[target]]\ntype = "local"\npath = "{tmp_path}"\n[keep]\ncount = 2')
    for i in range(3):
        session.capture(c, src(), action=Actions(), now=1_700_000_000 + i)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[-1].endswith(time.strftime("%H:%M:%S", time.localtime(1_700_000_002)))


# -- raw device -----------------------------------------------------------------------------
def _raw_cfg(dev: Path, levels: str = "1") -> Config:
    return cfg(f'dump_level = "{levels}"\ncodec = "zlib"\n[[target]]\ntype = "raw"\ndevice = "{dev}"')


def test_raw_capture_and_restore(tmp_path: Path) -> None:
    dev = tmp_path / "disk.img"
    dev.write_bytes(bytes(16 << 20))
    rep = session.capture(_raw_cfg(dev), src(), action=Actions())
    assert rep.saved is not None and rep.saved.status == "complete"
    r = restore_raw(str(dev), str(tmp_path / "crash"))
    assert r.complete
    folder = Path(r.folder)
    assert sorted(p.name for p in folder.iterdir()) == ["dmesg.txt", "manifest.json", "vmcore"]
    assert (folder / "dmesg.txt").read_bytes() == LOG
    m = json.loads((folder / "manifest.json").read_text())
    assert m["target"].startswith("raw:") and m["dump"]["format"] == "flat"
    with open_dump(str(folder / "vmcore")) as d:
        assert not d.incomplete
        assert_same_pages(src(), d)
    with pytest.raises(NotADumpError):  # wiped: not restored twice
        restore_raw(str(dev), str(tmp_path / "crash"))


def test_raw_too_small_falls_back_a_level(tmp_path: Path) -> None:
    dev = tmp_path / "disk.img"
    s = synthetic_dump(ram=RAM, zero_fraction=0.6, random_fraction=0.35)
    dev.write_bytes(bytes(6 << 20))  # uncompressed: level 0 needs ~9.6 MiB, level 1 ~3.9 MiB
    c = cfg(f'dump_level = "0,1"\ncodec = "none"\n[[target]]\ntype = "raw"\ndevice = "{dev}"')
    rep = session.capture(c, s, action=Actions())
    assert rep.saved is not None and rep.saved.result is not None
    assert rep.saved.result.levels_tried == [0, 1] and rep.saved.result.dump_level == 1
    r = restore_raw(str(dev), str(tmp_path / "crash"))
    with open_dump(os.path.join(r.folder, "vmcore")) as d:
        assert_same_pages(s, d)


def test_raw_interrupted_capture_restores_incomplete(tmp_path: Path) -> None:
    dev = tmp_path / "disk.img"
    dev.write_bytes(bytes(16 << 20))
    dest = RawDestination(Target("raw", device=str(dev)))
    dest.open("host-2024-01-01-00:00:00")
    dest.write_small("dmesg.txt", LOG)
    out = dest.open_vmcore()
    from kdumpkit.dump.kdump import write_kdump

    def stop(done: int, total: int) -> None:
        if done >= total // 2:
            raise KeyboardInterrupt  # the machine resets: no end marker, no final header
    with pytest.raises(KeyboardInterrupt):
        write_kdump(src(), out.sink, codec="zlib", progress=stop)
    dest.close()
    h = read_header(os.open(dev, os.O_RDONLY))
    assert h is not None and h.stream_len == 0
    r = restore_raw(str(dev), str(tmp_path / "crash"))
    assert not r.complete
    with open_dump(os.path.join(r.folder, "vmcore.incomplete")) as d:
        assert d.incomplete and 0 < sum(e - s for s, e in d.dumped_runs()) < 2452


def test_restore_raw_cli(tmp_path: Path) -> None:
    dev = tmp_path / "disk.img"
    dev.write_bytes(bytes(16 << 20))
    assert main(["restore-raw", "--if-present", str(dev), str(tmp_path / "c")]) == 0
    assert main(["restore-raw", str(dev), str(tmp_path / "c")]) == 1
    session.capture(_raw_cfg(dev), src(), action=Actions())
    assert main(["restore-raw", str(dev), str(tmp_path / "c")]) == 0


# -- the ssh receiver (the transport is tested against a real sshd in tests/interop) -------
DECLARE_LOG = f"--size {len(LOG)} --sha256 {hashlib.sha256(LOG).hexdigest()}"


def test_receiver_stores_and_refuses(tmp_path: Path) -> None:
    base = str(tmp_path / "crash")
    req = client_request(f"kdumpkit receive /ignored --crash-id h-2024-01-01-00:00:00 --name dmesg.txt {DECLARE_LOG}")
    path = receive(base, req, io.BytesIO(LOG))
    assert path == os.path.join(base, "h-2024-01-01-00:00:00", "dmesg.txt") and Path(path).read_bytes() == LOG
    for bad in ("--crash-id ../etc --name dmesg.txt", "--crash-id h --name ../../etc/passwd",
                "--crash-id h --name authorized_keys", "--crash-id h --name dmesg.txt extra"):
        with pytest.raises(UsageError):
            r = client_request(bad)
            receive(base, r, io.BytesIO(b""))
    with pytest.raises(Exception, match="exists"):
        receive(base, req, io.BytesIO(LOG))


def test_receiver_requires_end_marker(tmp_path: Path) -> None:
    base = str(tmp_path / "crash")
    req = client_request("--crash-id h1 --name vmcore.flat")
    with pytest.raises(Exception, match="end marker"):
        receive(base, req, io.BytesIO(b"makedumpfile" + bytes(5000)))
    assert (tmp_path / "crash" / "h1" / "vmcore.flat.incomplete").exists()


def test_receive_cli_forced_command(tmp_path: Path) -> None:
    env = dict(os.environ, SSH_ORIGINAL_COMMAND=f"kdumpkit receive /elsewhere --crash-id h2 --name dmesg.txt {DECLARE_LOG}")
    p = subprocess.run([sys.executable, "-m", "kdumpkit.cli.main", "receive", str(tmp_path)], input=LOG, env=env,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "h2" / "dmesg.txt").read_bytes() == LOG and not Path("/elsewhere/h2").exists()
    env["SSH_ORIGINAL_COMMAND"] = "rm -rf /"
    p = subprocess.run([sys.executable, "-m", "kdumpkit.cli.main", "receive", str(tmp_path)], input=b"", env=env,
                       capture_output=True, timeout=60)
    assert p.returncode == 1


# -- the CLI --------------------------------------------------------------------------------
def test_capture_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vmcore = str(tmp_path / "vmcore.elf")
    convert(src(), vmcore, "elf")
    conf = tmp_path / "k.toml"
    conf.write_text(f'dump_level = 1\n[[target]]\ntype = "local"\npath = "{tmp_path}/crash"\n')
    assert main(["capture", "--config", str(conf), "--vmcore", vmcore, "--no-action", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "reboot" and out["targets"][0]["status"] == "complete"
    conf.write_text('codec = "gzip"\n')
    assert main(["capture", "--config", str(conf), "--vmcore", vmcore, "--no-action"]) == 2


def test_destination_for_kinds(tmp_path: Path) -> None:
    for t in (Target("local", path=str(tmp_path)), Target("raw", device="/dev/null"),
              Target("ssh", host="h", key="/k"), Target("nfs", server="s:/e")):
        assert isinstance(destination_for(t, fmt="kdump"), Destination)


def test_nfs_mounts_and_unmounts(tmp_path: Path) -> None:
    """NFS through an injected runner (no NFS server here): mount, a local folder on it, umount."""
    from kdumpkit.capture.targets import NfsDestination

    calls: list[list[str]] = []
    dest = NfsDestination(Target("nfs", server="filer:/export", path="crash"), runner=calls.append,
                          resolve=lambda host: "192.0.2.7")
    dest.open("h-2024-01-01-00:00:00")
    assert calls[0][:4] == ["mount", "-t", "nfs4", "-o"] and calls[0][5] == "filer:/export"
    assert calls[0][4] == "vers=4,soft,timeo=100,retrans=3,nolock,addr=192.0.2.7"
    mnt = calls[0][6]
    assert os.path.isdir(os.path.join(mnt, "crash", "h-2024-01-01-00:00:00"))
    dest.write_small("dmesg.txt", LOG)
    dest.close()
    assert calls[1] == ["umount", mnt]
    import shutil

    shutil.rmtree(mnt, ignore_errors=True)
