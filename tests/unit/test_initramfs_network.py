"""Networking in the capture initramfs (issue #6): [network] validation, NFS mount commands, image contents.

No QEMU here (tests/e2e/test_lab_network.py boots it): the tree is built
against a fake modules directory and inspected.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from test_lab_modules import fake_ko

from kdumpkit.capture.targets import nfs_mount_argv, split_server
from kdumpkit.errors import ConfigError
from kdumpkit.lab import cpio
from kdumpkit.setup import initramfs
from kdumpkit.setup.config import Network, Target, loads_config
from kdumpkit.setup.network import UDHCPC_SCRIPT, HostNic, default_route_nic, network_env, network_modules

needs_busybox = pytest.mark.skipif(not Path(initramfs.BUSYBOX).is_file(), reason="busybox-static not installed")
needs_ssh = pytest.mark.skipif(not Path("/usr/bin/ssh").is_file(), reason="openssh-client not installed")

RAW = '[[target]]\ntype = "raw"\ndevice = "/dev/vdb"\n'
MODULES = {
    "virtio_ring": "", "virtio": "", "virtio_pci": "virtio,virtio_ring", "virtio_blk": "virtio,virtio_ring",
    "failover": "", "net_failover": "failover", "virtio_net": "virtio,virtio_ring,net_failover",
    "e1000e": "", "sunrpc": "", "grace": "", "lockd": "sunrpc,grace", "nfs": "sunrpc,lockd",
    "dns_resolver": "", "nfsv4": "nfs,sunrpc,dns_resolver", "nfs_acl": "sunrpc", "nfsv3": "nfs,nfs_acl,sunrpc",
}


# -- [network] ----------------------------------------------------------------------------
def test_network_defaults_and_static() -> None:
    assert loads_config("").network == Network()
    assert not loads_config(RAW).needs_network
    cfg = loads_config('[[target]]\ntype = "nfs"\nserver = "10.0.2.2:/e"\n[network]\ninterface = "52:54:00:AB:cd:01"\n'
                       'address = "10.0.2.15/24"\ngateway = "10.0.2.2"\ndns = "10.0.2.3"\nwait_seconds = 5\n'
                       'drivers = ["virtio_net"]\n')
    assert cfg.needs_network and not cfg.network.dhcp
    assert cfg.network.dns == ("10.0.2.3",) and cfg.network.drivers == ("virtio_net",)
    env = network_env(cfg, HostNic("eth0", "aa:bb:cc:dd:ee:ff", "e1000e")).decode()
    assert "NET_IFACE=52:54:00:ab:cd:01\n" in env and "NET_MAC_HINT=''\n" in env  # a named NIC: no hint
    assert "NET_ADDRESS=10.0.2.15/24\n" in env and "NET_WAIT=5\n" in env


@pytest.mark.parametrize(("text", "message"), [
    ('address = "10.0.2.15"', "prefix"),
    ('address = "fd00::5/64"', "IPv4"),
    ('address = "dhcp"\ngateway = "10.0.2.2"', "static address"),
    ('address = "10.0.2.15/24"\ngateway = "gw"', "network.gateway"),
    ('address = "10.0.2.15/24"\ndns = ["10.0.2.3", 5]', "network.dns"),
    ('interface = "eth0; reboot"', "network.interface"),
    ('wait_seconds = 0', "wait_seconds"),
    ('drivers = "virtio_net"', "network.drivers"),
    ('drivers = ["../x"]', "network.drivers"),
    ('mtu = 9000', "unknown key"),
])
def test_network_validation(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        loads_config(f"[network]\n{text}\n")
    assert "\n" not in str(e.value)


def test_nfs_versions() -> None:
    cfg = loads_config('[[target]]\ntype = "nfs"\nserver = "s:/e"\nversion = 4.1\n'
                       '[[target]]\ntype = "nfs"\nserver = "s:/e"\nmount_options = "nfsvers=3,port=2049"\n')
    assert [t.nfs_vers for t in cfg.targets] == ["4.1", "3"]
    with pytest.raises(ConfigError, match="version"):
        loads_config('[[target]]\ntype = "nfs"\nserver = "s:/e"\nversion = "5"\n')
    with pytest.raises(ConfigError, match="not supported"):
        loads_config('[[target]]\ntype = "nfs"\nserver = "s:/e"\nmount_options = "vers=2"\n')


# -- NFS mount command ----------------------------------------------------------------------
def test_nfs_mount_argv_for_busybox() -> None:
    t = Target("nfs", server="10.0.2.2:/kdump", mount_options="port=20490")
    assert nfs_mount_argv(t, "/mnt") == ["mount", "-t", "nfs4", "-o",
                                         "vers=4,port=20490,soft,timeo=100,retrans=3,nolock,addr=10.0.2.2",
                                         "10.0.2.2:/kdump", "/mnt"]
    # the configuration's own choices win; v3 is plain nfs
    t3 = Target("nfs", server="nas:/x", mount_options="nfsvers=3,hard,timeo=600,lock,addr=192.0.2.9")
    argv = nfs_mount_argv(t3, "/m", resolve=lambda h: pytest.fail("addr= was given"))  # type: ignore[arg-type,return-value]
    assert argv[2] == "nfs" and argv[4] == "nfsvers=3,hard,timeo=600,lock,addr=192.0.2.9,retrans=3"
    names: list[str] = []
    argv = nfs_mount_argv(Target("nfs", server="[fd00::1]:/e"), "/m", resolve=lambda h: names.append(h) or "1.2.3.4")
    assert names == ["fd00::1"] and argv[5] == "fd00::1:/e"
    assert split_server("h:/a/b") == ("h", "/a/b")


# -- building host's NIC ----------------------------------------------------------------------
def test_default_route_nic(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
                     "ens4\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
                     "ens3\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\n")
    net = tmp_path / "net"
    (net / "ens3").mkdir(parents=True)
    (net / "ens3" / "address").write_text("52:54:00:12:34:56\n")
    mod = tmp_path / "module" / "virtio_net"
    mod.mkdir(parents=True)
    (net / "ens3" / "device" / "driver").mkdir(parents=True)
    (net / "ens3" / "device" / "driver" / "module").symlink_to(mod)
    assert default_route_nic(route, net) == HostNic("ens3", "52:54:00:12:34:56", "virtio_net")
    route.write_text(route.read_text().splitlines()[0] + "\n")
    assert default_route_nic(route, net) is None


def test_network_modules() -> None:
    nfs = loads_config('[[target]]\ntype = "nfs"\nserver = "s:/e"\n[network]\ndrivers = ["virtio_net"]\n')
    plan = network_modules(nfs, HostNic("eth0", "", "e1000e"))
    assert plan.modules == ["e1000e", "virtio_net", "nfsv4"] and plan.optional == {"e1000e"}
    assert network_modules(loads_config(RAW), HostNic("eth0", "", "e1000e")).modules == []
    plan = network_modules(nfs, HostNic("veth0", "", ""))
    assert any("no driver module" in n for n in plan.notes)


# -- the image ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def modules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("modules")
    for name, deps in MODULES.items():
        (d / "kernel" / f"{name}.ko").parent.mkdir(parents=True, exist_ok=True)
        (d / "kernel" / f"{name}.ko").write_bytes(fake_ko([f"depends={deps}", f"name={name}"]))
    return d


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not installed")
    d = tmp_path_factory.mktemp("key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "id")], check=True)
    (d / "known_hosts").write_text("[10.0.2.2]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTests\n")
    return d / "id"


def _entries(cfg: str, modules_dir: Path, nic: HostNic | None) -> tuple[dict[str, cpio.Entry], list[str], list[str]]:
    notes: list[str] = []
    tree, order, _rt = initramfs.capture_tree(cfg, modules_dir=modules_dir, host_nic=nic, notes=notes)
    return {e.name: e for e in cpio.read(tree.archive())}, order, notes


@needs_busybox
@needs_ssh
def test_image_with_ssh_and_nfs(modules_dir: Path, ssh_key: Path) -> None:
    cfg = (f'[[target]]\ntype = "ssh"\ndestination = "root@10.0.2.2"\nport = 2222\nkey = "{ssh_key}"\n'
           f'known_hosts = "{ssh_key.parent / "known_hosts"}"\n'
           '[[target]]\ntype = "nfs"\nserver = "10.0.2.2:/kdump"\n' + RAW +
           '[network]\ndrivers = ["virtio_net"]\n')
    entries, order, notes = _entries(cfg, modules_dir, HostNic("eth0", "52:54:00:00:00:01", "e1000e"))
    assert order.index("failover") < order.index("net_failover") < order.index("virtio_net")
    assert order.index("sunrpc") < order.index("nfs") < order.index("nfsv4") and "e1000e" in order
    assert "nfsv3" not in order
    for name in ("lib/modules/kdumpkit/virtio_net.ko", "lib/modules/kdumpkit/nfsv4.ko", "etc/passwd",
                 "etc/group", "usr/bin/ssh", "etc/kdumpkit/network", "etc/ssh/ssh_known_hosts"):
        assert name in entries, name
    script = entries["etc/kdumpkit/udhcpc.script"]
    assert script.data == UDHCPC_SCRIPT.encode() and stat.S_IMODE(script.mode) == 0o755
    key = entries[str(ssh_key).lstrip("/")]
    assert key.data == ssh_key.read_bytes() and stat.S_IMODE(key.mode) == 0o600
    assert entries["etc/passwd"].data.startswith(b"root:x:0:0:")
    assert b"[10.0.2.2]:2222" in entries["etc/ssh/ssh_known_hosts"].data
    # every library ssh needs is there (ldd of the host binary)
    from kdumpkit.setup.runtime import ldd

    for lib in ldd("/usr/bin/ssh"):
        assert lib.lstrip("/") in entries, lib
    assert b"NET_MAC_HINT=52:54:00:00:00:01" in entries["etc/kdumpkit/network"].data
    assert any("NFS v4 client" in n for n in notes) and any("NIC driver e1000e" in n for n in notes)
    secret = ssh_key.read_text().splitlines()[1]
    assert all(secret not in n for n in notes)
    assert "network()" in entries["init"].data.decode() and "phase=network" in entries["init"].data.decode()


@needs_busybox
def test_image_without_network_targets(modules_dir: Path) -> None:
    entries, order, notes = _entries(RAW, modules_dir, HostNic("eth0", "52:54:00:00:00:01", "e1000e"))
    assert not any(m in order for m in ("virtio_net", "e1000e", "nfs", "sunrpc"))
    for name in ("usr/bin/ssh", "etc/passwd", "etc/kdumpkit/network", "etc/kdumpkit/udhcpc.script"):
        assert name not in entries, name
    assert notes == []


@needs_busybox
def test_missing_host_driver_is_a_note_not_an_error(modules_dir: Path) -> None:
    cfg = '[[target]]\ntype = "nfs"\nserver = "10.0.2.2:/kdump"\nversion = "3"\n'
    entries, order, notes = _entries(cfg, modules_dir, HostNic("eth0", "", "bnx2x"))
    assert "bnx2x" not in order and "nfsv3" in order and "usr/bin/ssh" not in entries
    assert any("bnx2x is not a module of this kernel" in n for n in notes)


def test_unreadable_or_open_key_is_refused(tmp_path: Path) -> None:
    from kdumpkit.setup.network import _add_key

    key = tmp_path / "k"
    key.write_text("secret")
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        _add_key(cpio.Tree(), str(key))
    with pytest.raises(ConfigError, match="ssh key"):
        _add_key(cpio.Tree(), str(tmp_path / "missing"))


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
def test_udhcpc_script_is_valid_busybox_sh(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(UDHCPC_SCRIPT)
    assert subprocess.run(["busybox", "sh", "-n", str(tmp_path / "s")]).returncode == 0
    init = tmp_path / "init"
    init.write_text(initramfs.INIT)
    assert subprocess.run(["busybox", "sh", "-n", str(init)]).returncode == 0


@pytest.mark.parametrize(("uts", "folder"), [("(none)", "localhost"), ("-web_1.", "web_1"), ("db(2)", "db_2")])
def test_crash_ids_are_ones_the_receiver_accepts(monkeypatch: pytest.MonkeyPatch, uts: str, folder: str) -> None:
    """The lab guest's hostname is "(none)": its crash id "_none_-<date>" was refused by ``kdumpkit receive``."""
    from kdumpkit.capture import dmesg
    from kdumpkit.capture.receive import CRASH_ID
    from kdumpkit.capture.targets import crash_id_for

    monkeypatch.setattr(dmesg, "dump_hostname", lambda dump: uts)
    assert dmesg.crash_hostname(None) == folder  # type: ignore[arg-type]
    assert CRASH_ID.match(crash_id_for(folder, 0))


