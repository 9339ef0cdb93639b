"""Import an existing kdump configuration: kdump-utils' ``kdump.conf`` or Debian's ``/etc/default/kdump-tools``.

Why an importer and not a "compatible mode": kdumpkit's TOML has a different
shape (a fallback chain of targets, retention for every target), so the old
file is translated once, shown to the admin, and validated with the same
loader the capture kernel uses.  Anything that has no kdumpkit equivalent
becomes one warning line (and a comment in the output), never a silent drop.

Secrets: the output carries key *paths* only.  Warnings name options but
repeat their values only for options known to hold nothing sensitive
(script paths, module names), because ``fence_kdump_args``, ``dracut_args``
or an ``FTP_PASSWORD`` may carry credentials.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdumpkit.errors import ConfigError
from kdumpkit.setup.config import DEFAULT_PATH, Config, loads_config

KDUMP_CONF = "/etc/kdump.conf"
KDUMP_TOOLS = "/etc/default/kdump-tools"
SOURCES = (KDUMP_CONF, KDUMP_TOOLS)

#: kdump-utils' default when ``core_collector`` is absent (kdump.conf.5).
KDUMP_UTILS_COLLECTOR = "makedumpfile -l --message-level 7 -d 31"
#: kdump-tools' default ``MAKEDUMP_ARGS`` (kdump-tools.5).
KDUMP_TOOLS_MAKEDUMP_ARGS = "-c -d 31"
#: Both tools' default ssh key.
DEFAULT_SSH_KEY = "/root/.ssh/kdump_id_rsa"
LOCAL_FSTYPES = ("ext2", "ext3", "ext4", "xfs", "btrfs", "minix", "virtiofs")
_CODEC_FLAGS = {"-c": "zlib", "-l": "lzo", "-p": "snappy", "-z": "zstd"}


@dataclass
class Imported:
    """The translated configuration: TOML data, the warnings, and where it came from."""

    source: str
    kind: str  # "kdump.conf" | "kdump-tools"
    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def to_toml(self) -> str:
        return render_toml(self.data, header=[f"imported from {self.source} ({self.kind}) by kdumpkit config import",
                                              *(f"warning: {w}" for w in self.warnings)])

    def config(self) -> Config:
        """The result as the capture engine will read it (raises ConfigError if the translation is invalid)."""
        return loads_config(self.to_toml(), f"<imported from {self.source}>")


# -- collector arguments (makedumpfile) ---------------------------------------------
def apply_makedumpfile_args(args: list[str], out: Imported, where: str) -> None:
    """Dump level, codec, format and threads from makedumpfile options; everything else warns."""
    codec = "none"
    i = 0
    while i < len(args):
        a = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if a in _CODEC_FLAGS:
            codec = _CODEC_FLAGS[a]
        elif a == "-E":
            out.data["format"] = "elf"
        elif a == "-F":
            out.warn(f"{where}: -F (flattened) is chosen automatically for ssh and raw targets")
        elif a == "-d" or a.startswith("-d") or a.startswith("--dump-level"):
            text, i = _opt_value(a, value, i, ("-d", "--dump-level"))
            out.data["dump_level"] = _levels(text, where)
        elif a.startswith("--message-level"):
            _, i = _opt_value(a, value, i, ("--message-level",))
            out.warn(f"{where}: --message-level (kdumpkit prints progress lines on the console itself)")
        elif a.startswith("--num-threads"):
            text, i = _opt_value(a, value, i, ("--num-threads",))
            try:
                out.data["num_threads"] = int(text)
            except ValueError:
                out.warn(f"{where}: --num-threads {text!r} is not a number")
        elif a in ("-L", "--split", "-e", "-x", "-i", "--config", "--eppic", "--extension", "--cyclic-buffer",
                   "--work-dir", "--non-cyclic", "--non-mmap", "-b", "--splitblock-size"):
            if a in ("-L", "-x", "-i", "--config", "--eppic", "--extension", "--cyclic-buffer", "--work-dir", "-b",
                     "--splitblock-size") and value is not None and not value.startswith("-"):
                i += 1
            out.warn(f"{where}: makedumpfile option {a} has no kdumpkit equivalent")
        else:
            out.warn(f"{where}: unknown makedumpfile option {a}")
        i += 1
    out.data["codec"] = codec


def _opt_value(arg: str, nxt: str | None, i: int, names: tuple[str, ...]) -> tuple[str, int]:
    for n in names:
        if arg == n:
            if nxt is None:
                raise ConfigError(f"{arg} needs a value")
            return nxt, i + 1
        if arg.startswith(n + "="):
            return arg[len(n) + 1:], i
        if n == "-d" and arg.startswith("-d") and not arg.startswith("--"):
            return arg[2:], i
    raise ConfigError(f"cannot read the value of {arg}")


def _levels(text: str, where: str) -> str | int:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and 0 <= int(p) <= 31 for p in parts):
        raise ConfigError(f"{where}: dump level {text!r} is not 0-31 (or a comma list of them)")
    return int(parts[0]) if len(parts) == 1 else ",".join(parts)


def apply_collector(line: str, out: Imported, where: str) -> None:
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not words:
        raise ConfigError(f"{where}: empty core_collector")
    prog = words[0].rsplit("/", 1)[-1]
    if prog != "makedumpfile":
        out.warn(f"{where}: core collector {prog!r} is replaced by kdumpkit's own (level 31, lzo)")
        return
    apply_makedumpfile_args(words[1:], out, where)


# -- kdump.conf (kdump-utils) ---------------------------------------------------------
_SAFE_VALUES = {"kdump_pre", "kdump_post", "extra_bins", "extra_modules", "force_rebuild", "force_no_rebuild",
                "auto_reset_crashkernel", "link_delay", "disk_timeout", "blacklist"}
_UNSUPPORTED = {
    "kdump_pre": "pre-dump hooks are not supported (kdumpkit runs no scripts inside the capture kernel)",
    "kdump_post": "post-dump hooks are not supported (kdumpkit runs no scripts inside the capture kernel)",
    "extra_bins": "kdumpkit's capture initramfs carries no extra programs",
    "dracut_args": "kdumpkit builds its own capture initramfs (no dracut)",
    "force_rebuild": "kdumpkit rebuilds the capture initramfs with kdumpkit initramfs build",
    "force_no_rebuild": "kdumpkit rebuilds the capture initramfs with kdumpkit initramfs build",
    "fence_kdump_args": "cluster fencing is not supported",
    "fence_kdump_nodes": "cluster fencing is not supported",
    "auto_reset_crashkernel": "kdumpkit setup writes crashkernel= explicitly",
    "link_delay": "network targets wait for the link themselves",
    "disk_timeout": "not supported",
    "blacklist": "not supported (the capture initramfs loads only the modules it needs)",
}


def parse_kdump_conf(text: str, *, source: str = KDUMP_CONF, fstab: str = "") -> Imported:
    """Translate kdump.conf (kdump.conf.5): one target line, ``path``, ``core_collector``, actions …"""
    out = Imported(source, "kdump.conf")
    path: str | None = None
    sshkey: str | None = None
    targets: list[tuple[str, str, int]] = []  # (kind, value, line)
    collector: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        opt, _, value = line.partition(" ")
        opt, value = opt.strip(), value.strip()
        where = f"line {lineno}: {opt}"
        if opt in ("raw", "nfs", "ssh") or opt in LOCAL_FSTYPES:
            targets.append((opt, value, lineno))
        elif opt == "path":
            path = value
        elif opt == "sshkey":
            sshkey = value
        elif opt == "core_collector":
            collector = value
        elif opt in ("failure_action", "default"):
            if opt == "default":
                out.warn(f"{where}: 'default' is the deprecated name of failure_action (imported as such)")
            out.data["failure_action"] = _action(value, where, ("reboot", "halt", "poweroff", "shell",
                                                                "dump_to_rootfs"))
        elif opt == "final_action":
            out.data["final_action"] = _action(value, where, ("reboot", "halt", "poweroff"))
        elif opt == "extra_modules":
            mods = out.data.setdefault("extra", {}).setdefault("extra_modules", [])
            mods.extend(m for m in value.split() if m not in mods)
        elif opt in _UNSUPPORTED:
            shown = f" {value}" if opt in _SAFE_VALUES and value else ""
            out.warn(f"line {lineno}: {opt}{shown}: {_UNSUPPORTED[opt]}")
        else:
            out.warn(f"line {lineno}: unknown option {opt!r} (value not copied)")
    if len(targets) > 1:
        out.warn("more than one dump target (kdump-utils refuses this); imported in file order as a fallback chain")
    out.data["target"] = [_conf_target(kind, value, line, path, sshkey, fstab, out) for kind, value, line in targets] \
        or [{"type": "local", "path": path or DEFAULT_PATH}]
    if sshkey is not None and not any(kind == "ssh" for kind, _v, _l in targets):
        out.warn("sshkey without an ssh target: ignored")
    if out.data.get("failure_action") == "dump_to_rootfs" and path:
        out.data["rootfs_path"] = path
    apply_collector(collector or KDUMP_UTILS_COLLECTOR, out, "core_collector")
    return out


def _action(value: str, where: str, allowed: tuple[str, ...]) -> str:
    if value in allowed:
        return value
    raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")


def _conf_target(kind: str, value: str, lineno: int, path: str | None, sshkey: str | None, fstab: str,
                 out: Imported) -> dict[str, Any]:
    where = f"line {lineno}: {kind}"
    if not value:
        raise ConfigError(f"{where}: no value")
    if kind == "raw":
        return {"type": "raw", "device": value}
    if kind == "nfs":
        if ":/" not in value:
            raise ConfigError(f"{where}: expected host:/export, not {value!r}")
        return {"type": "nfs", "server": value, "path": path or DEFAULT_PATH}
    if kind == "ssh":
        if sshkey is None:
            out.warn(f"{where}: no sshkey; using kdump-utils' default {DEFAULT_SSH_KEY}")
        return {"type": "ssh", "destination": value, "path": path or DEFAULT_PATH, "key": sshkey or DEFAULT_SSH_KEY}
    mount = fstab_mountpoint(fstab, value)
    rel = (path or DEFAULT_PATH).lstrip("/")
    if mount is None:
        out.warn(f"{where} {value}: not found in /etc/fstab; kdumpkit's local target is a directory, "
                 f"so the dump goes to /{rel} — make sure that filesystem is mounted there")
        return {"type": "local", "path": "/" + rel}
    return {"type": "local", "path": str(Path(mount) / rel) if rel else mount}


def fstab_mountpoint(fstab: str, device: str) -> str | None:
    """Where ``device`` (``UUID=…``, ``LABEL=…``, ``/dev/…``) is mounted according to fstab text."""
    want = _unquote_spec(device)
    for line in fstab.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and _unquote_spec(fields[0]) == want:
            return fields[1]
    return None


def _unquote_spec(spec: str) -> str:
    key, sep, val = spec.partition("=")
    return f"{key.upper()}={val.strip(chr(34))}" if sep and key.upper() in ("UUID", "LABEL", "PARTUUID") else spec


# -- /etc/default/kdump-tools (Debian) -----------------------------------------------------
_SHELL_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_TOOLS_IGNORED = {
    "KDUMP_KERNEL": "kdumpkit load picks the running kernel (or --kernel PATH)",
    "KDUMP_INITRD": "kdumpkit load picks kdumpkit's capture initramfs (or --initrd PATH)",
    "KDUMP_KEXEC_ARGS": "kdumpkit loads with kexec_file_load itself",
    "KDUMP_CMDLINE": "kdumpkit load derives the capture command line (or --cmdline)",
    "KDUMP_CMDLINE_REMOVE": "kdumpkit load removes kdumpctl's list (or --remove KEY)",
    "DEBUG_KERNEL": "give the report --system-map instead",
    "ARCH": "not needed",
    "HOSTTAG": "crash folders are named by hostname",
    "KDUMP_COMPRESSION": "whole-file compression is not supported; pages are compressed (codec)",
    "USE_FADUMP": "fadump (POWER) is not supported",
    "FTP": "FTP targets are not supported",
    "FTP_USER": "FTP targets are not supported",
    "FTP_PASSWORD": "FTP targets are not supported",
    "FTP_PORT": "FTP targets are not supported",
    "FTP_PATH": "FTP targets are not supported",
    "NFS_MOUNT_RETRY": "not supported",
}
_TOOLS_SAFE_VALUES = {"KDUMP_KERNEL", "KDUMP_INITRD", "DEBUG_KERNEL", "ARCH", "HOSTTAG", "KDUMP_COMPRESSION", "USE_FADUMP"}
_KNOWN_SYSCTLS = {"kernel.panic_on_oops": "panic_on_oops", "kernel.unknown_nmi_panic": "unknown_nmi_panic",
                  "kernel.softlockup_panic": "softlockup_panic", "kernel.hung_task_panic": "hung_task_panic",
                  "kernel.panic_on_warn": "panic_on_warn", "kernel.sysrq": "sysrq"}


def shell_vars(text: str) -> tuple[dict[str, str], list[str]]:
    """``NAME=value`` assignments of a simple shell file (quotes honoured); other lines returned for warnings."""
    values: dict[str, str] = {}
    other: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _SHELL_ASSIGN.match(stripped)
        if not m:
            other.append(f"line {lineno}: not a NAME=value assignment (not copied)")
            continue
        try:
            words = shlex.split(m.group(2), comments=True)
        except ValueError:
            other.append(f"line {lineno}: {m.group(1)}: unbalanced quotes (not copied)")
            continue
        values[m.group(1)] = " ".join(words)
    return values, other


def parse_kdump_tools(text: str, *, source: str = KDUMP_TOOLS) -> Imported:
    """Translate Debian's kdump-tools defaults file (kdump-tools.5)."""
    out = Imported(source, "kdump-tools")
    values, other = shell_vars(text)
    for w in other:
        out.warn(w)
    v = dict(values)
    use = v.pop("USE_KDUMP", "0")
    if use != "1":
        out.warn(f"USE_KDUMP={use}: kdump was disabled there; kdumpkit setup enables it")
    coredir = v.pop("KDUMP_COREDIR", "") or DEFAULT_PATH
    ssh = v.pop("SSH", "")
    ssh_key = v.pop("SSH_KEY", "")
    nfs = v.pop("NFS", "")
    timeo, retrans = v.pop("NFS_TIMEO", ""), v.pop("NFS_RETRANS", "")
    targets: list[dict[str, Any]] = []
    if ssh:
        targets.append({"type": "ssh", "destination": ssh, "path": coredir, "key": ssh_key or DEFAULT_SSH_KEY})
        if not ssh_key:
            out.warn(f"SSH without SSH_KEY: using kdump-tools' default {DEFAULT_SSH_KEY}")
    elif ssh_key:
        out.warn("SSH_KEY without SSH: ignored")
    if nfs:
        if ":/" not in nfs:
            raise ConfigError(f"NFS={nfs!r}: expected host:/path")
        opts = ["soft", "tcp", "nolock"]  # what kdump-config mounts with
        opts += [f"timeo={timeo}"] if timeo else []
        opts += [f"retrans={retrans}"] if retrans else []
        # kdump-config mounts the export on KDUMP_COREDIR: the dump lands in the export's root.
        targets.append({"type": "nfs", "server": nfs, "path": "/", "mount_options": ",".join(opts)})
    elif timeo or retrans:
        out.warn("NFS_TIMEO/NFS_RETRANS without NFS: ignored")
    if ssh and nfs:
        out.warn("both SSH and NFS are set (kdump-tools uses one); imported as a fallback chain, ssh first")
    out.data["target"] = targets or [{"type": "local", "path": coredir}]
    if coredir != DEFAULT_PATH:
        out.data["rootfs_path"] = coredir
    num = v.pop("KDUMP_NUM_DUMPS", "")
    if num:
        if not num.isdigit():
            raise ConfigError(f"KDUMP_NUM_DUMPS={num!r}: expected a number")
        if int(num):
            out.data["keep"] = {"count": int(num)}
        if targets:
            out.warn("KDUMP_NUM_DUMPS: kdump-tools applies it to local dumps only; kdumpkit keeps that many "
                     "on every target")
    fail = v.pop("KDUMP_FAIL_CMD", "")
    if fail:
        out.data["failure_action"] = _fail_cmd(fail, out)
    dmesg = v.pop("KDUMP_DUMP_DMESG", "")
    if dmesg:
        out.data["dmesg"] = dmesg != "0"
    append = _cmdline_append(v.pop("KDUMP_CMDLINE_APPEND", ""), out)
    if append:
        out.data.setdefault("extra", {})["cmdline_append"] = append
    sysctl = v.pop("KDUMP_SYSCTL", "")
    if sysctl:
        _sysctls(sysctl, out)
    apply_makedumpfile_args(shlex.split(v.pop("MAKEDUMP_ARGS", "") or KDUMP_TOOLS_MAKEDUMP_ARGS), out,
                            "MAKEDUMP_ARGS")
    for name in sorted(v):
        if name in _TOOLS_IGNORED:
            shown = f"={v[name]}" if name in _TOOLS_SAFE_VALUES and v[name] else ""
            out.warn(f"{name}{shown}: {_TOOLS_IGNORED[name]}")
        else:
            out.warn(f"unknown variable {name} (value not copied)")
    return out


