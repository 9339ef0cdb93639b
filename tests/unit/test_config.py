"""The TOML configuration: defaults, fallback lists, targets, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpkit.errors import ConfigError
from kdumpkit.setup.config import Config, Keep, load_config, loads_config, parse_dump_levels, parse_size


def test_defaults() -> None:
    cfg = loads_config("")
    assert cfg == Config()
    assert cfg.targets[0].type == "local" and cfg.targets[0].path == "/var/crash"
    assert cfg.dump_levels == (31,) and cfg.final_action == "reboot" and not cfg.keep.active


@pytest.mark.parametrize(("value", "levels"), [(31, (31,)), ("11,31", (11, 31)), ([1, 31], (1, 31)), ("0", (0,))])
def test_dump_levels(value: object, levels: tuple[int, ...]) -> None:
    assert parse_dump_levels(value) == levels


@pytest.mark.parametrize("value", [32, -1, "a,31", "", [], True, 3.5])
def test_bad_dump_levels(value: object) -> None:
    with pytest.raises(ConfigError, match="dump_level"):
        parse_dump_levels(value)


def test_sizes() -> None:
    assert parse_size("20G", "x") == 20 << 30
    assert parse_size("512MiB", "x") == 512 << 20
    assert parse_size(4096, "x") == 4096
    with pytest.raises(ConfigError):
        parse_size("lots", "x")


FULL = """
dump_level = "11,31"
codec = "zstd"
format = "elf"
final_action = "poweroff"
failure_action = "dump_to_rootfs"
num_threads = 4

[[target]]
type = "ssh"
destination = "kdump@backup.example.org"
path = "/srv/crash"
key = "/root/.ssh/kdump_id_ed25519"
port = 2222

[[target]]
type = "nfs"
server = "filer:/export/crash"
path = "dumps"

[[target]]
type = "raw"
device = "/dev/vdb"

[[target]]
type = "local"
path = "/var/crash"

[keep]
count = 3
age_days = 14
size = "10G"
"""


def test_full_config(tmp_path: Path) -> None:
    p = tmp_path / "k.toml"
    p.write_text(FULL)
    cfg = load_config(str(p))
    assert [t.type for t in cfg.targets] == ["ssh", "nfs", "raw", "local"]
    ssh = cfg.targets[0]
    assert (ssh.user, ssh.host, ssh.port, ssh.path) == ("kdump", "backup.example.org", 2222, "/srv/crash")
    assert "id_ed25519" not in ssh.describe()  # no key material or key path in descriptions
    assert cfg.dump_levels == (11, 31) and cfg.codec == "zstd" and cfg.format == "elf"
    assert cfg.keep == Keep(count=3, age_days=14.0, size=10 << 30)
    assert cfg.failure_action == "dump_to_rootfs" and cfg.num_threads == 4


@pytest.mark.parametrize(("text", "message"), [
    ('codec = "gzip"', "codec"),
    ('final_action = "dump_to_rootfs"', "final_action"),
    ('frobnicate = 1', "unknown key"),
    ('[[target]]\ntype = "local"\npath = "relative"', "absolute"),
    ('[[target]]\ntype = "ssh"\ndestination = "u@h"', "key"),
    ('[[target]]\ntype = "ssh"\ndestination = "u@h"\nkey = "/k"\npassword = "x"', "password"),
    ('[[target]]\ntype = "nfs"\nserver = "nocolon"', "host:/export"),
    ('[[target]]\ntype = "raw"', "device"),
    ('[[target]]\ntype = "ftp"', r"target\[0\]\.type"),
    ('[keep]\ncount = -1', "keep"),
    ('[keep]\nsize = "big"', "keep.size"),
    ('num_threads = "many"', "num_threads"),
    ('dump_level = [', "<config>"),
])
def test_validation_messages(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        loads_config(text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "nope.toml"))


def test_other_tools_configs_point_to_config_import(tmp_path: Path) -> None:
    conf = tmp_path / "kdump.conf"
    conf.write_text("# kdump.conf\npath /var/crash\ncore_collector makedumpfile -l --message-level 7 -d 31\n")
    with pytest.raises(ConfigError, match="looks like kdump-utils' kdump.conf: translate it with kdumpkit config import"):
        load_config(str(conf))
    tools = tmp_path / "kdump-tools"
    tools.write_text('USE_KDUMP=1\nKDUMP_COREDIR="/var/crash"\nMAKEDUMP_ARGS="-c -d 31"\n')
    with pytest.raises(ConfigError, match="Debian's /etc/default/kdump-tools"):
        load_config(str(tools))
    bad = tmp_path / "bad.toml"
    bad.write_text("dump_level = = 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    assert "config import" not in str(e.value)
