"""A file several times the cache, in the core: read through a bounded window of it.

The cache folder (the cache and the downloads beside it) is measured on disk
after every read: it never takes more than the cache may hold, however much
of the file has been read, and re-reads and jumps get their bytes again.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from core import READ_SIZE, Core, Cores

from cowfs.ranges import window
from cowfs.window import DROP_PAGES_AFTER

MiB = 1024 * 1024
CACHE = 12 * MiB
SIZE = 48 * MiB


def on_disk(folder: Path) -> int:
    """Bytes the files under ``folder`` occupy on the disk (holes not counted)."""
    return sum(os.lstat(Path(top) / name).st_blocks * 512 for top, _, names in os.walk(folder) for name in names)


def cache_folder(cores: Cores) -> int:
    """What the first mount's cache and its downloads take on the disk."""
    base = cores.root / "core1"
    return on_disk(base / "cache") + on_disk(base / "tmp")


async def big_file(cores: Cores, core: Core) -> bytes:
    data = random.Random(7).randbytes(SIZE)
    await core.makedirs("t1/ws1")
    await core.ns.sync()
    cores.store.put("t1/ws1/big.bin", data, {})
    await cores.advance(2)
    return data


async def read_watching(cores: Cores, core: Core, offsets: list[int]) -> tuple[bytes, int]:
    """The bytes read at ``offsets`` through one handle, and the most the cache folder took meanwhile."""
    fh = await core.open("t1/ws1/big.bin")
    out, peak = [], 0
    try:
        for offset in offsets:
            out.append(await core.ns.read(fh, offset, READ_SIZE))
            peak = max(peak, cache_folder(cores))
    finally:
        await core.ns.release(fh)
    return b"".join(out), peak


async def test_a_file_four_times_the_cache_is_read_whole_and_the_cache_folder_stays_within_its_limit(
        cores: Cores) -> None:
    async with cores.mount(cache_size=CACHE) as a:
        data = await big_file(cores, a)
        every = list(range(0, SIZE, READ_SIZE))
        got, peak = await read_watching(cores, a, every)
        assert got == data
        assert peak <= CACHE, f"the cache folder took {peak / MiB:.1f} MiB"
        first = a.store.count("get", "t1/ws1/big.bin")

        again, peak = await read_watching(cores, a, every)
        assert again == data
        assert peak <= CACHE, f"the cache folder took {peak / MiB:.1f} MiB on the re-read"
        assert a.store.count("get", "t1/ws1/big.bin") > first, "the re-read fetched its bytes again"

        await cores.settle()
        assert on_disk(cores.root / "core1" / "tmp") == 0, "the window's file went with its last reader"


async def test_the_kernel_lets_go_of_its_pages_of_a_file_read_through_a_window_every_few_windows(
        cores: Cores) -> None:
    async with cores.mount(cache_size=CACHE) as a:
        await big_file(cores, a)
        await a.write("t1/ws1/small.txt", b"fits the cache")
        await a.sync()
        big, small = await a.find("t1/ws1/big.bin"), await a.find("t1/ws1/small.txt")
        await read_watching(cores, a, list(range(0, SIZE, READ_SIZE)))
        assert await a.read("t1/ws1/small.txt") == b"fits the cache"
        await cores.settle()
        every = DROP_PAGES_AFTER * sum(window(CACHE))
        assert a.pages_dropped == [big.ino] * (SIZE // every)
        assert small.ino not in a.pages_dropped


async def test_jumps_back_and_far_ahead_in_a_file_larger_than_the_cache_read_the_right_bytes(cores: Cores) -> None:
    async with cores.mount(cache_size=CACHE) as a:
        data = await big_file(cores, a)
        jumps = [SIZE - READ_SIZE, 0, SIZE // 2, 5 * MiB, SIZE // 2 + READ_SIZE, 7]
        got, peak = await read_watching(cores, a, jumps)
        assert got == b"".join(data[offset:offset + READ_SIZE] for offset in jumps)
        assert peak <= CACHE


async def test_a_write_to_a_file_larger_than_the_cache_keeps_its_other_bytes(cores: Cores) -> None:
    async with cores.mount(cache_size=CACHE) as a:
        data = await big_file(cores, a)
        fh = await a.open("t1/ws1/big.bin", os.O_RDWR)
        assert await a.ns.read(fh, 3 * MiB, 4) == data[3 * MiB:3 * MiB + 4]
        await a.ns.write(fh, MiB, b"changed")
        await a.close(fh)
        await a.sync()
        changed = data[:MiB] + b"changed" + data[MiB + 7:]
        assert cores.store.stored("t1/ws1/big.bin") == {"t1/ws1/big.bin": changed}
        assert await a.read("t1/ws1/big.bin") == changed
