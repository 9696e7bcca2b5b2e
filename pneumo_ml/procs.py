"""Which process owns a run, and whether it is still alive (stdlib only: decoder workers import this too)."""
from __future__ import annotations

import os
import socket


def start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so that a recycled pid is not taken for it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (not Linux): kill(0) is all there is


def owner_token(pid: int | None = None) -> str:
    """'host pid start' of this (or another) process: recorded on a run while it is open."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()} {pid} {start_ticks(pid)}".strip()


def owner_alive(token: str) -> bool | None:
    """Whether the process a token names still runs; None when it ran on another host (cannot be known here)."""
    host, _, rest = token.partition(" ")
    pid_text, _, ticks = rest.partition(" ")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    return alive(pid) and (not ticks or start_ticks(pid) in ("", ticks))
