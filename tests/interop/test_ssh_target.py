"""The ssh target against a real OpenSSH server on 127.0.0.1, started by the test.

The server gets its own host key, config and port in a temporary directory;
the client key is installed the way the docs tell admins to, restricted to the
receiver::

    command="…/kdumpkit receive DIR",restrict ssh-ed25519 …
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kdumpkit
from kdumpkit.capture import dmesg, session
from kdumpkit.capture.targets import crash_id_for
from kdumpkit.dump import open_dump
from kdumpkit.dump.testing import assert_same_pages, synthetic_dump
from kdumpkit.setup.config import loads_config

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(SSHD is None, reason="sshd not installed (apt-get install openssh-server)"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="ssh client not installed"),
]
KDUMPKIT = str(Path(sys.executable).with_name("kdumpkit"))
SRC = Path(kdumpkit.__file__).resolve().parents[1]  # the receiver under test, not whatever the venv installed
LOG = b"[    1.000000] synthetic kernel log\n"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class Server:
    def __init__(self, root: Path, port: int, key: Path, store: Path) -> None:
        self.root, self.port, self.key, self.store = root, port, key, store

    def force(self, *receiver_options: str) -> None:
        """(Re)install the client key restricted to ``kdumpkit receive STORE [options]`` (the server's policy)."""
        pub = (self.root / "client.pub").read_text().strip()
        line = " ".join([KDUMPKIT, "receive", str(self.store), *receiver_options])
        (self.root / "authorized_keys").write_text(f'command="{line}",restrict {pub}\n')


@pytest.fixture()
def sshd(tmp_path: Path) -> Iterator[Server]:
    assert SSHD is not None
    if not os.path.exists(KDUMPKIT):
        pytest.skip(f"{KDUMPKIT} missing (the venv's console script)")
    root = tmp_path / "sshd"
    root.mkdir()
    store = tmp_path / "store"
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    port = _free_port()
    server = Server(root, port, root / "client", store)
    server.force()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host'}\nPidFile {root / 'pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n"
        f"SetEnv PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH={SRC}\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.skip(f"sshd did not start: {err.strip()[:300]}")
                time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _config(srv: Server, extra: str = "") -> str:
    user = os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name
    return (f'dump_level = "0,1"\ncodec = "zlib"\n{extra}'
            f'[[target]]\ntype = "ssh"\ndestination = "{user}@127.0.0.1"\nport = {srv.port}\n'
            f'key = "{srv.key}"\npath = "/ignored/by/the/forced/command"\nconnect_timeout = 5\n'
            f'ssh_options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", '
            f'"-o", "LogLevel=ERROR"]\n')


@pytest.fixture(autouse=True)
def fake_kernel_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session, "dmesg_bytes", lambda dump: LOG)


