"""The wheels an administrator installs kdumpkit from on a machine without network access.

The lab's installed system has no network, like many production hosts, so
kdumpkit goes in the way the README tells an administrator to install it
there: ``python3 -m venv /opt/kdumpkit`` and ``pip install --no-index
--find-links WHEELHOUSE kdumpkit``.  The wheelhouse is made here with ``pip
wheel`` from this checkout: kdumpkit's own wheel each time (it changes with
the code) and its dependencies once per dependency list and Python version
(cached; python-lzo is built from source against the system's liblzo2).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import kdumpkit
from kdumpkit.errors import LabError
from kdumpkit.lab.cache import lab_dir

Log = Callable[[str], None]


def source_root() -> Path:
    """The checkout kdumpkit runs from (its wheel is built from there)."""
    root = Path(kdumpkit.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise LabError(f"kdumpkit is not running from a source checkout ({root}): the lab builds its wheel from one")
    return root


def _pip(cmd: str, args: list[str], what: str, env: dict[str, str] | None = None) -> None:
    full = [sys.executable, "-m", "pip", cmd, "-q", "--disable-pip-version-check", *args]
    p = subprocess.run(full, capture_output=True, text=True, timeout=1800, check=False,
                       env={**os.environ, **(env or {})})
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise LabError(f"pip {cmd} ({what}) failed: {' | '.join(tail)}")


#: Binary wheels for another Python than this one: the platforms a Debian amd64 guest accepts.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: Dependencies with no binary wheel on PyPI: the guest takes them from Debian (``--system-site-packages``).
FROM_DEBIAN = {"python-lzo": "python3-lzo"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].strip().lower()


def dependency_wheels(python: tuple[int, int] | None = None, log: Log = lambda m: None) -> Path:
    """kdumpkit's runtime dependencies as wheels for ``python`` (default: this one), cached by dependency list.

    For this interpreter ``pip wheel`` builds what has no wheel (python-lzo against the system's
    liblzo2); for another one only published binary wheels can be had, so what has none
    (:data:`FROM_DEBIAN`) is left to the guest's Debian packages.
    """
    target = python or sys.version_info[:2]
    deps = tomllib.loads((source_root() / "pyproject.toml").read_text())["project"]["dependencies"]
    key = hashlib.sha256(f"{target} {sorted(deps)}".encode()).hexdigest()[:12]
    final = lab_dir("wheels") / f"deps-{key}"
    if (final / ".complete").is_file():
        return final
    tmp = final.with_name(final.name + f".{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"dependency wheels for Python {target[0]}.{target[1]}: {' '.join(deps)}")
    if target == sys.version_info[:2]:
        _pip("wheel", ["--wheel-dir", str(tmp), *deps], "dependencies")
    else:
        plats = [a for p in PLATFORMS for a in ("--platform", p)]
        wanted = [d for d in deps if _name(d) not in FROM_DEBIAN]
        _pip("download", ["--only-binary=:all:", "--python-version", f"{target[0]}.{target[1]}", *plats,
                          "-d", str(tmp), *wanted], f"dependencies for Python {target[0]}.{target[1]}")
    (tmp / ".complete").write_text("\n".join(deps) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    return final


def build_wheelhouse(out: Path, python: tuple[int, int] | None = None, log: Log = lambda m: None) -> list[str]:
    """``out`` gets kdumpkit's wheel and its dependencies' for ``python``; the file names.

    kdumpkit's own wheel carries the native core when it is built for this
    interpreter, and is pure (``KDUMPKIT_BUILD_NATIVE=0``) for another one.
    """
    out.mkdir(parents=True, exist_ok=True)
    for w in dependency_wheels(python, log).glob("*.whl"):
        shutil.copyfile(w, out / w.name)
    same = python is None or python == sys.version_info[:2]
    _pip("wheel", ["--no-deps", "--wheel-dir", str(out), str(source_root())], "kdumpkit",
         env=None if same else {"KDUMPKIT_BUILD_NATIVE": "0"})
    return sorted(p.name for p in out.glob("*.whl"))