def _cmdline_append(text: str, out: Imported) -> str:
    """Keep what kdumpkit load does not already append; kdump-tools' own systemd unit makes no sense here."""
    from kdumpkit.kexec.loader import DEFAULT_APPEND

    ours = set(DEFAULT_APPEND.split())
    keep: list[str] = []
    for word in text.split():
        if word.startswith("systemd.unit="):
            out.warn(f"KDUMP_CMDLINE_APPEND: {word} belongs to kdump-tools (kdumpkit's initramfs runs its own init)")
        elif word in ours:
            out.warn(f"KDUMP_CMDLINE_APPEND: {word} is already in kdumpkit load's defaults")
        else:
            keep.append(word)
    return " ".join(keep)


def _fail_cmd(cmd: str, out: Imported) -> str:
    words = cmd.split()
    prog = words[0].rsplit("/", 1)[-1] if words else ""
    if prog in ("reboot", "halt", "poweroff"):
        return prog
    if prog in ("sh", "bash", "ash", "busybox"):
        return "shell"
    out.warn(f"KDUMP_FAIL_CMD: custom command {prog!r} is not supported; failure_action = reboot")
    return "reboot"


def _sysctls(text: str, out: Imported) -> None:
    setup = out.data.setdefault("extra", {}).setdefault("setup", {})
    for item in text.split():
        key, sep, value = item.partition("=")
        name = _KNOWN_SYSCTLS.get(key.strip())
        if not sep or name is None:
            out.warn(f"KDUMP_SYSCTL: {key} is not one kdumpkit setup manages")
            continue
        try:
            number = int(value)
        except ValueError:
            out.warn(f"KDUMP_SYSCTL: {key}={value!r} is not a number")
            continue
        setup[name] = number if name == "sysrq" else bool(number)


