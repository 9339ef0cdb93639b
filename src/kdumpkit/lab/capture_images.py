"""The images a ``--capture kdumpkit`` lab run needs, built once and cached.

* the capture initramfs, exactly what ``kdumpkit initramfs build`` makes for
  the lab's configuration (raw target ``/dev/vdb``, ``poweroff`` afterwards);
* the Python runtime alone as a second archive, appended to the first
  kernel's image so that ``kdumpkit load`` and ``kdumpkit status`` run there.

Building them takes ~10 s (import closure, strip, compress), so they are kept
under ``<cache>/lab/initramfs/<kernel>-<runtime key>/``; the runtime key
hashes the interpreter and kdumpkit's sources, so a code change rebuilds.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from kdumpkit.lab import cpio
from kdumpkit.lab.cache import lab_dir
from kdumpkit.lab.kernels import Kernel
from kdumpkit.setup import initramfs as capture_initramfs
from kdumpkit.setup.runtime import add_runtime, runtime_key

#: The lab's capture configuration: the dump goes to the raw disk vdb.
LAB_CONFIG = """\
# kdumpkit lab: capture to the raw disk vdb, then power off (QEMU exits)
dump_level = 31
codec = "lzo"
final_action = "poweroff"
failure_action = "poweroff"

[[target]]
type = "raw"
device = "/dev/vdb"
"""


@dataclass(frozen=True)
class CaptureImages:
    capture_initrd: Path   # kdumpkit's capture initramfs (gzip)
    runtime: Path          # the runtime archive for the first kernel (gzip)
    sizes: dict[str, int]  # compressed / unpacked bytes


def capture_images(kernel: Kernel, compression: str = "gzip", *, config_text: str | None = None,
                   modules: tuple[str, ...] = ()) -> CaptureImages:
    """The cached images for ``kernel`` (built on first use).

    ``config_text`` replaces :data:`LAB_CONFIG` (``kdumpkit test`` passes the
    user's dump level and codec with the lab's raw target) and ``modules`` are
    extra modules for the capture initramfs; each variant is cached apart.
    The building host's NIC is not looked at (``host_nic=None``): a network
    configuration names the guest's driver in ``[network] drivers``.
    """
    variant = ""
    if (config_text is not None and config_text != LAB_CONFIG) or modules:
        h = hashlib.sha256((config_text or LAB_CONFIG).encode() + b"\0" + " ".join(modules).encode())
        variant = f"-c{h.hexdigest()[:12]}"
    key = runtime_key()
    d = lab_dir("initramfs", f"{kernel.cache_key}-{compression}-{key}{variant}")
    cap, rt, meta = d / "capture.img", d / "runtime.img", d / "sizes.json"
    if not (cap.is_file() and rt.is_file() and meta.is_file()):
        for old in d.parent.glob(f"{kernel.cache_key}-{compression}-*"):
            if old != d and key not in old.name:  # images of an older kdumpkit tree: ~40 MB each, never used again
                shutil.rmtree(old, ignore_errors=True)
        _blob, res = capture_initramfs.build(cap, config_text=config_text or LAB_CONFIG,
                                             modules_dir=kernel.modules_dir, modules=list(modules),
                                             compression=compression, host_nic=None)
        tree = cpio.Tree()
        add_runtime(tree)
        raw = tree.archive()
        rt.write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
        sizes = {"capture_compressed": res.compressed, "capture_unpacked": res.unpacked,
                 "runtime_unpacked": res.runtime.unpacked, "runtime_files": res.runtime.files}
        meta.write_text(json.dumps(sizes, indent=2) + "\n")
    return CaptureImages(cap, rt, json.loads(meta.read_text()))
