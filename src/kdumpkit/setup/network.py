"""Networking for the capture initramfs, added only when a target is ssh or nfs.

The capture kernel has no udev, NetworkManager or systemd-networkd, so this
is what dracut's ``ip=`` and kdump-tools' ``kdump-config`` do, in busybox:

* NIC drivers: the module of the interface carrying the building host's
  default route (``/sys/class/net/IF/device/driver/module``) plus
  ``[network] drivers``, with their dependencies (:func:`network_modules`);
* ``/etc/kdumpkit/network`` (shell variables) and ``udhcpc.script``: /init
  picks the interface (the building host's MAC first, else the first
  Ethernet one), brings it up and runs ``udhcpc`` or sets the static address,
  every wait bounded by ``wait_seconds`` (:data:`INIT_NETWORK`);
* NFS client modules for the configured version;
* for ssh: the host's ``ssh`` and its libraries, a root-only ``/etc/passwd``
  and ``/etc/group`` (ssh calls ``getpwuid``), the private key at its
  configured path (0600), and the server's host key in
  ``/etc/ssh/ssh_known_hosts`` (:func:`add_network_files`).

A network that does not come up is not fatal: /init says so and runs the
capture anyway, whose fallback chain then moves on to local or raw targets.
"""

from __future__ import annotations

import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from kdumpkit.errors import ConfigError, KdumpkitError
from kdumpkit.lab import cpio
from kdumpkit.setup.config import Config, Target
from kdumpkit.setup.runtime import ldd, stripped

SSH = "/usr/bin/ssh"
NETWORK_FILE = "etc/kdumpkit/network"
UDHCPC_SCRIPT_PATH = "etc/kdumpkit/udhcpc.script"
#: What ``mount -t nfs``/``nfs4`` needs in the kernel (dependencies such as
#: sunrpc, lockd, grace follow from .modinfo).
NFS_MODULES = {"3": ("nfsv3",), "4": ("nfsv4",)}
#: Root only: ssh resolves the running uid to a home directory and a name.
PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"
GROUP = b"root:x:0:\n"

UDHCPC_SCRIPT = r'''#!/bin/sh
# kdumpkit: busybox udhcpc hook.  $1 is the event; udhcpc exports interface, ip,
# mask (prefix length), router, dns, domain, mtu.
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set dev "$interface" up
        ;;
    bound|renew)
        [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        for r in $router; do
            ip route replace default via "$r" dev "$interface" && break
        done
        : >/etc/resolv.conf
        [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
        for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
        ;;
esac
exit 0
'''

