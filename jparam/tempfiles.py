"""Temporary names for crash-safe saves, and the rule for removing what killed saves left.

Every save writes under a temporary name next to its target and renames it into place, so a
crash leaves the target as it was, but may leave the temporary behind. jparam names its
temporaries ``.<target>.jp-<host>-<pid>-<random>.<kind>``, where ``kind`` is ``tmp`` (being
written), ``old`` (a checkpoint step moved aside while it is replaced) or ``trash`` (being
deleted), ``host`` is a hash of the host name and ``pid`` the writer's process id. The next save
into the same place removes a leftover once its writer is certainly gone:

- it was written on this host by a process that no longer exists, or
- nothing in it has changed for `STALE_AFTER_S` seconds (a day), whoever wrote it: the rule for
  leftovers of other hosts on a shared filesystem, whose processes this host cannot see.

A save still running in another process therefore never loses its files. Trash is removed by
anyone: it is never read again.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import NamedTuple

import xxhash

__all__ = ["STALE_AFTER_S", "Temp", "abandoned", "discard", "remove", "temp_path", "temps"]

STALE_AFTER_S = 24 * 60 * 60
HOST = xxhash.xxh3_64_hexdigest(socket.gethostname().encode())[:8]
_NAME = re.compile(
    r"^\.(?P<target>.+)\.jp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}"
    r"\.(?P<kind>tmp|old|trash)$"
)


class Temp(NamedTuple):
    """A jparam temporary found on disk: its path, its target's name, who made it, its kind."""

    path: Path
    target: str
    host: str
    pid: int
    kind: str


def temp_path(target: Path, kind: str) -> Path:
    """A fresh temporary name next to ``target`` that says who made it (this host and pid)."""
    token = secrets.token_hex(6)
    return target.with_name(f".{target.name}.jp-{HOST}-{os.getpid()}-{token}.{kind}")


def temps(directory: Path, target: str | None = None) -> list[Temp]:
    """jparam's temporaries in ``directory`` (only those of ``target`` when given)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        m = _NAME.match(name)
        if m and (target is None or m["target"] == target):
            found.append(Temp(directory / name, m["target"], m["host"], int(m["pid"]), m["kind"]))
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to another user
        return True
    return True


def _last_change(path: Path) -> float:
    """The newest modification time in ``path`` (the whole tree for a directory)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):  # removed meanwhile
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def abandoned(temp: Temp) -> bool:
    """Whether ``temp``'s writer is certainly gone (see the module's docstring for the rule)."""
    if temp.host == HOST and not _alive(temp.pid):
        return True
    try:
        return time.time() - _last_change(temp.path) > STALE_AFTER_S
    except OSError:  # removed meanwhile: nothing to do
        return False


def remove(path: Path) -> None:
    """Deletes a file or a directory tree; tolerates another process deleting it meanwhile."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def discard(path: Path, target: Path) -> None:
    """Deletes ``path`` so that it stops counting at once: renamed to trash, then removed.

    A crash midway leaves a trash name (removed by the next save), never a half-deleted
    ``path``. ``target`` names what it belongs to (``step_000000005`` for a step or its aside).
    """
    trash = temp_path(target, "trash")
    try:
        os.rename(path, trash)
    except FileNotFoundError:  # another process discarded it first
        return
    remove(trash)
