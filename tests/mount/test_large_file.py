"""A file several times ``--cache-size`` read through a real mount: the right bytes, and
the cache folder within its limit all along."""

from __future__ import annotations

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