#: Shell functions for the capture /init (busybox sh); ``network`` returns
#: non-zero when the network is not up within ``NET_WAIT`` seconds.
INIT_NETWORK = r'''
now() { cut -d. -f1 /proc/uptime; }
pick_iface() {
    case "$NET_IFACE" in
        auto)
            for want in $NET_MAC_HINT any; do
                for d in /sys/class/net/*; do
                    n=${d##*/}
                    [ "$n" = lo ] || [ "$(cat "$d/type" 2>/dev/null)" != 1 ] && continue
                    if [ "$want" = any ] || [ "$(cat "$d/address")" = "$want" ]; then echo "$n"; return 0; fi
                done
            done
            return 1 ;;
        *:*)
            for d in /sys/class/net/*; do
                [ "$(cat "$d/address" 2>/dev/null)" = "$NET_IFACE" ] && { echo "${d##*/}"; return 0; }
            done
            return 1 ;;
        *) [ -e "/sys/class/net/$NET_IFACE" ] && echo "$NET_IFACE" ;;
    esac
}
network() {
    . /etc/kdumpkit/network
    t0=$(cut -d' ' -f1 /proc/uptime)
    end=$(($(now) + NET_WAIT))
    ip link set lo up
    while ! ifc=$(pick_iface); do
        [ "$(now)" -ge $end ] && { say "phase=network status=failed reason=no-interface want=$NET_IFACE"; return 1; }
        sleep 0.2
    done
    ip link set dev "$ifc" up
    while [ "$(cat "/sys/class/net/$ifc/carrier" 2>/dev/null)" != 1 ]; do
        [ "$(now)" -ge $end ] && { say "phase=network status=failed reason=no-carrier iface=$ifc"; return 1; }
        sleep 0.2
    done
    if [ "$NET_ADDRESS" = dhcp ]; then
        left=$((end - $(now))); [ $left -lt 4 ] && left=4
        timeout "$left" udhcpc -i "$ifc" -f -q -n -t $(((left + 2) / 3)) -T 3 -s /etc/kdumpkit/udhcpc.script \
            >/tmp/udhcpc.log 2>&1 ||
            { say "phase=network status=failed reason=dhcp iface=$ifc: $(tail -n 1 /tmp/udhcpc.log)"; return 1; }
    else
        ip addr add "$NET_ADDRESS" dev "$ifc" ||
            { say "phase=network status=failed reason=address iface=$ifc"; return 1; }
        [ -z "$NET_GATEWAY" ] || ip route replace default via "$NET_GATEWAY" dev "$ifc"
        : >/etc/resolv.conf
        for d in $NET_DNS; do echo "nameserver $d" >>/etc/resolv.conf; done
    fi
    say "phase=network status=up iface=$ifc address=$(ip -4 -o addr show dev "$ifc" | awk '{print $4; exit}')" \
        "gateway=$(ip route | awk '/^default/ {print $3; exit}') start=$t0"
}
'''


@dataclass(frozen=True)
class HostNic:
    """The building host's default-route interface (the likely NIC of the crashing machine)."""

    name: str
    mac: str
    driver: str  # module name, "" when built in or virtual


@dataclass
class NetworkPlan:
    """What networking adds to the image, for the build output."""

    modules: list[str] = field(default_factory=list)
    optional: set[str] = field(default_factory=set)
    programs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def default_route_nic(proc_route: Path = Path("/proc/net/route"),
                      sys_net: Path = Path("/sys/class/net")) -> HostNic | None:
    """The interface of the IPv4 default route, its MAC and driver module (None: no default route)."""
    try:
        lines = proc_route.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
            name = fields[0]
            try:
                mac = (sys_net / name / "address").read_text().strip().lower()
            except OSError:
                mac = ""
            module = sys_net / name / "device" / "driver" / "module"
            driver = module.resolve().name if module.exists() else ""
            return HostNic(name, mac, driver)
    return None


def nfs_major(target: Target) -> str:
    return target.nfs_vers.split(".")[0]


def network_modules(cfg: Config, host: HostNic | None) -> NetworkPlan:
    """The modules networking needs: NIC drivers (the host's is optional), NFS client modules."""
    plan = NetworkPlan()
    if not cfg.needs_network:
        return plan
    if host is not None and host.driver:
        plan.modules.append(host.driver)
        plan.optional.add(host.driver)
        plan.notes.append(f"NIC driver {host.driver} (of {host.name}, this host's default route)")
    elif host is not None:
        plan.notes.append(f"{host.name} (this host's default route) has no driver module: give [network] drivers "
                          f"if the capture kernel needs one")
    for d in cfg.network.drivers:
        if d not in plan.modules:
            plan.modules.append(d)
    if cfg.network.drivers:
        plan.notes.append(f"NIC driver(s) {' '.join(cfg.network.drivers)} ([network] drivers)")
    if not plan.modules:
        plan.notes.append("no NIC driver module: the capture kernel must have its NIC driver built in")
    for t in cfg.targets:
        if t.type == "nfs":
            for m in NFS_MODULES[nfs_major(t)]:
                if m not in plan.modules:
                    plan.modules.append(m)
    return plan


