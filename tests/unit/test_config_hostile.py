"""Config values that would break out of systemd units, /init or an ssh command line are refused at load time.

Each case is one clear :class:`ConfigError` naming the key, raised by
``kdumpkit config``/``setup`` in the running system — never a unit file with
a smuggled directive or a capture kernel that fails after the crash.
"""

from __future__ import annotations

import pytest

from kdumpkit.errors import ConfigError
from kdumpkit.setup.config import check_device, loads_config

SSH = '[[target]]\ntype = "ssh"\nkey = "/root/.ssh/k"\n'


@pytest.mark.parametrize(("text", "key"), [
    # control characters anywhere (TOML basic strings decode \n, \r, \t, \u escapes)
    ('[[target]]\ntype = "local"\npath = "/var/crash\\nExecStart=/bin/sh"', "target[0].path"),
    ('[[target]]\ntype = "local"\npath = "/var/crash\\r"', "target[0].path"),
    ('[extra]\ncmdline_append = "nr_cpus=1\\nExecStartPre=/bin/sh -c evil"', "extra.cmdline_append"),
    ('[extra]\ncmdline_append = "quiet\\u2028x"', "extra.cmdline_append"),
    ('rootfs_path = "/var/crash\\u0000"', "rootfs_path"),
    ('[extra.setup]\ncrashkernel = "256M\\n"', "extra.setup.crashkernel"),
    (SSH + 'destination = "kdump@backup"\nssh_options = ["BatchMode=yes", "X\\nY"]', "target[0].ssh_options[1]"),
    (SSH + 'destination = "kdump@backup"\nremote_command = "kdumpkit receive\\u001b[2J"', "target[0].remote_command"),
    ('"bad\\nkey" = 1', "key"),
    # paths: absolute and normalised
    ('rootfs_path = "var/crash"', "rootfs_path"),
    ('rootfs_path = "/var/../etc"', "rootfs_path"),
    ('[[target]]\ntype = "local"\npath = "/var/crash/../../etc"', "target[0].path"),
    ('[[target]]\ntype = "local"\npath = "crash"', "target[0].path"),
    (SSH + 'destination = "kdump@backup"\npath = "/srv/./crash"', "target[0].path"),
    (SSH + 'destination = "kdump@backup"\nknown_hosts = "/root/../known_hosts"', "target[0].known_hosts"),
    # ssh destination: never an option, never a shell word
    (SSH + 'host = "-oProxyCommand=sh"', "target[0].host"),
    (SSH + 'host = "-v"', "target[0].host"),
    (SSH + 'host = "back up"', "target[0].host"),
    (SSH + 'host = "a..b"', "target[0].host"),
    (SSH + 'host = "[not-v6]"', "target[0].host"),
    (SSH + 'destination = "kdump@-v"', "target[0].destination"),
    (SSH + 'destination = "-oX@backup"', "target[0].destination"),
    (SSH + 'host = "backup"\nuser = "-oProxyCommand=x"', "target[0].user"),
    (SSH + 'host = "backup"\nuser = "root;reboot"', "target[0].user"),
    (SSH + 'host = "backup"\nuser = "a b"', "target[0].user"),
    # raw device: an absolute path /init can read word by word
    ('[[target]]\ntype = "raw"\ndevice = "sdb2"', "target[0].device"),
    ('[[target]]\ntype = "raw"\ndevice = "/dev/../etc/passwd"', "target[0].device"),
    ('[[target]]\ntype = "raw"\ndevice = "/dev/sdb2 /dev/sda"', "target[0].device"),
    ('[[target]]\ntype = "raw"\ndevice = "/dev/sd$(reboot)"', "target[0].device"),
    ('[[target]]\ntype = "raw"\ndevice = "UUID=1234"', "target[0].device"),  # not resolved in the capture kernel
    # nfs
    ('[[target]]\ntype = "nfs"\nserver = "-o:/export"', "target[0].server"),
    ('[[target]]\ntype = "nfs"\nserver = "filer:/export/../etc"', "target[0].server"),
    ('[[target]]\ntype = "nfs"\nserver = "filer:/export"\nmount_options = "soft hard"', "target[0].mount_options"),
    ('[extra]\ncmdline_append = 3', "extra.cmdline_append"),
])
def test_hostile_value_is_one_config_error_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    msg = str(info.value)
    assert key in msg, msg
    assert "\n" not in msg and "\r" not in msg  # the error itself stays one line


@pytest.mark.parametrize(("text", "check"), [
    ('[[target]]\ntype = "local"\npath = "/var/crash/"', lambda c: c.targets[0].path == "/var/crash"),
    ('[[target]]\ntype = "local"\npath = "//srv//crash"', lambda c: c.targets[0].path == "/srv/crash"),
    ('rootfs_path = "/var/crash/"', lambda c: c.rootfs_path == "/var/crash"),
    (SSH + 'destination = "kdump@10.0.2.2"', lambda c: c.targets[0].host == "10.0.2.2"),
    (SSH + 'host = "[fe80::1]"\nuser = "kdump.user_1"', lambda c: c.targets[0].user == "kdump.user_1"),
    (SSH + 'host = "backup.example.org."', lambda c: c.targets[0].host == "backup.example.org."),
    (SSH + 'host = "my_host-2"', lambda c: c.targets[0].host == "my_host-2"),
    ('[[target]]\ntype = "raw"\ndevice = "/dev/disk/by-id/ata-SSD_860_S3Z1-part1"',
     lambda c: c.targets[0].device == "/dev/disk/by-id/ata-SSD_860_S3Z1-part1"),
    ('[[target]]\ntype = "raw"\ndevice = "/dev/disk/by-path/pci-0000:00:1f.2-ata-1"',
     lambda c: c.targets[0].device.endswith("pci-0000:00:1f.2-ata-1")),
    ('[[target]]\ntype = "nfs"\nserver = "10.0.0.5:/export/crash"\nmount_options = "port=2049,vers=4.1"',
     lambda c: c.targets[0].nfs_vers == "4.1"),
    ('[extra]\ncmdline_append = "nr_cpus=1 irqpoll foo=\\"a b\\""', lambda c: "irqpoll" in c.extra["cmdline_append"]),
    ('path_with_unicode = 1\n', None),
])
def test_ordinary_values_still_load(text: str, check: object) -> None:
    if check is None:  # unknown keys are still refused, by name
        with pytest.raises(ConfigError, match="path_with_unicode"):
            loads_config(text)
        return
    assert callable(check) and check(loads_config(text))


def test_non_ascii_paths_are_fine() -> None:
    cfg = loads_config('[[target]]\ntype = "local"\npath = "/srv/abstürze"')
    assert cfg.targets[0].path == "/srv/abstürze"


@pytest.mark.parametrize("spec", ["UUID=2f3c-11aa", "PARTUUID=0a1b2c3d-01", "LABEL=crash_disk", "/dev/vdb"])
def test_device_spec_forms(spec: str) -> None:
    """The by-id forms are known syntax (for mounts); raw targets take /dev paths only until /init resolves them."""
    assert check_device(spec, "device") == spec
    with pytest.raises(ConfigError, match="device"):
        check_device("LABEL=a b", "device")