def test_capture_over_ssh(sshd: Server) -> None:
    src = synthetic_dump(ram=[(0, 3000), (4096, 5000)])
    acts: list[str] = []
    rep = session.capture(loads_config(_config(sshd, "[keep]\ncount = 2\n")), src, action=acts.append)
    saved = rep.saved
    assert saved is not None and saved.status == "complete", [o.error for o in rep.outcomes]
    (folder,) = list(sshd.store.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["dmesg.txt", "manifest.json", "vmcore.flat"]
    assert (folder / "dmesg.txt").read_bytes() == LOG
    m = json.loads((folder / "manifest.json").read_text())
    assert m["dump"]["format"] == "flat" and str(sshd.key) not in json.dumps(m)
    assert m["files"]["vmcore.flat"]["sha256"] == hashlib.sha256((folder / "vmcore.flat").read_bytes()).hexdigest()
    with open_dump(str(folder / "vmcore.flat")) as d:
        assert_same_pages(src, d)
    # retention is the receiving side's policy (the forced command's), never the client's [keep]
    session.capture(loads_config(_config(sshd, "[keep]\ncount = 1\n")), src, action=acts.append, now=time.time() + 5)
    assert len(list(sshd.store.iterdir())) == 2
    sshd.force("--keep-count", "2")
    for i in range(3):
        session.capture(loads_config(_config(sshd, "[keep]\ncount = 2\n")), src, action=acts.append,
                        now=time.time() + 10 + i)
    assert len(list(sshd.store.iterdir())) == 2 and acts == ["reboot"] * 5


def _ssh(srv: Server, command: str, data: bytes = b"") -> subprocess.CompletedProcess[str]:
    """One session with the client key, as the capture kernel opens it (the forced command decides)."""
    user = pwd.getpwuid(os.getuid()).pw_name
    return subprocess.run(["ssh", "-i", str(srv.key), "-p", str(srv.port), "-o", "BatchMode=yes",
                           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                           "-o", "LogLevel=ERROR", f"{user}@127.0.0.1", command],
                          capture_output=True, timeout=60, input=data.decode("latin-1"), encoding="latin-1")


def test_restricted_key_runs_only_the_receiver(sshd: Server) -> None:
    r = _ssh(sshd, "touch /tmp/kdumpkit-pwned; cat /etc/shadow")
    assert r.returncode != 0 and "root:" not in r.stdout
    assert not os.path.exists("/tmp/kdumpkit-pwned")


def test_remote_disk_full_falls_back_a_level(sshd: Server, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    sshd.store.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(sshd.store)], capture_output=True,
                       text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        src = synthetic_dump(ram=[(0, 2500)], zero_fraction=0.75, random_fraction=0.2)
        cfg = loads_config(_config(sshd).replace('codec = "zlib"', 'codec = "none"'))
        rep = session.capture(cfg, src, action=lambda a: None)
        saved = rep.saved
        assert saved is not None and saved.result is not None, [o.error for o in rep.outcomes]
        assert saved.result.levels_tried == [0, 1]
        (folder,) = list(sshd.store.iterdir())
        assert sorted(p.name for p in folder.iterdir()) == ["dmesg.txt", "manifest.json", "vmcore.flat"]
        with open_dump(str(folder / "vmcore.flat")) as d:
            assert_same_pages(src, d)
    finally:
        if subprocess.run(["umount", str(sshd.store)], check=False).returncode:
            subprocess.run(["umount", "-l", str(sshd.store)], check=False)


# -- issue #19: a hostile local user on the dump server, a hostile client --------------------
class Shared:
    """A dump directory like Ubuntu's /var/crash (1777) that a second, unprivileged user can plant in."""

    def __init__(self, base: Path, uid: int, gid: int) -> None:
        self.base, self.uid, self.gid = base, uid, gid
        self.store = base / "store"
        self.outside = base / "outside"  # the server's own files a planted symlink points at
        self.loot = base / "loot"  # a directory of the intruder's, where a diverted dump would land
        for d in (self.store, self.outside, self.loot):
            d.mkdir()
        os.chmod(base, 0o755)
        os.chmod(self.store, 0o1777)
        (self.outside / "authorized_keys").write_text("ssh-ed25519 AAAA the server's own\n")
        os.chown(self.loot, uid, gid)

    def plant(self, script: str) -> None:
        """Run ``script`` in the dump directory as the intruder."""
        subprocess.run(["sh", "-ec", script], cwd=self.store, user=self.uid, group=self.gid, extra_groups=[],
                       check=True, timeout=30)

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        """Everything but the receiver's own folders: planted entries, ``outside``, ``loot``."""
        out: dict[str, tuple[object, ...]] = {}
        for dirpath, dirs, files in os.walk(self.base):
            if dirpath == str(self.store):
                dirs[:] = [d for d in dirs if (self.store / d).lstat().st_uid != os.geteuid()]
            for name in dirs + files:
                p = Path(dirpath, name)
                st = p.lstat()
                body = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
                out[str(p.relative_to(self.base))] = (st.st_mode, st.st_uid, st.st_size, body)
        return out


@pytest.fixture()
def shared(sshd: Server) -> Iterator[Shared]:
    if os.geteuid() != 0:
        pytest.skip("a second local user needs root (useradd)")
    if shutil.which("useradd") is None:
        pytest.skip("useradd not installed")
    name = f"kdkplant{os.getpid() % 100000}"
    r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"useradd failed: {r.stderr.strip()[:200]}")
    base = Path(tempfile.mkdtemp(prefix="kdumpkit-receive-"))
    try:
        pw = pwd.getpwnam(name)
        world = Shared(base, pw.pw_uid, pw.pw_gid)
        sshd.store = world.store
        sshd.force("--keep-count", "2")
        yield world
    finally:
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["userdel", name], check=False, capture_output=True)


def _one_line_refusal(r: subprocess.CompletedProcess[str], why: str) -> None:
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("kdumpkit receive: ") and why in r.stderr, r.stderr


def _request(srv: Server, request: str, data: bytes = b"") -> subprocess.CompletedProcess[str]:
    return _ssh(srv, f"kdumpkit receive /ignored {request}", data)  # what SshDestination sends


def _declared(name: str, cid: str, data: bytes) -> str:
    return f"--crash-id {shlex.quote(cid)} --name {name} --size {len(data)} --sha256 {hashlib.sha256(data).hexdigest()}"


