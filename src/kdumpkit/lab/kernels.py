"""Debian kernels for the lab: fetch by suite, unpack, cache.

A kernel is fetched with ``apt-get download`` under a private apt
configuration (own sources list, lists and cache directories), so the host's
apt state is never touched, and unpacked with ``dpkg -x``.  Modules are
decompressed on the host because busybox ``insmod`` only takes plain ``.ko``.
A user-given ``vmlinuz`` plus modules directory is accepted as well.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kdumpkit.errors import LabError
from kdumpkit.lab.aptsrc import SUITES, host_mirrors
from kdumpkit.lab.cache import lab_dir

#: apt lists younger than this are reused without ``apt-get update``.
LISTS_MAX_AGE_S = 24 * 3600


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel: image, config, modules tree and identity."""

    name: str            # suite name or "custom"
    release: str         # e.g. 6.1.0-56-amd64 (the modules directory name)
    package_version: str  # Debian package version, or a stable tag for custom kernels
    vmlinuz: Path
    config: Path | None
    modules_dir: Path    # .../lib/modules/<release> (plain .ko files are looked up here)
    root: Path           # where the package was unpacked (or the vmlinuz's directory)

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.package_version}"


def _apt_opts(suite: str) -> tuple[list[str], Path]:
    base = lab_dir("apt", suite)
    for d in ("lists/partial", "cache/archives/partial"):
        (base / d).mkdir(parents=True, exist_ok=True)
    src = base / "sources.list"
    text = host_mirrors().sources_list(suite)
    if not src.is_file() or src.read_text() != text:
        src.write_text(text)
        for f in (base / "lists").glob("*_Packages*"):
            f.unlink()
    opts = [
        "-o", f"Dir::Etc::SourceList={src}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", "Dir::Etc::Preferences=/dev/null",
        "-o", "Dir::Etc::PreferencesParts=/dev/null",
        "-o", f"Dir::State::Lists={base / 'lists'}",
        "-o", f"Dir::Cache={base / 'cache'}",
        "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
        "-o", "APT::Architectures=amd64", "-o", "Acquire::Languages=none",
        "-o", "Debug::NoLocking=1",
    ]
    return opts, base


def _run(cmd: list[str], *, cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{cmd[0]} not found (install it: make apt)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(cmd[:2])} timed out after {timeout:.0f}s") from None
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LabError(f"{' '.join(cmd[:2])} failed: {last}")
    return p.stdout


def _update(suite: str, opts: list[str], base: Path, force: bool = False) -> None:
    lists = list((base / "lists").glob("*_Packages*"))
    fresh = lists and min(f.stat().st_mtime for f in lists) > time.time() - LISTS_MAX_AGE_S
    if fresh and not force:
        return
    p = subprocess.run(["apt-get", *opts, "-qq", "update"], capture_output=True, text=True, timeout=900)
    if not list((base / "lists").glob(f"*_dists_{suite}_main_*Packages*")):
        last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LabError(f"apt-get update for {suite} failed: {last}")


def resolve(suite: str) -> tuple[str, str]:
    """``(package name, version)`` of the newest unsigned kernel image of ``suite``.

    The metapackage ``linux-image-amd64`` depends on exactly one
    ``linux-image-<abi>-amd64``; its candidate version is the newest.
    """
    if suite not in SUITES:
        raise LabError(f"unknown kernel {suite!r}; known: {', '.join(SUITES)} (or give --vmlinuz)")
    opts, base = _apt_opts(suite)
    _update(suite, opts, base)
    show = _run(["apt-cache", *opts, "show", "--no-all-versions", "linux-image-amd64"])
    m = re.search(r"^Depends:.*?\b(linux-image-[0-9][^\s,]*-amd64)\b", show, re.M)
    if not m:
        raise LabError(f"cannot find the kernel linux-image-amd64 depends on in {suite}")
    pkg = m.group(1)
    show = _run(["apt-cache", *opts, "show", "--no-all-versions", pkg])
    vm = re.search(r"^Version:\s*(\S+)", show, re.M)
    if not vm:
        raise LabError(f"no version for {pkg}")
    return pkg, vm.group(1)


