"""Reading the guest's serial console: markers, ground truth, phase times.

The guest prints lines ``@@KDUMPKIT-LAB key=value ...`` and blocks
``@@KDUMPKIT-LAB begin NAME`` … ``@@KDUMPKIT-LAB end NAME``.  The host stamps
each console line with its own clock as it arrives, so phase durations are
host wall time (what a user waits), not guest uptime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARK = "@@KDUMPKIT-LAB"
#: The capture initramfs' own progress lines (kdumpkit.setup.initramfs), read the same way.
INIT_MARK = "kdumpkit-init:"
_KV = re.compile(r"(\w[\w-]*)=(\S*)")


@dataclass(frozen=True)
class Line:
    """One console line and the host time (seconds since QEMU start) it arrived."""

    t: float
    text: str


def clean(raw: bytes) -> str:
    """A console line as text: CR and trailing blanks dropped, bad bytes escaped."""
    return raw.decode("utf-8", "backslashreplace").replace("\r", "").rstrip()


def marker(text: str) -> dict[str, str] | None:
    """The key/values of a marker line (``fail reason=...`` keeps the rest as reason)."""
    for mark in (MARK, INIT_MARK):
        pos = text.find(mark + " ")
        if pos >= 0:
            body = text[pos + len(mark) + 1:]
            break
    else:
        return None
    if body.startswith("fail reason="):
        return {"fail": body[len("fail reason="):]}
    if body.startswith(("begin ", "end ")):
        word, name = body.split(" ", 1)
        return {word: name.strip()}
    return dict(_KV.findall(body))


def block(lines: list[str], name: str) -> str | None:
    """Text between ``begin NAME`` and ``end NAME`` markers (None if incomplete)."""
    start = None
    for i, text in enumerate(lines):
        m = marker(text)
        if not m:
            continue
        if m.get("begin") == name:
            start = i + 1
        elif m.get("end") == name and start is not None:
            return "\n".join(lines[start:i]) + "\n"
    return None


#: The phases of a run, each ending at the event named; ``crash`` ends when the
#: capture kernel's first console line ("Linux version") arrives.
PHASES = ("boot", "prepare", "crash", "capture_boot", "capture")


def phase_times(lines: list[Line]) -> dict[str, float]:
    """Durations (s) of the phases that completed, from marker arrival times."""
    events: dict[str, float] = {"start": 0.0}
    for ln in lines:
        m = marker(ln.text)
        if m and "phase" in m:
            events.setdefault(m["phase"], ln.t)
        elif "trigger" in events and "capture_kernel" not in events and "Linux version" in ln.text:
            events["capture_kernel"] = ln.t
    spans = {
        "boot": ("start", "boot-done"),
        "prepare": ("boot-done", "trigger"),
        "crash": ("trigger", "capture_kernel"),
        "capture_boot": ("capture_kernel", "capture-start"),
        "capture": ("capture-start", "capture-done"),
    }
    out: dict[str, float] = {}
    for name, (a, b) in spans.items():
        if a in events and b in events:
            out[name] = round(events[b] - events[a], 2)
    return out


def last_phase(lines: list[Line]) -> str:
    """The last phase marker seen (for error messages)."""
    phase = "qemu started"
    for ln in lines:
        m = marker(ln.text)
        if m and "phase" in m:
            phase = m["phase"]
    return phase
