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


def _pip_wheel(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise LabError(f"pip wheel ({what}) failed: {' | '.join(tail)}")


def dependency_wheels(log: Log = lambda m: None) -> Path:
    """kdumpkit's runtime dependencies as wheels for this Python (cached by dependency list)."""
    deps = tomllib.loads((source_root() / "pyproject.toml").read_text())["project"]["dependencies"]
    key = hashlib.sha256(f"{sys.version_info[:2]} {sorted(deps)}".encode()).hexdigest()[:12]
    final = lab_dir("wheels") / f"deps-{key}"
    if (final / ".complete").is_file():
        return final
    tmp = final.with_name(final.name + f".{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"building dependency wheels: {' '.join(deps)}")
    _pip_wheel(["--wheel-dir", str(tmp), *deps], "dependencies")
    (tmp / ".complete").write_text("\n".join(deps) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    return final


def build_wheelhouse(out: Path, log: Log = lambda m: None) -> list[str]:
    """``out`` gets kdumpkit's wheel and its dependencies'; the file names."""
    out.mkdir(parents=True, exist_ok=True)
    for w in dependency_wheels(log).glob("*.whl"):
        shutil.copyfile(w, out / w.name)
    _pip_wheel(["--no-deps", "--wheel-dir", str(out), str(source_root())], "kdumpkit")
    return sorted(p.name for p in out.glob("*.whl"))
