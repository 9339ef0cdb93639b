"""``kdumpkit`` entry point.

Each sub-command lives in its own ``cli/cmd_<name>.py`` module exposing
``register(subparsers)``; the module sets ``func`` on its parser.  Only this
module turns :class:`kdumpkit.errors.KdumpkitError` into a one-line message
and an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from kdumpkit import __version__
from kdumpkit.errors import KdumpkitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdumpkit", description="Linux kernel crash dumps: capture, convert, analyse.")
    parser.add_argument("--version", action="version", version=f"kdumpkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import kdumpkit.cli as pkg

    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("cmd_")):
        importlib.import_module(f"kdumpkit.cli.{mod}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
        return int(rc or 0)
    except KdumpkitError as e:
        print(f"kdumpkit: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("kdumpkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