def _safe(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", version)


def cached(suite: str) -> Kernel | None:
    """The most recently unpacked kernel of ``suite`` in the cache, if any."""
    done = sorted(lab_dir("kernels", suite).glob("*/.complete"), key=lambda p: p.stat().st_mtime)
    return _load(suite, done[-1].parent) if done else None


def fetch(suite: str, *, refresh: bool = False, offline_ok: bool = True) -> Kernel:
    """The kernel of ``suite``: the cached one, or download and unpack the newest.

    Without ``refresh`` a kernel already in the cache is used as is (no network:
    cached reference dumps stay valid).  With ``refresh`` the mirror is asked for
    the newest version.  When the mirror cannot be reached, a cached kernel is
    used if there is one (``offline_ok``).
    """
    have = cached(suite) if suite in SUITES else None
    if have is not None and not refresh:
        return have
    try:
        pkg, version = resolve(suite)
    except LabError:
        if offline_ok and have is not None:
            return have
        raise
    kdir = lab_dir("kernels", suite) / _safe(version)
    if (kdir / ".complete").is_file():
        return _load(suite, kdir)
    opts, base = _apt_opts(suite)
    dl = base / "debs"
    dl.mkdir(exist_ok=True)
    debs = list(dl.glob(f"{pkg}_{_safe(version).replace('+', '*')}_*.deb")) or []
    if not debs:
        _run(["apt-get", *opts, "-qq", "download", f"{pkg}={version}"], cwd=dl, timeout=1800)
        debs = sorted(dl.glob(f"{pkg}_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise LabError(f"apt-get download {pkg}={version} produced no .deb")
    tmp = kdir.with_name(kdir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "root").mkdir(parents=True)
    _run(["dpkg", "-x", str(debs[-1]), str(tmp / "root")], timeout=900)
    (tmp / "package").write_text(f"{pkg} {version}\n")
    shutil.rmtree(kdir, ignore_errors=True)
    tmp.rename(kdir)
    k = _load(suite, kdir, check=False)
    decompress_modules(k.modules_dir)
    (kdir / ".complete").write_text(f"{pkg} {version}\n")
    debs[-1].unlink()  # the unpacked tree is what we keep
    return k


def _load(suite: str, kdir: Path, check: bool = True) -> Kernel:
    root = kdir / "root"
    _pkg, version = (kdir / "package").read_text().split()
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if not images:
        raise LabError(f"no boot/vmlinuz-* in {root}")
    vmlinuz = images[-1]
    release = vmlinuz.name[len("vmlinuz-"):]
    config = root / "boot" / f"config-{release}"
    for mods in (root / "usr/lib/modules" / release, root / "lib/modules" / release):
        if mods.is_dir():
            break
    else:
        raise LabError(f"no modules directory for {release} in {root}")
    return Kernel(suite, release, version, vmlinuz, config if config.is_file() else None, mods, root)


def decompress_modules(modules_dir: Path) -> int:
    """Replace ``.ko.xz`` / ``.ko.zst`` / ``.ko.gz`` files by plain ``.ko``; return how many."""
    import gzip

    n = 0
    for path in modules_dir.rglob("*.ko.*"):
        suffix = path.suffix
        if suffix == ".xz":
            data = lzma.decompress(path.read_bytes())
        elif suffix == ".zst":
            import zstandard

            data = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
        elif suffix == ".gz":
            data = gzip.decompress(path.read_bytes())
        else:
            continue
        path.with_suffix("").write_bytes(data)
        path.unlink()
        n += 1
    return n


def custom(vmlinuz: str | os.PathLike[str], modules_dir: str | os.PathLike[str] | None = None,
           release: str | None = None) -> Kernel:
    """A user-given kernel image and (optional) modules directory.

    Compressed modules are decompressed into a cache copy, never in place.
    """
    img = Path(vmlinuz).resolve()
    if not img.is_file():
        raise LabError(f"no such kernel image: {img}")
    st = img.stat()
    tag = f"custom-{st.st_size}-{int(st.st_mtime)}"
    if modules_dir is None:
        mods = lab_dir("kernels", "custom", tag, "nomodules")
    else:
        src = Path(modules_dir).resolve()
        if not src.is_dir():
            raise LabError(f"no such modules directory: {src}")
        if any(src.rglob("*.ko.*")):
            mods = lab_dir("kernels", "custom", tag) / "modules"
            if not (mods / ".complete").is_file():
                shutil.rmtree(mods, ignore_errors=True)
                shutil.copytree(src, mods, symlinks=False, ignore_dangling_symlinks=True)
                decompress_modules(mods)
                (mods / ".complete").write_text("")
        else:
            mods = src
    rel = release or (Path(modules_dir).name if modules_dir else img.name.removeprefix("vmlinuz-"))
    cfg = img.with_name(img.name.replace("vmlinuz", "config", 1))
    return Kernel("custom", rel, tag, img, cfg if cfg.is_file() and cfg != img else None, mods, img.parent)


def get(kernel: str) -> Kernel:
    """A kernel by suite name, or a path to a ``vmlinuz`` (modules looked up next to it)."""
    if kernel in SUITES:
        return fetch(kernel)
    if os.path.sep in kernel or Path(kernel).is_file():
        return custom(kernel)
    raise LabError(f"unknown kernel {kernel!r}; known: {', '.join(SUITES)} or a path to a vmlinuz")


def fetch_debug_vmlinux(k: Kernel) -> Path:
    """The debuginfo ``vmlinux`` of a lab kernel (Debian's ``linux-image-<release>-dbg``), cached.

    About 860 MB to download and 630 MB kept: only for comparisons with crash
    or drgn under full debuginfo (the full lab tier), never needed by kdumpkit.
    """
    if k.name not in SUITES:
        raise LabError(f"no Debian debug package for a custom kernel ({k.vmlinuz})")
    ddir = lab_dir("debug", k.name) / _safe(k.package_version)
    vmlinux = ddir / f"vmlinux-{k.release}"
    if vmlinux.is_file():
        return vmlinux
    opts, base = _apt_opts(k.name)
    dl = base / "debs"
    dl.mkdir(exist_ok=True)
    pkg = f"linux-image-{k.release}-dbg"
    _run(["apt-get", *opts, "-qq", "download", f"{pkg}={k.package_version}"], cwd=dl, timeout=3600)
    debs = sorted(dl.glob(f"{pkg}_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise LabError(f"apt-get download {pkg}={k.package_version} produced no .deb")
    tmp = ddir.with_name(ddir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _run(["sh", "-c", f"dpkg-deb --fsys-tarfile '{debs[-1]}' | tar -x -C '{tmp}' --wildcards "
          f"'./usr/lib/debug/boot/vmlinux-*'"], timeout=1800)
    found = list(tmp.glob("usr/lib/debug/boot/vmlinux-*"))
    if not found:
        raise LabError(f"{debs[-1].name} holds no usr/lib/debug/boot/vmlinux-*")
    ddir.mkdir(parents=True, exist_ok=True)
    found[0].rename(vmlinux)
    shutil.rmtree(tmp, ignore_errors=True)
    debs[-1].unlink()
    return vmlinux
