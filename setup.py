"""Build of the one C extension, ``kdumpkit.dump._native`` (everything else is in pyproject.toml).

The extension is optional: without a compiler or zlib.h, ``pip install`` still succeeds and the
kdump writer uses its pure-Python path (same bytes, slower).  lzo and zstd are compiled in only
when their headers and libraries link (``make apt`` installs liblzo2-dev, libzstd-dev, zlib1g-dev);
a codec left out stays on the Python path.
"""

from __future__ import annotations

import os
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# (header, library, macro): optional codecs of the native core
OPTIONAL_CODECS = [("lzo/lzo1x.h", "lzo2", "KDK_HAVE_LZO"), ("zstd.h", "zstd", "KDK_HAVE_ZSTD")]


class ProbingBuildExt(build_ext):
    """build_ext that first finds out which optional codec libraries this machine can link."""

    def _links(self, header: str, library: str) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(f"#include <{header}>\nint main(void) {{ return 0; }}\n")
            try:
                objs = self.compiler.compile([src], output_dir=tmp)
                self.compiler.link_executable(objs, os.path.join(tmp, "probe"), libraries=[library])
            except Exception:  # CompileError, LinkError, a missing compiler: all mean "not here"
                return False
        return True

    def build_extension(self, ext: Extension) -> None:
        for header, library, macro in OPTIONAL_CODECS:
            if self._links(header, library):
                ext.define_macros.append((macro, "1"))
                ext.libraries.append(library)
            else:
                print(f"kdumpkit: {header} / lib{library} not found: that codec stays on the Python path")
        super().build_extension(ext)


# KDUMPKIT_BUILD_NATIVE=0: a pure wheel (py3-none-any), for a Python this machine cannot compile for
# (the lab installs one into a Debian whose Python is newer than the host's); the fallback path runs.
NATIVE = os.environ.get("KDUMPKIT_BUILD_NATIVE", "1") != "0"

setup(
    ext_modules=[] if not NATIVE else [
        Extension(
            "kdumpkit.dump._native",
            sources=["src/kdumpkit/dump/_native.c"],
            libraries=["z"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": ProbingBuildExt},
)
