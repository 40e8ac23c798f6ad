"""``cowfs mounts``: the cowfs file systems mounted on this machine, and what serves each."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import control
from .errors import CowfsError

#: How /proc/mounts writes a space, tab, newline or backslash in a path.
_ESCAPE = re.compile(r"\\([0-7]{3})")
FSTYPE = "fuse.cowfs"


@dataclass
class ActiveMount:
    mountpoint: str
    store: str
    tenant: str | None = None
    cacheDir: str | None = None
    pid: int | None = None

    def to_json(self) -> dict:
        return {"mountpoint": self.mountpoint, "store": self.store, "tenant": self.tenant,
                "cacheDir": self.cacheDir, "pid": self.pid}


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


def from_table(text: str) -> list[ActiveMount]:
    """The cowfs lines of a mount table (/proc/mounts' format): mount point and store."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == FSTYPE:
            found.append(ActiveMount(_unescape(fields[1]), _unescape(fields[0])))
    return found


def active(table: Path = Path("/proc/mounts"), timeout: float = 2.0) -> list[ActiveMount]:
    """Every cowfs mount; its daemon's PID, tenant and cache dir where its control socket answers us."""
    mounts = from_table(table.read_text())
    for mount in mounts:
        try:
            status = control.request(mount.mountpoint, {"cmd": "status"}, timeout=timeout)
        except CowfsError:  # another user's daemon, or one that does not answer
            continue
        mount.store, mount.tenant = status.get("store", mount.store), status.get("tenant")
        mount.cacheDir, mount.pid = status.get("cacheDir"), status.get("pid")
    return mounts
