"""The kdumpkit configuration (TOML): where dumps go, how they are filtered, what happens after.

kdump.conf allows one target plus a ``failure_action``; here ``[[target]]``
entries form a fallback chain tried in order (ssh → nfs → local → raw, or
whatever order the admin writes).  Everything is validated when loaded, in the
running system, so a typo is reported by ``kdumpkit`` at setup time and not
discovered inside the capture kernel after a crash.

Example::

    dump_level = "11,31"        # or 31, or [11, 31]: next level on ENOSPC
    codec = "lzo"               # zlib | lzo | snappy | zstd | none
    format = "kdump"            # kdump | elf (network and raw targets always stream flattened)
    final_action = "reboot"     # reboot | halt | poweroff | shell
    failure_action = "reboot"   # reboot | halt | poweroff | shell | dump_to_rootfs

    [[target]]
    type = "ssh"
    destination = "kdump@backup.example.org"
    path = "/var/crash"
    key = "/root/.ssh/kdump_id_ed25519"
    # known_hosts = "/root/.ssh/known_hosts"   # default: this host's entries for the target

    [[target]]
    type = "nfs"
    server = "10.0.0.5:/export/crash"   # an IP, or a name resolved in the capture kernel
    version = "4"                       # 4 | 4.0 | 4.1 | 4.2 | 3 (3 needs rpcbind + mountd)
    mount_options = "port=2049"         # added unless given: vers, addr, soft, timeo=100, retrans=3, nolock

    [[target]]
    type = "local"
    path = "/var/crash"

    [network]                   # only used when a target is ssh or nfs
    interface = "auto"          # auto | eth0 | 52:54:00:12:34:56 (auto: the building host's NIC by MAC, else
                                # the first Ethernet interface that appears)
    address = "dhcp"            # dhcp (busybox udhcpc) | 10.0.2.15/24
    # gateway = "10.0.2.2"      # with a static address only
    # dns = ["10.0.2.3"]        # with a static address only (DHCP brings its own)
    wait_seconds = 30           # link + address, bounded: no network is a failed target, never a hang
    drivers = ["virtio_net"]    # NIC modules besides the building host's default-route driver

    [keep]
    count = 5
    age_days = 30
    size = "20G"
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from kdumpkit.errors import ConfigError

CODECS = ("zlib", "lzo", "snappy", "zstd", "none")
FORMATS = ("kdump", "elf")
FINAL_ACTIONS = ("reboot", "halt", "poweroff", "shell")
FAILURE_ACTIONS = (*FINAL_ACTIONS, "dump_to_rootfs")
TARGET_TYPES = ("local", "raw", "ssh", "nfs")
NETWORK_TARGETS = ("ssh", "nfs")
NFS_VERSIONS = ("3", "4", "4.0", "4.1", "4.2")
DEFAULT_PATH = "/var/crash"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DEST_RE = re.compile(r"^(?:([A-Za-z0-9._-]+)@)?([A-Za-z0-9._:\[\]-]+)$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_MODULE_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_VERS_RE = re.compile(r"(?:^|,)(?:nfs)?vers=([0-9.]+)(?:,|$)")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}$")
_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_DEV_RE = re.compile(r"^(?:/[A-Za-z0-9._+:@=,-]+)+$")  # /init reads the device list word by word: no spaces
_DEVICE_SPEC_RE = re.compile(r"^(?:UUID=[0-9A-Fa-f-]{1,64}|PARTUUID=[0-9A-Fa-f-]{1,64}|LABEL=[A-Za-z0-9._+:@,-]{1,64})$")
_MOUNT_OPTS_RE = re.compile(r"^[A-Za-z0-9_.,=:/+-]*$")
_BREAKS_LINES = ("Cc", "Zl", "Zp")  # control characters and the Unicode line/paragraph separators


@dataclass(frozen=True)
class Target:
    """One place a dump can go.  Only the fields of its ``type`` are meaningful."""

    type: str
    path: str = DEFAULT_PATH  # local dir; ssh remote dir; nfs dir under the mount
    device: str = ""  # raw
    user: str = ""  # ssh
    host: str = ""  # ssh
    port: int = 22  # ssh
    key: str = ""  # ssh private key (never copied into manifests)
    connect_timeout: int = 10  # ssh, seconds
    ssh_options: tuple[str, ...] = ()
    remote_command: str = "kdumpkit receive"  # ssh: what the key is restricted to
    known_hosts: str = ""  # ssh: file with the server's host key (default: this host's entries for it)
    server: str = ""  # nfs "host:/export"
    mount_options: str = ""  # nfs
    nfs_version: str = "4"  # nfs: "3", "4", "4.x" (vers= in mount_options wins)

    @property
    def nfs_vers(self) -> str:
        """The NFS version the mount uses: ``vers=``/``nfsvers=`` in mount_options, else ``version``."""
        m = _VERS_RE.search(self.mount_options)
        return m.group(1) if m else self.nfs_version

    def describe(self) -> str:
        """A one-line name without secrets (keys are files, never printed contents)."""
        if self.type == "local":
            return f"local:{self.path}"
        if self.type == "raw":
            return f"raw:{self.device}"
        if self.type == "ssh":
            who = f"{self.user}@" if self.user else ""
            return f"ssh:{who}{self.host}:{self.path}"
        return f"nfs:{self.server}:{self.path}"


@dataclass(frozen=True)
class Keep:
    """Retention per target directory: any limit that is set applies (0 = unlimited)."""

    count: int = 0
    age_days: float = 0.0
    size: int = 0  # bytes

    @property
    def active(self) -> bool:
        return bool(self.count or self.age_days or self.size)


@dataclass(frozen=True)
class Network:
    """How the capture kernel reaches ssh/nfs targets (``[network]``; ignored without one).

    Small on purpose, like kdump-tools' and dracut's ``ip=``: one interface,
    DHCP or one static IPv4 address.  Every wait in the capture kernel is
    bounded by ``wait_seconds``.
    """

    interface: str = "auto"
    address: str = "dhcp"
    gateway: str = ""
    dns: tuple[str, ...] = ()
    wait_seconds: int = 30
    drivers: tuple[str, ...] = ()

    @property
    def dhcp(self) -> bool:
        return self.address == "dhcp"


@dataclass(frozen=True)
class Config:
    targets: tuple[Target, ...] = (Target("local"),)
    dump_levels: tuple[int, ...] = (31,)
    codec: str = "lzo"
    format: str = "kdump"
    final_action: str = "reboot"
    failure_action: str = "reboot"
    rootfs_path: str = DEFAULT_PATH
    num_threads: int = 0  # 0: one per online CPU
    dmesg: bool = True
    selfcheck: bool = True
    keep: Keep = field(default_factory=Keep)
    network: Network = field(default_factory=Network)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_network(self) -> bool:
        """An ssh or nfs target: the capture initramfs must bring a NIC up."""
        return any(t.type in NETWORK_TARGETS for t in self.targets)

    @property
    def codec_or_none(self) -> str | None:
        return None if self.codec == "none" else self.codec


def parse_dump_levels(value: object, where: str = "dump_level") -> tuple[int, ...]:
    """``31``, ``"11,31"`` or ``[11, 31]`` → ``(11, 31)``; each level 0..31."""
    items: list[object]
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a level 0-31 or a list, not {value!r}")
    if isinstance(value, int):
        items = [value]
    elif isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise ConfigError(f"{where}: expected a level 0-31 or a list, not {value!r}")
    if not items:
        raise ConfigError(f"{where}: no dump level given")
    levels: list[int] = []
    for item in items:
        try:
            level = int(item) if not isinstance(item, bool) else -1  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {item!r} is not a dump level (0-31)") from None
        if not 0 <= level <= 31:
            raise ConfigError(f"{where}: dump level {level} is outside 0-31")
        levels.append(level)
    return tuple(levels)


def parse_size(value: object, where: str) -> int:
    """Bytes from ``1048576``, ``"512M"``, ``"20G"``, ``"1.5GiB"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size such as 20G, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where}: size must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ConfigError(f"{where}: expected a size such as 20G, not {value!r}")