def test_planted_paths_do_not_divert_a_capture(sshd: Server, shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    """The intruder guesses the next crash id and plants a symlink and a folder of traps under it."""
    monkeypatch.setattr(dmesg, "dump_hostname", lambda dump: "Wéb..01")  # an odd hostname dumps too (finding 3)
    src = synthetic_dump(ram=[(0, 600)])
    now = time.time()
    cid = crash_id_for(dmesg.crash_hostname(src), now)
    shared.plant(f"ln -s ../loot '{cid}'\n"
                 f"mkdir -m 777 '{cid}.1'\n"
                 f"ln -s ../outside/authorized_keys '{cid}.1/dmesg.txt.incomplete'\n"
                 f"printf evil > '{cid}.1/vmcore.flat.incomplete'; chmod 666 '{cid}.1/vmcore.flat.incomplete'\n")
    before = shared.snapshot()
    rep = session.capture(loads_config(_config(sshd)), src, action=lambda a: None, now=now)
    saved = rep.saved
    assert saved is not None and saved.status == "complete", [o.error for o in rep.outcomes]
    assert saved.location.endswith(f"/{cid}.2")  # the receiver reserved a name nobody had planted
    assert shared.snapshot() == before
    folder = shared.store / f"{cid}.2"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.geteuid()
    for f in folder.iterdir():
        assert (stat.S_IMODE(f.lstat().st_mode), f.lstat().st_uid, f.is_symlink()) == (0o600, os.geteuid(), False)
    with open_dump(str(folder / "vmcore.flat")) as d:
        assert_same_pages(src, d)


def test_sessions_into_planted_folders_are_refused(sshd: Server, shared: Shared) -> None:
    """Without the probe's reservation (an older client): refused in one line, nothing written through."""
    cid = "web-2026-01-02-03:04:05"
    shared.plant(f"ln -s ../loot '{cid}'; mkdir -m 777 '{cid}.1'\n"
                 f"ln -s ../outside/authorized_keys '{cid}.1/kallsyms.gz'\n")
    before = shared.snapshot()
    _one_line_refusal(_request(sshd, _declared("dmesg.txt", cid, LOG), LOG), "symlink")
    _one_line_refusal(_request(sshd, _declared("dmesg.txt", f"{cid}.1", LOG), LOG), "not created by the receiver")
    _one_line_refusal(_request(sshd, _declared("kallsyms.gz", f"{cid}.1", LOG), LOG), "not created by the receiver")
    assert shared.snapshot() == before


def test_client_cannot_choose_what_the_server_deletes(sshd: Server, shared: Shared) -> None:
    def crash(cid: str, age: float, uid: int | None = None) -> Path:
        d = shared.store / cid
        d.mkdir(mode=0o700)
        (d / "manifest.json").write_text("{}")
        if uid is not None:
            os.chown(d, uid, uid)
            os.chown(d / "manifest.json", uid, uid)
        os.utime(d, (time.time() - age,) * 2)
        return d

    others = [crash(f"db-2025-01-01-00:00:0{i}", 3600 + i) for i in range(3)]
    squatter = crash("web-2025-01-01-00:00:00", 7200, shared.uid)  # the intruder's, named like web's
    mine = [crash(f"web-2025-01-01-00:00:0{i}", 1800 + i) for i in range(1, 4)]
    cid = "web-2026-01-02-03:04:05"
    assert _request(sshd, f"--probe --crash-id {cid}").returncode == 0
    manifest = b"{}"
    for keep in ("--keep-count 1", "--keep-size 1", "--keep-age-days 0.001"):
        _one_line_refusal(_request(sshd, f"{_declared('manifest.json', cid, manifest)} {keep}", manifest), "server's policy")
    assert all(d.exists() for d in [*others, squatter, *mine])
    r = _request(sshd, _declared("manifest.json", cid, manifest), manifest)  # the server's --keep-count 2 applies
    assert r.returncode == 0, r.stderr
    assert all(d.exists() for d in [*others, squatter]) and [d.exists() for d in mine] == [True, False, False]  # newest + this one


def test_cut_transfer_is_never_final(sshd: Server, shared: Shared) -> None:
    cid = "web-2026-01-02-03:04:05"
    r = _request(sshd, _declared("dmesg.txt", cid, LOG), LOG[:10])  # the stream ends early (a dropped link)
    _one_line_refusal(r, "cut after 10")
    assert not (shared.store / cid / "dmesg.txt").exists() and (shared.store / cid / "dmesg.txt.incomplete").exists()
    _one_line_refusal(_request(sshd, _declared("dmesg.txt", "abc\n", LOG), LOG), "bad crash id")
