"""kdumpkit config import: kdump-utils' kdump.conf and Debian's kdump-tools, translated and validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdumpkit.cli.main import main
from kdumpkit.errors import ConfigError
from kdumpkit.setup.config import loads_config
from kdumpkit.setup.importer import (
    detect_kind,
    fstab_mountpoint,
    import_file,
    parse_kdump_conf,
    parse_kdump_tools,
    render_toml,
    shell_vars,
)

# kdump-utils' generated kdump.conf on x86_64 (gen-kdump-conf.sh): comments plus three active lines.
KDUMP_CONF_DEFAULT = """\
# This file contains a series of commands to perform (in order) in the kdump
# kernel after a kernel crash in the crash kernel(1st kernel) has happened.
#raw /dev/vg/lv_kdump
#ext4 /dev/vg/lv_kdump
#ext4 LABEL=/boot
#ext4 UUID=03138356-5e61-4ab3-b58e-27507ac41937
#virtiofs myfs
#nfs my.server.com:/export/tmp
#nfs [2001:db8::1:2:3:4]:/export/tmp
#ssh user@my.server.com
#ssh user@2001:db8::1:2:3:4
#sshkey /root/.ssh/kdump_id_rsa
auto_reset_crashkernel yes
path /var/crash
core_collector makedumpfile -l --message-level 7 -d 31
#core_collector scp
#kdump_post /var/crash/scripts/kdump-post.sh
#kdump_pre /var/crash/scripts/kdump-pre.sh
#extra_bins /usr/bin/lftp
#extra_modules gfs2
#failure_action shell
#force_rebuild 1
#force_no_rebuild 1
#dracut_args --omit-drivers "cfg80211 snd" --add-drivers "ext2 ext3"
#fence_kdump_args -p 7410 -f auto -c 0 -i 10
#fence_kdump_nodes node1 node2
"""

# Debian's /etc/default/kdump-tools as shipped (kdump-tools.5 names every variable).
KDUMP_TOOLS_DEFAULT = """\
# kdump-tools configuration
USE_KDUMP=1
#KDUMP_SYSCTL="kernel.panic_on_oops=1"
#KDUMP_KERNEL=/var/lib/kdump/vmlinuz
#KDUMP_INITRD=/var/lib/kdump/initrd.img
KDUMP_COREDIR="/var/crash"
#KDUMP_FAIL_CMD="reboot -f"
#DEBUG_KERNEL=
#KDUMP_DUMP_DMESG=
#KDUMP_NUM_DUMPS=
#MAKEDUMP_ARGS="-c -d 31"
#KDUMP_KEXEC_ARGS=""
#KDUMP_CMDLINE=""
#KDUMP_CMDLINE_APPEND="reset_devices systemd.unit=kdump-tools-dump.service nr_cpus=1 irqpoll nousb"
#SSH="<user at host>"
#SSH_KEY="<path>"
#HOSTTAG="hostname|[ip]"
#NFS="<nfs mount>"
#NFS_TIMEO="600"
#NFS_RETRANS="3"
"""


def test_kdump_conf_default() -> None:
    imp = parse_kdump_conf(KDUMP_CONF_DEFAULT)
    cfg = imp.config()
    assert [t.describe() for t in cfg.targets] == ["local:/var/crash"]
    assert cfg.dump_levels == (31,) and cfg.codec == "lzo" and cfg.format == "kdump"
    assert any("auto_reset_crashkernel" in w for w in imp.warnings)
    assert any("--message-level" in w for w in imp.warnings)


def test_kdump_conf_without_collector_uses_kdump_utils_default() -> None:
    cfg = parse_kdump_conf("path /srv/dumps\n").config()
    assert cfg.codec == "lzo" and cfg.dump_levels == (31,)
    assert cfg.targets[0].path == "/srv/dumps"


def test_kdump_conf_ssh_target() -> None:
    imp = parse_kdump_conf("ssh kdump@backup.example.org\nsshkey /root/.ssh/kdump_id_ed25519\npath /srv/crash\n"
                           "core_collector makedumpfile -F -c --message-level 1 -d 11,31\n"
                           "failure_action poweroff\nfinal_action halt\n")
    cfg = imp.config()
    t = cfg.targets[0]
    assert (t.type, t.user, t.host, t.path, t.key) == ("ssh", "kdump", "backup.example.org", "/srv/crash",
                                                        "/root/.ssh/kdump_id_ed25519")
    assert cfg.codec == "zlib" and cfg.dump_levels == (11, 31)
    assert cfg.failure_action == "poweroff" and cfg.final_action == "halt"
    assert any("-F" in w for w in imp.warnings)


def test_kdump_conf_ssh_default_key_warns() -> None:
    imp = parse_kdump_conf("ssh root@10.0.0.1\n")
    assert imp.config().targets[0].key == "/root/.ssh/kdump_id_rsa"
    assert any("sshkey" in w for w in imp.warnings)


def test_kdump_conf_nfs_raw_and_multiple_targets() -> None:
    imp = parse_kdump_conf("nfs nfs.example.org:/export/dumps\nraw /dev/vdb1\npath /kdump\n")
    cfg = imp.config()
    assert [t.describe() for t in cfg.targets] == ["nfs:nfs.example.org:/export/dumps:/kdump", "raw:/dev/vdb1"]
    assert any("more than one dump target" in w for w in imp.warnings)


def test_kdump_conf_fs_target_resolved_through_fstab() -> None:
    fstab = "UUID=0313-abcd  /var/crash-disk  ext4  defaults 0 2\nLABEL=boot /boot ext4 defaults 0 2\n"
    imp = parse_kdump_conf("ext4 UUID=0313-abcd\npath /dumps\n", fstab=fstab)
    assert imp.config().targets[0].path == "/var/crash-disk/dumps"
    assert not any("fstab" in w for w in imp.warnings)
    imp = parse_kdump_conf("xfs LABEL=nowhere\n")
    assert imp.config().targets[0].path == "/var/crash"
    assert any("not found in /etc/fstab" in w for w in imp.warnings)


def test_fstab_mountpoint_forms() -> None:
    fstab = '# comment\n/dev/sdb1 /mnt/a ext4 defaults 0 0\nUUID="abc" /mnt/b xfs defaults 0 0\n'
    assert fstab_mountpoint(fstab, "/dev/sdb1") == "/mnt/a"
    assert fstab_mountpoint(fstab, "uuid=abc") == "/mnt/b"
    assert fstab_mountpoint(fstab, "/dev/sdc") is None


def test_kdump_conf_actions_modules_hooks_and_unknown() -> None:
    imp = parse_kdump_conf("default dump_to_rootfs\npath /var/crash2\nextra_modules gfs2 nvme\n"
                           "extra_modules gfs2 dm_crypt\nkdump_pre /usr/local/bin/pre.sh\n"
                           "kdump_post /usr/local/bin/post.sh\ndracut_args --secret hunter2\n"
                           "fence_kdump_args -p 7410 --password s3cret\nwhatever_option topsecret\n")
    cfg = imp.config()
    assert cfg.failure_action == "dump_to_rootfs" and cfg.rootfs_path == "/var/crash2"
    assert cfg.extra["extra_modules"] == ["gfs2", "nvme", "dm_crypt"]
    text = "\n".join(imp.warnings)
    assert "deprecated" in text and "kdump_pre /usr/local/bin/pre.sh" in text and "kdump_post" in text
    assert "dracut_args" in text and "fence_kdump_args" in text and "'whatever_option'" in text
    # values of options that may hold secrets are never copied, neither in warnings nor in the TOML
    for secret in ("hunter2", "s3cret", "topsecret"):
        assert secret not in text and secret not in imp.to_toml()


def test_kdump_conf_collector_variants() -> None:
    cfg = parse_kdump_conf("core_collector makedumpfile -E -d 1\n").config()
    assert cfg.format == "elf" and cfg.codec == "none" and cfg.dump_levels == (1,)
    cfg = parse_kdump_conf("core_collector makedumpfile -z --num-threads=4 --dump-level=17\n").config()
    assert cfg.codec == "zstd" and cfg.num_threads == 4 and cfg.dump_levels == (17,)
    cfg = parse_kdump_conf("core_collector makedumpfile -p -d11\n").config()
    assert cfg.codec == "snappy" and cfg.dump_levels == (11,)
    imp = parse_kdump_conf("core_collector scp\n")
    assert imp.config().codec == "lzo"  # kdumpkit's own defaults replace it
    assert any("scp" in w for w in imp.warnings)
    imp = parse_kdump_conf("core_collector makedumpfile -l -d 31 -L 2G --bogus\n")
    assert any("-L" in w for w in imp.warnings) and any("--bogus" in w for w in imp.warnings)


@pytest.mark.parametrize("text", ["failure_action explode\n", "core_collector makedumpfile -d 40\n",
                                  "nfs no-export-here\n", "raw\n"])
def test_kdump_conf_invalid(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_kdump_conf(text)


def test_kdump_tools_default() -> None:
    imp = parse_kdump_tools(KDUMP_TOOLS_DEFAULT)
    cfg = imp.config()
    assert [t.describe() for t in cfg.targets] == ["local:/var/crash"]
    assert cfg.codec == "zlib" and cfg.dump_levels == (31,)  # MAKEDUMP_ARGS default "-c -d 31"
    assert imp.warnings == []


def test_kdump_tools_everything() -> None:
    text = """\
