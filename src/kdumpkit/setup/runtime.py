"""The Python runtime a capture initramfs carries: only what the capture path imports.

A whole Python is ~70 MB unpacked, and in a capture kernel every unpacked
initramfs MB costs 2–3 MB of ``crashkernel=`` reservation (lab notes).  So the
runtime is trimmed to an import closure: a child interpreter imports
:data:`ROOTS` (the ``kdumpkit`` modules and stdlib modules the capture, save,
load and status paths import, including the ones imported inside functions,
as measured from ``sys.modules`` after a real capture of the lab's bookworm
vmcore — ``kdumpkit initramfs probe`` re-measures it) and reports every
module file it loaded.  Those files, the interpreter, and the shared
libraries ``ldd`` names for it and for every extension module are copied;
Python sources become sourceless ``.pyc`` files (no compile at boot under a
slow CPU, nothing written to the RAM root); the interpreter and system
libraries are stripped (wheel libraries are not: patchelf'd files break).

Layout in the image: ``/opt/kdumpkit/bin/python3`` with its stdlib at
``/opt/kdumpkit/lib/python3.X`` (where the interpreter finds it by itself),
kdumpkit and its third-party modules under ``/opt/kdumpkit/site``, and
``/bin/kdumpkit`` running ``python3 -I -S -B`` on an entry script that puts
only that directory on ``sys.path``.  Shared libraries keep their host paths
(so the interpreter's RPATH still works), except those inside a copied
package (``numpy.libs``), which move with it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import marshal
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kdumpkit.errors import KdumpkitError
from kdumpkit.lab import cpio

PREFIX = "/opt/kdumpkit"
SITE = f"{PREFIX}/site"
ENTRY = f"{PREFIX}/kdumpkit.py"

#: The CLI commands the image can run (``kdumpkit.cli.main`` registers the
#: ``cmd_*`` modules it finds, so shipping only these keeps the rest out).
COMMANDS = ("capture", "save", "load", "status", "dmesg", "live", "estimate")

#: What the image carries of kdumpkit: every module of these packages (found on disk, so a module
#: a function imports lazily is never forgotten — a missing one killed a capture once), plus
#: :data:`KDUMPKIT_MODULES`.  The QEMU lab, analysis and the other setup steps stay out.
KDUMPKIT_PACKAGES = ("capture", "dump", "kernel", "kexec")
KDUMPKIT_MODULES = ("kdumpkit.setup.config", "kdumpkit.setup.blockdev", "kdumpkit.cli.main", "kdumpkit.cli.progress",
                    "kdumpkit.cli.dumpargs")
#: Test helpers inside those packages.
KDUMPKIT_SKIP = frozenset({"testing"})


def kdumpkit_roots() -> list[str]:
    """Every kdumpkit module the capture image must be able to import."""
    import kdumpkit

    pkg = Path(kdumpkit.__file__).parent
    names = []
    for sub in KDUMPKIT_PACKAGES:
        names.append(f"kdumpkit.{sub}")
        names += [f"kdumpkit.{sub}.{p.stem}" for p in sorted((pkg / sub).glob("*.py"))
                  if p.stem != "__init__" and p.stem not in KDUMPKIT_SKIP]
    return names + [m for m in KDUMPKIT_MODULES if (pkg / (m.split(".", 1)[1].replace(".", "/") + ".py")).is_file()]


#: Stdlib modules the same capture had loaded (imported here so that a
#: function-level ``import subprocess`` does not fail in the capture kernel).
STDLIB_ROOTS = (
    "argparse", "array", "bisect", "bz2", "concurrent.futures", "contextlib", "contextvars", "copy", "ctypes",
    "ctypes.util", "dataclasses", "datetime", "errno", "fcntl", "fnmatch", "functools", "gzip", "hashlib", "heapq",
    "json", "lzma", "math", "mmap", "operator", "pathlib", "pickle", "platform", "random", "re", "select",
    "selectors", "shlex", "shutil", "signal", "socket", "stat", "string", "struct", "subprocess", "tempfile",
    "textwrap", "threading", "time", "tomllib", "traceback", "typing", "urllib.parse", "warnings", "weakref", "zlib",
)
#: Hash modules hashlib falls back to without ``_hashlib`` (left out: OpenSSL's
#: libcrypto is 4.6 MB, and the capture only needs SHA-256).
HASH_ROOTS = ("_sha256", "_sha512", "_sha1", "_md5", "_blake2", "_sha3")
#: Modules the closure may load but the image does without.
EXCLUDE = frozenset({"_hashlib", "_ssl"})
#: Third-party module per configured codec (zlib is the stdlib's).
CODEC_MODULES = {"lzo": "lzo", "zstd": "zstandard", "snappy": "cramjam"}

_CLOSURE = r'''
import importlib, json, os, sys
roots, optional = json.loads(sys.argv[1])
missing = []
for name in roots:
    try:
        importlib.import_module(name)
    except ImportError as e:
        if name not in optional:
            raise
        missing.append(name)
files = {n: m.__file__ for n, m in list(sys.modules.items()) if getattr(m, "__file__", None)}
print(json.dumps({"files": files, "missing": missing, "path": sys.path, "version": list(sys.version_info[:2]),
                  "stdlib": os.path.dirname(os.__file__),
                  "executable": sys.executable}))
'''


@dataclass
class Runtime:
    """What :func:`add_runtime` put into an image."""

    files: int = 0
    unpacked: int = 0
    modules: list[str] = field(default_factory=list)
    libs: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    python: str = ""
    sizes: dict[str, int] = field(default_factory=dict)


def roots_for(codecs: tuple[str, ...] = ("lzo",)) -> tuple[list[str], list[str]]:
    """(modules to import, the optional ones among them) for a runtime writing ``codecs``."""
    cmds = [f"kdumpkit.cli.cmd_{c}" for c in COMMANDS]
    optional = [CODEC_MODULES[c] for c in codecs if c in CODEC_MODULES] + list(HASH_ROOTS)
    return [*kdumpkit_roots(), *cmds, *STDLIB_ROOTS, *optional], optional


def closure(roots: list[str], optional: list[str], python: str | None = None) -> dict[str, object]:
    """Import ``roots`` in a child interpreter; its module files and paths."""
    exe = python or sys.executable
    try:
        p = subprocess.run([exe, "-I", "-c", _CLOSURE, json.dumps([roots, optional])], capture_output=True,
                           text=True, timeout=300)
    except OSError as e:
        raise KdumpkitError(f"cannot run {exe}: {e.strerror}") from None
    if p.returncode != 0:
        raise KdumpkitError(f"import closure failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    data: dict[str, object] = json.loads(p.stdout)
    return data


def ldd(path: str) -> list[str]:
    """Absolute paths of the shared libraries ``path`` needs (and the loader)."""
    try:
        out = subprocess.run(["ldd", path], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        raise KdumpkitError("ldd not found") from None
    libs: list[str] = []
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(os.path.normpath(m.group(1)))
    return libs


def _is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def stripped(path: str) -> bytes:
    """The bytes of an ELF file without symbols (``strip --strip-unneeded``), else as is."""
    data = Path(path).read_bytes()
    if not _is_elf(data) or shutil.which("strip") is None:
        return data
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"kdumpkit-strip-{os.getpid()}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    try:
        p = subprocess.run(["strip", "--strip-unneeded", "-o", str(tmp), path], capture_output=True, check=False)
        return tmp.read_bytes() if p.returncode == 0 and tmp.is_file() else data
    finally:
        tmp.unlink(missing_ok=True)


def pyc(source: bytes, guest_path: str) -> bytes:
    """A sourceless ``.pyc`` for this interpreter (mtime 0: deterministic)."""
    code = compile(source, guest_path, "exec", dont_inherit=True)
    return bytes(importlib.util.MAGIC_NUMBER) + b"\0" * 12 + marshal.dumps(code)


def _guest_path(host: str, stdlib: str, sites: list[str], pyver: str) -> str | None:
    """Where a host module file goes: site directories first (they can lie inside the stdlib's)."""
    host = os.path.normpath(host)
    for base in sites:
        if host.startswith(base + "/"):
            return f"{SITE}/{host[len(base) + 1:]}"
    if host.startswith(stdlib + "/"):
        return f"{PREFIX}/lib/python{pyver}/{host[len(stdlib) + 1:]}"
    return None


def entry_script() -> bytes:
    return (f'"""kdumpkit in a capture initramfs: only {SITE} on sys.path."""\n'
            "import sys\n"
            f"sys.path.insert(0, {SITE!r})\n"
            "from kdumpkit.cli.main import main\n"
            "sys.exit(main())\n").encode()


def wrapper_script() -> bytes:
    return f'#!/bin/sh\nexec {PREFIX}/bin/python3 -I -S -B {ENTRY} "$@"\n'.encode()


def add_runtime(tree: cpio.Tree, *, codecs: tuple[str, ...] = ("lzo",), python: str | None = None,
                strip: bool = True) -> Runtime:
    """Add the trimmed interpreter, stdlib, kdumpkit and their libraries to ``tree``."""
    roots, optional = roots_for(codecs)
    info = closure(roots, optional, python)
    version = info["version"]
    assert isinstance(version, list)
    if tuple(version) != sys.version_info[:2]:
        raise KdumpkitError(f"the runtime python is {version[0]}.{version[1]}, kdumpkit runs on "
                            f"{sys.version_info[0]}.{sys.version_info[1]}: build with the same interpreter")
    pyver = f"{version[0]}.{version[1]}"
    stdlib = os.path.normpath(str(info["stdlib"]))
    path = info["path"]
    assert isinstance(path, list)
    sites = sorted((os.path.normpath(str(p)) for p in path if p and os.path.normpath(str(p)) != stdlib
                    and not os.path.normpath(str(p)).startswith(stdlib + "/lib-dynload")), key=len, reverse=True)
    rt = Runtime(missing=list(info["missing"]) if isinstance(info["missing"], list) else [])
    exe = os.path.realpath(str(info["executable"]))
    rt.python = exe
    sizes = rt.sizes
    elves: list[tuple[str, str]] = [(exe, f"{PREFIX}/bin/python3")]

    def put(guest: str, data: bytes, mode: int = 0o644) -> None:
        sizes[guest] = len(data)
        tree.file(guest, data, mode)
        rt.files += 1
        rt.unpacked += len(data)

    files = info["files"]
    assert isinstance(files, dict)
    cli_dir = os.path.dirname(str(files["kdumpkit.cli.main"]))
    for name, host in sorted(files.items()):
        host = str(host)
        if os.path.dirname(host) == cli_dir and os.path.basename(host).startswith("cmd_") and \
                os.path.basename(host)[4:-3] not in COMMANDS:
            continue
        if name in EXCLUDE:
            continue
        guest = _guest_path(host, stdlib, sites, pyver)
        if guest is None:
            raise KdumpkitError(f"module {name} ({host}) is outside the interpreter's paths")
        rt.modules.append(name)
        if host.endswith(".py"):
            put(guest + "c", pyc(Path(host).read_bytes(), guest))
        else:
            elves.append((host, guest))
    # The interpreter finds its prefix by this landmark and needs lib-dynload to exist.
    if f"{PREFIX}/lib/python{pyver}/os.pyc" not in tree:
        put(f"{PREFIX}/lib/python{pyver}/os.pyc", pyc(Path(stdlib, "os.py").read_bytes(), "os.py"))
    tree.dir(f"{PREFIX}/lib/python{pyver}/lib-dynload")
    seen: set[str] = set()
    queue = list(elves)
    while queue:
        host, guest = queue.pop(0)
        if guest in seen:
            continue
        seen.add(guest)
        # Wheels' libraries were rewritten by patchelf; strip breaks them ("not page-aligned").
        keep = not strip or guest.startswith(SITE + "/")
        put(guest, Path(host).read_bytes() if keep else stripped(host), 0o755)
        for lib in ldd(host):
            lguest = _guest_path(lib, stdlib, sites, pyver) or lib
            if lguest not in seen and lguest not in rt.libs:
                rt.libs.append(lguest)
                queue.append((lib, lguest))
    put(ENTRY, entry_script())
    put("/bin/kdumpkit", wrapper_script(), 0o755)
    return rt


def runtime_key(codecs: tuple[str, ...] = ("lzo",)) -> str:
    """A hash of what a runtime is made of (interpreter, kdumpkit sources): the cache key."""
    import kdumpkit

    h = hashlib.sha256(f"{sys.version} {sys.executable} {codecs} {COMMANDS} {kdumpkit_roots()} {STDLIB_ROOTS}".encode())
    pkg = Path(kdumpkit.__file__).parent
    for p in sorted(pkg.rglob("*.py")):
        h.update(str(p.relative_to(pkg)).encode())
        h.update(p.read_bytes())
    try:
        import numpy

        h.update(numpy.__version__.encode())
    except ImportError:
        pass
    return h.hexdigest()[:16]
