"""Copying between open descriptors, for staging files and cache entries."""

from __future__ import annotations

import os

CHUNK = 1 << 20


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
