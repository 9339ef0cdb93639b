"""The ssh target against a real OpenSSH server on 127.0.0.1, started by the test.

The server gets its own host key, config and port in a temporary directory;
the client key is installed the way the docs tell admins to, restricted to the
receiver::

    command="…/kdumpkit receive DIR",restrict ssh-ed25519 …
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kdumpkit
from kdumpkit.capture import session
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
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
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
    import hashlib

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


def test_restricted_key_runs_only_the_receiver(sshd: Server) -> None:
    user = __import__("pwd").getpwuid(os.getuid()).pw_name
    r = subprocess.run(["ssh", "-i", str(sshd.key), "-p", str(sshd.port), "-o", "BatchMode=yes",
                        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                        f"{user}@127.0.0.1", "touch /tmp/kdumpkit-pwned; cat /etc/shadow"],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
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
