"""A file several times ``--cache-size`` read through a real mount: the right bytes, and
the cache folder within its limit all along."""

from __future__ import annotations

import ctypes
import mmap
import os
import random
from pathlib import Path

import pytest

from conftest import s3_store_of

MiB = 1024 * 1024
CACHE = 8 * MiB
SIZE = 40 * MiB


def on_disk(folder: Path) -> int:
    """Bytes the files under ``folder`` occupy on the disk (holes not counted)."""
    return sum(os.lstat(Path(top) / name).st_blocks * 512 for top, _, names in os.walk(folder) for name in names)


@pytest.mark.mount
def test_a_file_five_times_the_cache_reads_right_and_the_cache_folder_stays_within_its_size(s3_bucket, mount_factory):
    data = random.Random(11).randbytes(SIZE)
    s3_store_of(s3_bucket).put("t1/ws1/big.bin", data, {})
    mount = mount_factory(extra=["--cache-size", str(CACHE)])
    read, peak = [], 0
    with open(mount.path / "t1" / "ws1" / "big.bin", "rb", buffering=0) as f:
        while chunk := f.read(MiB):
            read.append(chunk)
            peak = max(peak, on_disk(mount.cache_dir))
    assert b"".join(read) == data
    assert peak <= CACHE, f"the cache folder took {peak / MiB:.1f} MiB"


def kernel_cached(fd: int, size: int) -> int:
    """Bytes of the open file ``fd`` the kernel holds in its page cache (mincore(2) of a
    private mapping, which reads nothing in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with mmap.mmap(fd, size, access=mmap.ACCESS_COPY) as mapped:
        vector = (ctypes.c_ubyte * pages)()
        if libc.mincore(ctypes.addressof(ctypes.c_char.from_buffer(mapped)), size, vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return sum(byte & 1 for byte in vector) * mmap.PAGESIZE


@pytest.mark.mount
def test_the_kernel_keeps_only_a_few_windows_of_a_file_read_through_one(s3_bucket, mount_factory):
    s3_store_of(s3_bucket).put("t1/ws1/big.bin", random.Random(12).randbytes(SIZE), {})
    mount = mount_factory(extra=["--cache-size", str(CACHE)])
    fd = os.open(mount.path / "t1" / "ws1" / "big.bin", os.O_RDONLY)
    try:
        while os.read(fd, MiB):
            pass
        cached = kernel_cached(fd, SIZE)
    finally:
        os.close(fd)
    assert cached <= SIZE // 2, f"the kernel holds {cached / MiB:.1f} MiB of the {SIZE // MiB} MiB file"