def _take(table: dict[str, Any], key: str, types: type | tuple[type, ...], where: str, default: Any) -> Any:
    if key not in table:
        return default
    value = table.pop(key)
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigError(f"{where}.{key}: expected {_tname(types)}, not {value!r}")
    if not isinstance(value, types):
        raise ConfigError(f"{where}.{key}: expected {_tname(types)}, not {value!r}")
    return value


def _tname(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in ts)


def _choice(value: str, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def _no_leftovers(table: dict[str, Any], where: str) -> None:
    if table:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(table))}")


def check_printable(value: object, where: str) -> None:
    """No control character (newline, tab, ESC, NUL …) in any key or string of ``value``, recursively.

    Config values end up in systemd units, the capture initramfs' shell
    scripts and kernel command lines, where a newline starts a new
    directive; no legitimate value contains one.
    """
    if isinstance(value, str):
        bad = next((ch for ch in value if unicodedata.category(ch) in _BREAKS_LINES), None)
        if bad is not None:
            raise ConfigError(f"{where}: control character {bad!r} in {value[:60]!r}")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_printable(k, f"{where}: key" if where else "key")
            check_printable(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_printable(v, f"{where}[{i}]")


def check_path(value: str, where: str, *, absolute: bool = True) -> str:
    """An absolute path without ``.``/``..`` components, returned normalised (``//`` and a final ``/`` folded)."""
    if absolute and not value.startswith("/"):
        raise ConfigError(f"{where}: {value!r} must be an absolute path")
    if any(part in (".", "..") for part in value.split("/")):
        raise ConfigError(f"{where}: {value!r} must not contain . or .. components")
    norm = posixpath.normpath(value)
    return "/" + norm.lstrip("/") if norm.startswith("/") else norm


def check_host(value: str, where: str) -> str:
    """A DNS name, an IPv4 address or an IPv6 address (bare or in brackets) — never an ssh option."""
    inner = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(inner)
        return value
    except ValueError:
        if inner is not value:
            raise ConfigError(f"{where}: {value!r} is not an IPv6 address in brackets") from None
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if len(value) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise ConfigError(f"{where}: {value!r} is not a host name or IP address")
    return value


def check_user(value: str, where: str) -> str:
    if not _USER_RE.match(value):
        raise ConfigError(f"{where}: {value!r} is not a user name (letters, digits, . _ -; not starting with -)")
    return value


def check_device(value: str, where: str, *, by_id: bool = True) -> str:
    """``/dev/…`` (any absolute path: a raw target may be a preallocated file), normalised, no ``..``;
    with ``by_id`` also the ``UUID=``, ``PARTUUID=`` and ``LABEL=`` forms."""
    if by_id and _DEVICE_SPEC_RE.match(value):
        return value
    if not value.startswith("/"):
        forms = "a /dev path or UUID=/PARTUUID=/LABEL=" if by_id else "a /dev path such as /dev/sdb2"
        raise ConfigError(f"{where}: expected {forms}, not {value!r}")
    path = check_path(value, where)
    if not _DEV_RE.match(path):
        raise ConfigError(f"{where}: {value!r} is not a device path (letters, digits and ._+:@=,- only)")
    return path


def parse_target(raw: object, index: int) -> Target:
    where = f"target[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    t = dict(raw)
    kind = _choice(_take(t, "type", str, where, ""), TARGET_TYPES, f"{where}.type")
    path = _take(t, "path", str, where, DEFAULT_PATH)
    if not path:
        raise ConfigError(f"{where}.path: empty")
    path = check_path(path, f"{where}.path", absolute=kind != "nfs")  # nfs: a directory under the export
    if kind == "local":
        target = Target("local", path=path)
    elif kind == "raw":
        device = _take(t, "device", str, where, "")
        if not device:
            raise ConfigError(f"{where}.device: a device path such as /dev/sdb2 is required")
        # UUID=/LABEL= are not resolved by the capture kernel's /init nor the raw writer (yet): /dev paths only
        target = Target("raw", device=check_device(device, f"{where}.device", by_id=False))
    elif kind == "ssh":
        target = _ssh_target(t, where, path)
    else:
        server = _take(t, "server", str, where, "")
        if ":/" not in server:
            raise ConfigError(f"{where}.server: expected host:/export, not {server!r}")
        host, export = server.split(":/", 1)
        check_host(host, f"{where}.server")
        check_path("/" + export, f"{where}.server")
        opts = _take(t, "mount_options", str, where, "")
        if not _MOUNT_OPTS_RE.match(opts):
            raise ConfigError(f"{where}.mount_options: {opts!r} is not a comma-separated option list")
        version = _take(t, "version", (str, int, float), where, "4")
        version = _choice(str(version), NFS_VERSIONS, f"{where}.version")
        target = Target("nfs", path=path, server=server, mount_options=opts, nfs_version=version)
        if target.nfs_vers.split(".")[0] not in ("3", "4"):
            raise ConfigError(f"{where}.mount_options: NFS version {target.nfs_vers} is not supported (3 or 4)")
    _no_leftovers(t, where)
    return target


def _ssh_target(t: dict[str, Any], where: str, path: str) -> Target:
    dest = _take(t, "destination", str, where, "")
    user = _take(t, "user", str, where, "")
    host = _take(t, "host", str, where, "")
    if dest:
        m = _DEST_RE.match(dest)
        if not m:
            raise ConfigError(f"{where}.destination: expected user@host, not {dest!r}")
        if m.group(1):
            check_user(m.group(1), f"{where}.destination")
        check_host(m.group(2), f"{where}.destination")
        user = user or (m.group(1) or "")
        host = m.group(2)
    if not host:
        raise ConfigError(f"{where}: ssh needs destination = \"user@host\" (or host =)")
    check_host(host, f"{where}.host")
    if user:
        check_user(user, f"{where}.user")
    port = _take(t, "port", int, where, 22)
    if not 0 < port < 65536:
        raise ConfigError(f"{where}.port: {port} is not a TCP port")
    key = _take(t, "key", str, where, "")
    if not key:
        raise ConfigError(f"{where}.key: ssh needs a private key file (BatchMode: no passwords in the capture kernel)")
    timeout = _take(t, "connect_timeout", int, where, 10)
    if timeout <= 0:
        raise ConfigError(f"{where}.connect_timeout: must be positive")
    options = _take(t, "ssh_options", list, where, [])
    if not all(isinstance(o, str) for o in options):
        raise ConfigError(f"{where}.ssh_options: expected a list of strings")
    remote = _take(t, "remote_command", str, where, "kdumpkit receive")
    known_hosts = _take(t, "known_hosts", str, where, "")
    if known_hosts:
        known_hosts = check_path(known_hosts, f"{where}.known_hosts")
    for secret in ("password", "passphrase"):
        if secret in t:
            raise ConfigError(f"{where}.{secret}: passwords are not supported; use a key restricted to "
                              f"'kdumpkit receive' in authorized_keys")
    return Target("ssh", path=path, user=user, host=host, port=port, key=key, connect_timeout=timeout,
                  ssh_options=tuple(options), remote_command=remote, known_hosts=known_hosts)


def parse_keep(raw: object) -> Keep:
    if not isinstance(raw, dict):
        raise ConfigError("keep: expected a table with count, age_days and/or size")
    t = dict(raw)
    count = _take(t, "count", int, "keep", 0)
    age = _take(t, "age_days", (int, float), "keep", 0)
    size = parse_size(t.pop("size"), "keep.size") if "size" in t else 0
    if count < 0 or age < 0:
        raise ConfigError("keep: count and age_days must not be negative")
    _no_leftovers(t, "keep")
    return Keep(count=count, age_days=float(age), size=size)


def parse_network(raw: object) -> Network:
    """``[network]``: one-line errors for every field."""
    if not isinstance(raw, dict):
        raise ConfigError("network: expected a table")
    t = dict(raw)
    where = "network"
    iface = _take(t, "interface", str, where, "auto")
    if iface != "auto" and not (_IFNAME_RE.match(iface) or _MAC_RE.match(iface)):
        raise ConfigError(f"network.interface: {iface!r} is not auto, an interface name or a MAC address")
    address = _take(t, "address", str, where, "dhcp")
    if address != "dhcp":
        _ipv4(address, "network.address", interface=True)
    gateway = _take(t, "gateway", str, where, "")
    dns_raw = _take(t, "dns", (str, list), where, [])
    dns = [dns_raw] if isinstance(dns_raw, str) else dns_raw
    if address == "dhcp" and (gateway or dns):
        raise ConfigError("network: gateway and dns go with a static address (DHCP brings its own)")
    if gateway:
        _ipv4(gateway, "network.gateway")
    for d in dns:
        if not isinstance(d, str):
            raise ConfigError(f"network.dns: expected addresses, not {d!r}")
        _ipv4(d, "network.dns")
    wait = _take(t, "wait_seconds", int, where, 30)
    if not 1 <= wait <= 600:
        raise ConfigError(f"network.wait_seconds: {wait} is outside 1-600")
    drivers = _take(t, "drivers", list, where, [])
    if not all(isinstance(d, str) and _MODULE_RE.match(d) for d in drivers):
        raise ConfigError("network.drivers: expected a list of kernel module names")
    _no_leftovers(t, where)
    return Network(interface=iface, address=address, gateway=gateway, dns=tuple(dns), wait_seconds=wait,
                   drivers=tuple(drivers))


def _ipv4(value: str, where: str, *, interface: bool = False) -> None:
    """An IPv4 address (``interface``: with its /prefix), else a one-line ConfigError."""
    try:
        ip = ipaddress.ip_interface(value) if interface else ipaddress.ip_address(value)
    except ValueError:
        want = "an IPv4 address with its prefix, such as 10.0.2.15/24, or dhcp" if interface else "an IPv4 address"
        raise ConfigError(f"{where}: {value!r} is not {want}") from None
    if ip.version != 4:
        raise ConfigError(f"{where}: {value!r}: only IPv4 is supported in the capture kernel")
    if interface and "/" not in value:
        raise ConfigError(f"{where}: {value!r} needs a prefix length, such as /24")


def parse_config(data: dict[str, Any]) -> Config:
    """Validate a decoded TOML document and fill in defaults."""
    check_printable(data, "")
    d = dict(data)
    where = "config"
    levels = parse_dump_levels(d.pop("dump_level"), "dump_level") if "dump_level" in d else (31,)
    codec = _choice(_take(d, "codec", str, where, "lzo"), CODECS, "codec")
    fmt = _choice(_take(d, "format", str, where, "kdump"), FORMATS, "format")
    final = _choice(_take(d, "final_action", str, where, "reboot"), FINAL_ACTIONS, "final_action")
    failure = _choice(_take(d, "failure_action", str, where, "reboot"), FAILURE_ACTIONS, "failure_action")
    rootfs = check_path(_take(d, "rootfs_path", str, where, DEFAULT_PATH), "rootfs_path")
    threads = _take(d, "num_threads", int, where, 0)
    if threads < 0:
        raise ConfigError("num_threads: must not be negative (0 = one per CPU)")
    dmesg = _take(d, "dmesg", bool, where, True)
    selfcheck = _take(d, "selfcheck", bool, where, True)
    raw_targets = d.pop("target", [{"type": "local", "path": DEFAULT_PATH}])
    if not isinstance(raw_targets, list) or not raw_targets:
        raise ConfigError("target: expected one or more [[target]] tables")
    targets = tuple(parse_target(t, i) for i, t in enumerate(raw_targets))
    keep = parse_keep(d.pop("keep")) if "keep" in d else Keep()
    network = parse_network(d.pop("network")) if "network" in d else Network()
    extra = _take(d, "extra", dict, where, {})
    if not isinstance(extra.get("cmdline_append", ""), str):
        raise ConfigError("extra.cmdline_append: expected a string")
    _no_leftovers(d, where)
    return Config(targets=targets, dump_levels=levels, codec=codec, format=fmt, final_action=final,
                  failure_action=failure, rootfs_path=rootfs, num_threads=threads, dmesg=dmesg,
                  selfcheck=selfcheck, keep=keep, network=network, extra=extra)


def loads_config(text: str, name: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{name}: {e}") from None
    try:
        return parse_config(data)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None


def load_config(path: str) -> Config:
    """Read and validate the TOML file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return loads_config(text, path)
