"""A cache directory's owner and its lock: which store it belongs to, which process holds it.

The journal in a cache directory holds changes for one store; replayed into
another they never reach the right one. So the daemon records the store and
tenant in ``owner.json`` (0600) when it uses the folder, with how it reached
the store (endpoint, region, addressing), so that ``cowfs fsck`` needs
nothing else; a mount or fsck naming another store is refused.

Whoever works on the journal holds ``lock`` (an exclusive ``flock``): the
daemon for its whole life, fsck while it replays. The holder writes its PID
and mount point into the lock file, so that whoever is refused can say
where and by whom the folder is in use.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import CacheInUse, UsageError
from .private import open_private

OWNER = "owner.json"
LOCK = "lock"


@dataclass(frozen=True)
class Owner:
    """The store (by URL) and tenant a cache directory belongs to, and how that store is reached."""

    store: str
    tenant: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False

    def describe(self) -> str:
        return self.store + (f" (tenant {self.tenant})" if self.tenant else "")


def recorded_owner(cache_dir: Path) -> Owner | None:
    """The owner ``cache_dir`` records; None for a folder made before owners were recorded."""
    try:
        doc = json.loads((cache_dir / OWNER).read_text())
        return Owner(doc["store"], doc.get("tenant"), doc.get("endpoint_url"), doc.get("region"),
                     bool(doc.get("path_style")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cache directory {cache_dir}: unreadable {OWNER}: {exc}") from None


def check_owner(cache_dir: Path, owner: Owner) -> None:
    """Refuse ``cache_dir`` if it records another store or tenant than ``owner``."""
    recorded = recorded_owner(cache_dir)
    if recorded is not None and (recorded.store, recorded.tenant) != (owner.store, owner.tenant):
        raise UsageError(f"cache directory {cache_dir} belongs to {recorded.describe()}, not to {owner.describe()}")


def record_owner(cache_dir: Path, owner: Owner) -> None:
    """Record ``owner`` in ``cache_dir`` (refused if it records another one), replacing the file whole."""
    check_owner(cache_dir, owner)
    if recorded_owner(cache_dir) == owner:
        return
    fresh = cache_dir / f"{OWNER}.new"
    with os.fdopen(open_private(fresh, os.O_WRONLY | os.O_TRUNC), "w") as f:
        json.dump(asdict(owner), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(fresh, cache_dir / OWNER)


class Hold:
    """This process's hold on a cache directory, until ``close`` (or the end of a ``with``)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hold(cache_dir: Path, mountpoint: Path | None) -> Hold:
    """Hold ``cache_dir`` for this process (the daemon of ``mountpoint``, or fsck with None).

    Raises ``CacheInUse`` naming the holder at once rather than waiting for it.
    """
    fd = open_private(cache_dir / LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder = json.dumps({"pid": os.getpid(), "mountpoint": str(mountpoint) if mountpoint else None})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
    except BlockingIOError:
        in_use = CacheInUse(f"cache directory {cache_dir} is in use by {_holder(fd)}")
        os.close(fd)
        raise in_use from None
    except BaseException:
        os.close(fd)
        raise
    return Hold(fd)


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it (older daemons wrote nothing)."""
    try:
        doc = json.loads(os.pread(fd, 4096, 0))
        pid, mountpoint = int(doc["pid"]), doc.get("mountpoint")
    except (OSError, ValueError, KeyError, TypeError):
        return "another cowfs process"
    if mountpoint:
        return f"the cowfs daemon of {mountpoint} (PID {pid})"
    return f"cowfs fsck (PID {pid})"