def test_nfs_mount_failure_leaves_nothing_mounted(tmp_path: Path) -> None:
    from kdumpkit.capture.targets import NfsDestination
    from kdumpkit.errors import OutputError

    calls: list[list[str]] = []

    def runner(cmd: list[str]) -> None:
        calls.append(cmd)
        if cmd[0] == "mount":
            raise OutputError("Connection refused")

    dest = NfsDestination(Target("nfs", server="10.0.2.2:/kdump"), runner=runner)
    with pytest.raises(OutputError):
        dest.open("h-2024-01-01-00:00:00")
    mnt = calls[0][-1]
    dest.close()
    assert [c[0] for c in calls] == ["mount"] and not os.path.exists(mnt)  # no umount of what never mounted


def test_lab_vm_network_is_user_mode_virtio(monkeypatch: pytest.MonkeyPatch) -> None:
    from kdumpkit.lab import qemu

    monkeypatch.setattr(qemu, "qemu_binary", lambda: "qemu-system-x86_64")
    cfg = qemu.VMConfig(Path("vmlinuz"), Path("initrd"), "console=ttyS0", 1024, [])
    assert "-netdev" not in cfg.command(Path("q.sock"))  # -nodefaults: no NIC unless asked
    cmd = qemu.VMConfig(Path("vmlinuz"), Path("initrd"), "", 1024, [], network=True).command(Path("q.sock"))
    assert cmd[cmd.index("-netdev") + 1] == "user,id=n0" and cmd[cmd.index("-device") + 1] == "virtio-net-pci,netdev=n0"
