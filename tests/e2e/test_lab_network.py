"""E2E (issue #6, "every target"): ssh and NFS targets from inside the real capture kernel.

The guest gets one virtio-net NIC on QEMU's user-mode network, where the
host's loopback is 10.0.2.2.  The test starts real servers there:

* ``nfs``: nfs-ganesha (userspace, NFSv4 only, no rpcbind) exporting a
  directory; the capture initramfs loads virtio_net and the NFSv4 client,
  sets the static address of ``[network]`` and ``kdumpkit capture`` mounts
  the export with busybox ``mount -t nfs4`` and writes a dated dump folder there.
* ``ssh``: the address comes by DHCP (busybox udhcpc); the first target is an
  NFS server that is not there (nothing listens on its port), so the capture
  falls back to the second, ssh to a real sshd whose key is restricted to
  ``kdumpkit receive``; the host key is checked against the known_hosts the
  image carries.

Each run is cached per kernel, kdumpkit source hash and configuration (like
the other e2e runs); the exported directory and the receiver's store live in the cache
with it, so an unchanged tree does not boot again.  ``KDUMPKIT_LAB_FULL=1``
is not needed: one bookworm run each, about 1.5 min apiece with TCG.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kdumpkit.dump import open_dump

GANESHA = shutil.which("ganesha.nfsd")
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
KDUMPKIT = str(Path(sys.executable).with_name("kdumpkit"))
HOST = "10.0.2.2"  # kdumpkit.lab.qemu.USER_NET_HOST
#: Preferred ports, so that the configuration (and the cached image variant) stays the same from run to run.
NFS_PORT, SSH_PORT, DEAD_PORT = 20490, 20222, 20491
RUN_TIMEOUT = 600

GANESHA_CONF = """\
NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = {port};
    Bind_addr = 127.0.0.1;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{
    Graceless = true;
    Lease_Lifetime = 10;
    RecoveryBackend = fs;
    RecoveryRoot = {root}/recovery;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{
    Export_Id = 1;
    Path = {export};
    Pseudo = /kdump;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 4;
    Transports = TCP;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""

CONFIG_HEAD = """\
# kdumpkit lab (test_lab_network): network targets first, the raw disk last
dump_level = 31
codec = "lzo"
final_action = "poweroff"
failure_action = "poweroff"
"""
RAW_AND_NETWORK = """
[[target]]
type = "raw"
device = "/dev/vdb"

[network]
drivers = ["virtio_net"]
wait_seconds = 30
"""
#: The NFS run configures the address itself (the ssh run uses DHCP): both ways are booted.
STATIC = """interface = "eth0"
address = "10.0.2.15/24"
gateway = "10.0.2.2"
dns = ["10.0.2.3"]
"""


def _lab_tools() -> None:
    for tool in ("qemu-system-x86_64", "busybox", "kexec", "apt-get", "dpkg", "strip", "ssh"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make apt installs the lab's tools)")


def _port(preferred: int) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    for want in (preferred, 0):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", want))
            return int(s.getsockname()[1])
        except OSError:
            continue
        finally:
            s.close()
    raise AssertionError("no free port")


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-400:] if log is not None and log.is_file() else ""
                pytest.skip(f"{what} did not start on 127.0.0.1:{port}: {tail.strip()}")
            time.sleep(0.2)


@contextmanager
def _server(cmd: list[str], port: int, what: str, log: Path | None = None) -> Iterator[None]:
    """A server process listening on ``port``; terminated (then killed) on exit, whatever happened."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, what, log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def ganesha(root: Path, export: Path, port: int) -> Iterator[None]:
    assert GANESHA is not None
    root.mkdir(parents=True, exist_ok=True)
    (root / "recovery").mkdir(exist_ok=True)
    conf = root / "ganesha.conf"
    conf.write_text(GANESHA_CONF.format(port=port, root=root, export=export))
    log = root / "ganesha.log"
    with _server([GANESHA, "-F", "-f", str(conf), "-L", str(log), "-p", str(root / "pid"), "-N", "NIV_EVENT"],
                 port, "ganesha.nfsd", log):
        yield


@contextmanager
def sshd(root: Path, port: int, store: Path) -> Iterator[None]:
    """OpenSSH on 127.0.0.1 (the guest's 10.0.2.2): the client key may only run ``kdumpkit receive``."""
    assert SSHD is not None
    pub = (root / "client.pub").read_text().strip()
    (root / "authorized_keys").write_text(f'command="{KDUMPKIT} receive {store}",restrict {pub}\n')
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n"
        f"SetEnv PATH=/usr/sbin:/usr/bin:/sbin:/bin\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    with _server([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], port, "sshd"):
        yield


def _keys(root: Path, port: int) -> Path:
    """Client and host keys (made once, kept in the cache) and the guest's known_hosts for them."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("host", "client"):
        if not (root / name).is_file():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    host_pub = " ".join((root / "host.pub").read_text().split()[:2])
    (root / "known_hosts").write_text(f"[{HOST}]:{port} {host_pub}\n")
    return root / "client"


def _cached_run(name: str, config: str, serve: Any) -> Any:
    """Run (or reuse) one lab cycle with ``config``; ``serve(d)`` is the context the servers run in."""
    from kdumpkit.lab.cache import LAB_FORMAT_VERSION, lab_dir
    from kdumpkit.lab.kernels import fetch
    from kdumpkit.lab.run import RunResult, run
    from kdumpkit.setup.runtime import runtime_key

    k = fetch("bookworm")
    base = lab_dir("e2e-network")
    h = hashlib.sha256(config.encode()).hexdigest()[:8]
    d = base / f"{name}-{k.cache_key}-{runtime_key()}-{h}-v{LAB_FORMAT_VERSION}"
    if not (d / ".complete").is_file():
        _lab_tools()
        for old in base.glob(f"{name}-{k.cache_key}-*"):
            if old != d:  # runs of an older tree
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        t0 = time.monotonic()
        with serve(d):
            run(k, out=d / "run", capture="kdumpkit", capture_config=config, network=True, timeout=RUN_TIMEOUT)
        (d / "seconds").write_text(f"{time.monotonic() - t0:.1f}\n")
        (d / ".complete").write_text("")
    return d, RunResult.load(d / "run")


def _folder(parent: Path) -> Path:
    folders = [p for p in parent.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


# -- NFS -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nfs_run() -> Any:
    if GANESHA is None:
        pytest.skip("ganesha.nfsd not installed (apt-get install nfs-ganesha nfs-ganesha-vfs; make apt)")
    port = _port(NFS_PORT)
    config = CONFIG_HEAD + (f'\n[[target]]\ntype = "nfs"\nserver = "{HOST}:/kdump"\npath = "/crash"\n'
                            f'mount_options = "port={port}"\n') + RAW_AND_NETWORK + STATIC

    @contextmanager
    def serve(d: Path) -> Iterator[None]:
        (d / "export").mkdir(mode=0o755)
        with ganesha(d / "ganesha", d / "export", port):
            yield

    d, result = _cached_run("nfs", config, serve)
    return d, result


def test_nfs_dump_folder_is_complete(nfs_run: Any) -> None:
    d, result = nfs_run
    assert result.crash_dir is None  # nothing went to the raw disk
    folder = _folder(d / "export" / "crash")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["dmesg.txt", "kallsyms.gz", "manifest.json", "vmcore"]
    for p in folder.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600, p
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["target"].startswith(f"nfs:{HOST}:/kdump")
    assert list(manifest["files"])[0] == "dmesg.txt"
    with open_dump(str(folder / "vmcore")) as dump:
        assert dump.format_name == "kdump" and not dump.incomplete
        info = dump.info().details
        assert info["utsname.release"] == result.release
        pfn = next(iter(dump.iter_dumped_pages()))[0]
        assert len(dump.read_page(pfn)) == 4096
    r = subprocess.run([sys.executable, "-m", "kdumpkit.cli.main", "info", str(folder / "vmcore")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and result.release in r.stdout, r.stderr
    assert "sysrq triggered crash" in (folder / "dmesg.txt").read_text(errors="replace")


def test_nfs_network_came_up_with_a_static_address(nfs_run: Any) -> None:
    _d, result = nfs_run
    console = result.console_log.read_text(errors="replace")
    assert "kdumpkit-init: phase=network status=up iface=eth0 address=10.0.2.15/24 gateway=10.0.2.2" in console
    assert "warn insmod-failed" not in console
    assert f"nfs:{HOST}:/kdump:/crash: saving to" in console


# -- ssh, after an NFS server that is not there --------------------------------------------
@pytest.fixture(scope="module")
def ssh_run() -> Any:
    if SSHD is None:
        pytest.skip("sshd not installed (apt-get install openssh-server; make apt)")
    if not os.path.exists(KDUMPKIT):
        pytest.skip(f"{KDUMPKIT} missing (the venv's console script)")
    from kdumpkit.lab.cache import lab_dir

    port, dead = _port(SSH_PORT), _port(DEAD_PORT)
    keys = lab_dir("e2e-network", "ssh-keys")
    key = _keys(keys, port)
    config = CONFIG_HEAD + (
        f'\n[[target]]\ntype = "nfs"\nserver = "{HOST}:/kdump"\nmount_options = "port={dead}"\n'
        f'\n[[target]]\ntype = "ssh"\ndestination = "root@{HOST}"\nport = {port}\nkey = "{key}"\n'
        f'known_hosts = "{keys / "known_hosts"}"\npath = "/var/crash"\nconnect_timeout = 20\n') + RAW_AND_NETWORK

    @contextmanager
    def serve(d: Path) -> Iterator[None]:
        with sshd(keys, port, d / "store"):
            yield

    return _cached_run("ssh", config, serve)


def test_ssh_dump_arrived_complete(ssh_run: Any) -> None:
    d, result = ssh_run
    assert result.crash_dir is None
    folder = _folder(d / "store")
    assert sorted(p.name for p in folder.iterdir()) == ["dmesg.txt", "kallsyms.gz", "manifest.json", "vmcore.flat"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["target"].startswith(f"ssh:root@{HOST}")
    flat = folder / "vmcore.flat"
    assert manifest["files"]["vmcore.flat"]["sha256"] == hashlib.sha256(flat.read_bytes()).hexdigest()
    with open_dump(str(flat)) as dump:
        assert dump.format_name == "kdump" and not dump.incomplete
        assert dump.info().details["utsname.release"] == result.release
    assert "ssh-keys/client" not in json.dumps(manifest) and "BEGIN OPENSSH" not in json.dumps(manifest)


def test_dead_nfs_server_falls_back_and_says_why(ssh_run: Any) -> None:
    d, result = ssh_run
    console = result.console_log.read_text(errors="replace")
    assert "kdumpkit-init: phase=network status=up iface=eth0 address=10.0.2.15/24 gateway=10.0.2.2" in console  # DHCP
    failed = [ln for ln in console.splitlines() if f"nfs:{HOST}:/kdump" in ln and "mount" in ln]
    assert failed, "the console does not say why the NFS target failed"
    manifest = json.loads((_folder(d / "store") / "manifest.json").read_text())
    assert any(p.startswith(f"nfs:{HOST}:/kdump") and "failed" in p for p in manifest["problems"]), manifest