USE_KDUMP=1
KDUMP_SYSCTL="kernel.panic_on_oops=1 kernel.softlockup_panic=1 vm.something=3"
KDUMP_KERNEL=/var/lib/kdump/vmlinuz
KDUMP_INITRD=/var/lib/kdump/initrd.img
KDUMP_COREDIR="/srv/crash"
KDUMP_FAIL_CMD="reboot -f"
DEBUG_KERNEL=/usr/lib/debug/vmlinux
KDUMP_DUMP_DMESG=0
KDUMP_NUM_DUMPS=3
MAKEDUMP_ARGS="-l -d 31"
KDUMP_KEXEC_ARGS="-s"
KDUMP_CMDLINE_APPEND="reset_devices systemd.unit=kdump-tools-dump.service nr_cpus=1 irqpoll nousb"
SSH="kdump@backup.example.org"
SSH_KEY="/root/.ssh/kdump_id_ed25519"
HOSTTAG="hostname"
NFS="nas:/export/crash"
NFS_TIMEO="600"
NFS_RETRANS="3"
FTP_PASSWORD="supersecret"
MYSTERY="alsosecret"
"""
    imp = parse_kdump_tools(text)
    cfg = imp.config()
    assert [t.describe() for t in cfg.targets] == ["ssh:kdump@backup.example.org:/srv/crash",
                                                   "nfs:nas:/export/crash:/"]
    assert cfg.targets[0].key == "/root/.ssh/kdump_id_ed25519"
    assert cfg.targets[1].mount_options == "soft,tcp,nolock,timeo=600,retrans=3"
    assert cfg.keep.count == 3 and cfg.dmesg is False and cfg.failure_action == "reboot"
    assert cfg.codec == "lzo" and cfg.rootfs_path == "/srv/crash"
    assert cfg.extra["cmdline_append"] == "nousb"
    assert cfg.extra["setup"] == {"panic_on_oops": True, "softlockup_panic": True}
    text_w = "\n".join(imp.warnings)
    for name in ("KDUMP_KERNEL", "KDUMP_INITRD", "DEBUG_KERNEL", "KDUMP_KEXEC_ARGS", "HOSTTAG", "FTP_PASSWORD",
                 "MYSTERY", "vm.something", "systemd.unit=kdump-tools-dump.service", "both SSH and NFS"):
        assert name in text_w, name
    for secret in ("supersecret", "alsosecret"):
        assert secret not in text_w and secret not in imp.to_toml()


def test_kdump_tools_fail_cmd_and_disabled() -> None:
    imp = parse_kdump_tools('USE_KDUMP=0\nKDUMP_FAIL_CMD="/bin/sh"\n')
    assert imp.config().failure_action == "shell"
    assert any("USE_KDUMP=0" in w for w in imp.warnings)
    imp = parse_kdump_tools('USE_KDUMP=1\nKDUMP_FAIL_CMD="/usr/local/bin/page-oncall"\n')
    assert imp.config().failure_action == "reboot"
    assert any("page-oncall" in w for w in imp.warnings)


def test_kdump_tools_invalid() -> None:
    with pytest.raises(ConfigError):
        parse_kdump_tools('USE_KDUMP=1\nNFS="nas-without-path"\n')
    with pytest.raises(ConfigError):
        parse_kdump_tools('USE_KDUMP=1\nKDUMP_NUM_DUMPS=many\n')


def test_shell_vars_quotes_and_junk() -> None:
    values, other = shell_vars('A="x y" # c\nexport B=\'z\'\nif true; then\n')
    assert values == {"A": "x y", "B": "z"}
    assert len(other) == 1 and "line 3" in other[0]


def test_detect_kind() -> None:
    assert detect_kind(KDUMP_TOOLS_DEFAULT) == "kdump-tools"
    assert detect_kind(KDUMP_CONF_DEFAULT) == "kdump.conf"


def test_render_toml_roundtrip_nested_extra() -> None:
    data = {"codec": "zstd", "dump_level": "11,31", "target": [{"type": "local", "path": "/a \"b\""}],
            "keep": {"count": 2}, "extra": {"cmdline_append": "nousb", "setup": {"sysrq": 1}}}
    cfg = loads_config(render_toml(data, header=["two\nlines"]))
    assert cfg.targets[0].path == '/a "b"' and cfg.extra["setup"] == {"sysrq": 1} and cfg.keep.count == 2


def test_import_file_default_search(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to import"):
        import_file(root=tmp_path)
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/kdump-tools").write_text(KDUMP_TOOLS_DEFAULT)
    assert import_file(root=tmp_path).kind == "kdump-tools"
    (tmp_path / "etc/kdump.conf").write_text("ext4 UUID=abc\n")
    (tmp_path / "etc/fstab").write_text("UUID=abc /data ext4 defaults 0 0\n")
    imp = import_file(root=tmp_path)
    assert imp.kind == "kdump.conf" and imp.config().targets[0].path == "/data/var/crash"


def test_cli_import_stdout_file_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "kdump.conf"
    src.write_text(KDUMP_CONF_DEFAULT + "kdump_post /x.sh\n")
    assert main(["config", "import", "--from", str(src)]) == 0
    out, err = capsys.readouterr()
    assert 'codec = "lzo"' in out and "warning: " in err and "kdump_post" in err
    dest = tmp_path / "kdumpkit.toml"
    assert main(["config", "import", "--from", str(src), "-o", str(dest)]) == 0
    assert loads_config(dest.read_text()).codec == "lzo"
    assert (dest.stat().st_mode & 0o777) == 0o600
    assert main(["config", "import", "--from", str(src), "-o", str(dest)]) == 1  # no clobbering
    assert "exists" in capsys.readouterr().err
    assert main(["config", "import", "--from", str(src), "-o", str(dest), "--force", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "kdump.conf" and data["config"]["codec"] == "lzo" and data["warnings"]
    assert main(["config", "check", str(dest)]) == 0
    assert "local:/var/crash" in capsys.readouterr().out


def test_cli_import_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "import", "--from", str(tmp_path / "missing.conf")]) == 2
    bad = tmp_path / "bad.conf"
    bad.write_text("failure_action explode\n")
    assert main(["config", "import", "--from", str(bad)]) == 2
    assert "explode" in capsys.readouterr().err
    badtoml = tmp_path / "bad.toml"
    badtoml.write_text('[extra.setup]\nbogus = true\n')
    assert main(["config", "check", str(badtoml)]) == 2
