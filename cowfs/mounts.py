"""Mounts on this machine: what a mount point holds before cowfs mounts there or
unmounts it, and the cowfs mounts there are (``cowfs mounts``).

Mounting over a mount stacks a second one on top: the first one's files are
hidden, and its control socket (named after the mount point) is taken over.
Mounting over a folder that holds files hides them. Both are refused, naming
what is there: the file system type and source from
``/proc/self/mountinfo``, or a few of the names. A mount whose daemon died
answers every call with ``ENOTCONN``; ``cowfs umount`` takes it away.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import control
from .errors import CowfsError, UsageError

MOUNTINFO = Path("/proc/self/mountinfo")
#: The file system type of a cowfs mount (FUSE with ``subtype=cowfs``).
COWFS_TYPE = "fuse.cowfs"
#: The ``-o`` option that lets a mount hide the files of its mount point (FUSE 2's name).
NONEMPTY = "nonempty"
#: Names of a non-empty mount point shown in the refusal.
SHOWN_NAMES = 3


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo: where, which file system type, mounted from what."""

    target: str
    fstype: str
    source: str

    def describe(self) -> str:
        return f"{self.fstype} from {self.source}"


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The mounts of a mountinfo text, in mount order (the last one at a path is on top)."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            entries.append(MountEntry(_unescape(fields[4]), _unescape(fields[sep + 1]), _unescape(fields[sep + 2])))
        except (ValueError, IndexError):
            continue
    return entries


def mount_at(path: str | os.PathLike[str]) -> MountEntry | None:
    """The mount on top at ``path``, if ``path`` is a mount point."""
    target = os.path.realpath(path)
    found = [e for e in parse_mountinfo(MOUNTINFO.read_text()) if e.target == target]
    return found[-1] if found else None


def _is_dead(path: str | os.PathLike[str]) -> bool:
    """A FUSE mount whose daemon is gone: ``statfs`` (never answered from the kernel's caches) fails."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def check_free(path: Path, allow_nonempty: bool) -> None:
    """Refuse to mount at ``path`` if it is a mount already, no folder, or (unless allowed) holds files."""
    entry = mount_at(path)
    if entry is not None:
        if _is_dead(path):
            raise UsageError(f"mount point {path} is a dead mount ({entry.describe()}, its daemon is gone): "
                             f"cowfs umount {path} first")
        raise UsageError(f"mount point {path} is already a mount ({entry.describe()}): unmount it first")
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        raise UsageError(f"mount point {path} does not exist (mkdir -p it first)") from None
    except NotADirectoryError:
        raise UsageError(f"mount point {path} is not a directory") from None
    except OSError as exc:
        raise UsageError(f"mount point {path}: {exc.strerror}") from None
    if names and not allow_nonempty:
        shown = ", ".join(names[:SHOWN_NAMES]) + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES
                                                  else "")
        raise UsageError(f"mount point {path} is not empty ({shown}): the mount would hide it; "
                         f"use an empty folder, or -o {NONEMPTY}")


def dead_cowfs_mount(path: str | os.PathLike[str]) -> MountEntry | None:
    """The cowfs mount at ``path`` if its daemon is gone (every call fails with ``ENOTCONN``)."""
    entry = mount_at(path)
    if entry is not None and entry.fstype == COWFS_TYPE and _is_dead(path):
        return entry
    return None


def unmount(path: str | os.PathLike[str], *, lazy_if_busy: bool = False) -> None:
    """``fusermount3 -u``; with ``lazy_if_busy``, ``-u -z`` when something still has it open."""
    done = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, text=True)
    if done.returncode != 0 and lazy_if_busy:
        done = subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise CowfsError(done.stderr.strip() or f"could not unmount {path}")


@dataclass
class ActiveMount:
    """A cowfs mount, and what serves it where its daemon answers us."""

    mountpoint: str
    store: str
    tenant: str | None = None
    cacheDir: str | None = None
    pid: int | None = None

    def to_json(self) -> dict:
        return {"mountpoint": self.mountpoint, "store": self.store, "tenant": self.tenant,
                "cacheDir": self.cacheDir, "pid": self.pid}


def active(mountinfo: Path = MOUNTINFO, timeout: float = 2.0) -> list[ActiveMount]:
    """Every cowfs mount; its daemon's PID, tenant and cache dir where its control socket answers us."""
    found = [ActiveMount(e.target, e.source) for e in parse_mountinfo(mountinfo.read_text()) if e.fstype == COWFS_TYPE]
    for mount in found:
        try:
            status = control.request(mount.mountpoint, {"cmd": "status"}, timeout=timeout)
        except CowfsError:  # another user's daemon, or one that does not answer
            continue
        mount.store, mount.tenant = status.get("store", mount.store), status.get("tenant")
        mount.cacheDir, mount.pid = status.get("cacheDir"), status.get("pid")
    return found