# -- entry points ----------------------------------------------------------------------------
def detect_kind(text: str) -> str:
    """``kdump-tools`` when the file is shell assignments, else ``kdump.conf``."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if lines and all(_SHELL_ASSIGN.match(ln) for ln in lines):
        return "kdump-tools"
    return "kdump.conf"


def import_file(path: str | None = None, *, root: str | Path = "/") -> Imported:
    """Read ``path`` (default: the first of /etc/kdump.conf, /etc/default/kdump-tools under ``root``) and translate."""
    rootp = Path(root)
    candidates: Iterable[str] = (path,) if path else SOURCES
    for cand in candidates:
        p = rootp / cand.lstrip("/") if not path else Path(cand)
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            if path:
                raise ConfigError(f"{p}: no such file") from None
            continue
        except OSError as e:
            raise ConfigError(f"cannot read {p}: {e.strerror}") from None
        if detect_kind(text) == "kdump-tools":
            imported = parse_kdump_tools(text, source=str(p))
        else:
            try:
                fstab = (rootp / "etc/fstab").read_text(errors="replace")
            except OSError:
                fstab = ""
            imported = parse_kdump_conf(text, source=str(p), fstab=fstab)
        imported.config()  # validate with the capture engine's loader
        return imported
    raise ConfigError(f"nothing to import: neither {KDUMP_CONF} nor {KDUMP_TOOLS} exists (give --from FILE)")


# -- a small TOML writer (the schema is flat: scalars, lists, [keep], [extra…], [[target]]) -------
def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {type(v).__name__} to TOML")


def _table(lines: list[str], name: str, table: dict[str, Any]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    subs = {k: v for k, v in table.items() if isinstance(v, dict)}
    if scalars or not subs:
        lines += ["", f"[{name}]", *(f"{k} = {_value(v)}" for k, v in scalars.items())]
    for k, v in subs.items():
        _table(lines, f"{name}.{k}", v)


def render_toml(data: dict[str, Any], *, header: Iterable[str] = ()) -> str:
    """TOML text for a config dict; ``header`` lines become comments (one line each, newlines flattened)."""
    lines = [f"# {h.replace(chr(10), ' ')}" for h in header]
    for k, v in data.items():
        if k in ("target", "keep", "extra"):
            continue
        lines.append(f"{k} = {_value(v)}")
    for t in data.get("target", []):
        lines += ["", "[[target]]", *(f"{k} = {_value(v)}" for k, v in t.items())]
    for name in ("keep", "extra"):
        if data.get(name):
            _table(lines, name, data[name])
    return "\n".join(lines) + "\n"