def network_env(cfg: Config, host: HostNic | None) -> bytes:
    """``/etc/kdumpkit/network``: the ``[network]`` values as shell variables for /init."""
    net = cfg.network
    values = {
        "NET_IFACE": net.interface.lower() if ":" in net.interface else net.interface,
        "NET_MAC_HINT": host.mac if host is not None and net.interface == "auto" else "",
        "NET_ADDRESS": net.address,
        "NET_GATEWAY": net.gateway,
        "NET_DNS": " ".join(net.dns),
        "NET_WAIT": str(net.wait_seconds),
    }
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()).encode()


def add_network_files(tree: cpio.Tree, cfg: Config, host: HostNic | None, plan: NetworkPlan,
                      *, ssh: str = SSH) -> None:
    """The configuration, udhcpc hook and, for ssh targets, the client with its key and host keys."""
    tree.file(NETWORK_FILE, network_env(cfg, host))
    tree.file(UDHCPC_SCRIPT_PATH, UDHCPC_SCRIPT.encode(), 0o755)
    tree.file("etc/passwd", PASSWD)
    tree.file("etc/group", GROUP)
    ssh_targets = [t for t in cfg.targets if t.type == "ssh"]
    if ssh_targets:
        _add_ssh(tree, ssh)
        plan.programs.append("ssh")
        known = b""
        for t in ssh_targets:
            _add_key(tree, t.key)
            entries = _known_hosts(t)
            if not entries:
                plan.notes.append(f"no known_hosts entry for {t.host}: ssh in the capture kernel refuses it "
                                  f"unless ssh_options relax StrictHostKeyChecking")
            known += entries
        if known:
            tree.file("etc/ssh/ssh_known_hosts", known)
    for t in cfg.targets:
        if t.type == "nfs":
            plan.notes.append(f"NFS v{t.nfs_vers} client for {t.server}")
    how = "DHCP (udhcpc)" if cfg.network.dhcp else f"static {cfg.network.address}"
    plan.notes.append(f"network: interface {cfg.network.interface}, {how}, waits at most "
                      f"{cfg.network.wait_seconds} s")


def _add_ssh(tree: cpio.Tree, ssh: str) -> None:
    if not Path(ssh).is_file():
        raise KdumpkitError(f"{ssh} is missing: an ssh target needs the OpenSSH client (apt-get install "
                            f"openssh-client)")
    tree.file(ssh.lstrip("/"), stripped(ssh), 0o755)
    for lib in ldd(ssh):  # ldd lists the whole closure and the loader
        if lib not in tree:  # the Python runtime may have brought it already
            tree.file(lib, stripped(lib), 0o755)


def _add_key(tree: cpio.Tree, key: str) -> None:
    """The private key at its configured path, 0600 (its contents never go anywhere else)."""
    p = Path(key)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"ssh key {key}: {e.strerror}") from None
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"ssh key {key} is readable by others (chmod 600): ssh refuses such keys")
    parent = str(p.parent).strip("/")
    if parent and parent not in tree:
        tree.dir(parent, 0o700)
    tree.file(key.lstrip("/"), data, 0o600)


def _known_hosts(t: Target) -> bytes:
    """The target's host key lines: the configured file, else this host's entries for it."""
    if t.known_hosts:
        try:
            return Path(t.known_hosts).read_bytes()
        except OSError as e:
            raise ConfigError(f"known_hosts {t.known_hosts}: {e.strerror}") from None
    name = t.host if t.port == 22 else f"[{t.host}]:{t.port}"
    out = b""
    keygen = shutil.which("ssh-keygen")
    files = dict.fromkeys((Path("/root/.ssh/known_hosts"), Path.home() / ".ssh/known_hosts",
                           Path("/etc/ssh/ssh_known_hosts")))
    for f in files:
        if keygen is None or not f.is_file():
            continue
        p = subprocess.run([keygen, "-F", name, "-f", str(f)], capture_output=True, timeout=30)
        out += b"".join(ln + b"\n" for ln in p.stdout.splitlines() if ln and not ln.startswith(b"#"))
    return out
