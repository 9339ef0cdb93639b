"""``kdumpkit estimate-crashkernel``: ``kdumpkit lab estimate-crashkernel`` under a shorter name."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    from kdumpkit.cli.cmd_lab import add_estimate_args

    p = sub.add_parser("estimate-crashkernel",
                       help="measure the smallest crashkernel= that captures, by crashing the lab guest (minutes)")
    add_estimate_args(p)
