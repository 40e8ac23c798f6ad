"""Folders only their owner can enter: the cache directory and the control socket's folder.

The cache of a multi-user mount holds every tenant's files and names, and
whoever can write the socket's folder can put a socket there that answers
``cowfs sync`` falsely: neither may be reachable by another user.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import UsageError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
#: The umask of a process whose every file is private.
PRIVATE_UMASK = 0o077


def private_dir(path: Path, what: str, *, follow_symlinks: bool = True) -> Path:
    """Make ``path`` a folder only this user can enter, or refuse it with one line.

    Created 0700 if missing; one of ours that others could enter is
    tightened to 0700; one that belongs to another user (or, with
    ``follow_symlinks=False``, a symlink) is refused, as its owner could read
    or replace what is put there.
    """
    try:
        try:
            path.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
        except FileExistsError:
            pass
        st = os.stat(path, follow_symlinks=follow_symlinks)
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"{what} {path} is a symlink; refusing to use it")
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{what} {path} is not a directory")
        if st.st_uid != os.geteuid():
            raise UsageError(f"{what} {path} belongs to uid {st.st_uid}, not to uid {os.geteuid()}; refusing to use it")
        if stat.S_IMODE(st.st_mode) & PRIVATE_UMASK:
            os.chmod(path, PRIVATE_DIR_MODE)
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror or exc}") from None
    return path


def open_private(path: Path, flags: int) -> int:
    """A descriptor on a file only this user can read, created 0600 (an old one is tightened)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    os.fchmod(fd, PRIVATE_FILE_MODE)
    return fd
