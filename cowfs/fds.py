"""Copying between open descriptors, for staging files and cache entries; giving a file's blocks back."""

from __future__ import annotations

import ctypes
import os

CHUNK = 1 << 20
#: fallocate(2)'s modes: free the blocks of a range, the file's size unchanged.
_PUNCH_HOLE = 0x02
_KEEP_SIZE = 0x01
_libc = ctypes.CDLL(None, use_errno=True)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """All of ``data`` at ``offset`` (a write may take fewer bytes than it was given)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def copy_fd(src: int, dst: int, size: int) -> None:
    """Copy the first ``size`` bytes of ``src`` (fewer if it is shorter) to the same offsets of ``dst``.

    Positional reads and writes leave both descriptors' offsets alone, so a
    descriptor shared with readers can be a source.
    """
    offset = 0
    while offset < size:
        chunk = os.pread(src, min(CHUNK, size - offset), offset)
        if not chunk:
            break
        os.pwrite(dst, chunk, offset)
        offset += len(chunk)


def punch_holes(fd: int, spans: list[tuple[int, int]]) -> None:
    """Give back the disk blocks of each ``(start, end)`` span of the file; they read as zeros after.

    The standard library has no fallocate(2) with modes (Linux's, through libc)."""
    for start, end in spans:
        if _libc.fallocate(fd, _PUNCH_HOLE | _KEEP_SIZE, ctypes.c_int64(start), ctypes.c_int64(end - start)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
