"""Reads of a file the cache can keep whole, in the core: what a read leaves held once it is closed."""

from __future__ import annotations

import os
import threading
from typing import Any

from core import Cores

MiB = 1024 * 1024


async def test_a_file_read_before_its_download_was_handed_over_holds_no_descriptor_once_closed(
        cores: Cores) -> None:
    """The reader took every byte as it landed and closed the file before the download
    ended: the finished download must not leave a descriptor on the node, or the cache's
    eviction of that copy would not free its blocks (a small disk filled by files no one reads)."""
    data = os.urandom(3 * MiB)
    async with cores.mount() as a:
        await a.makedirs("t1/ws1")
        await a.ns.sync()
        cores.store.put("t1/ws1/read.bin", data, {})
        await cores.advance(2)
        cache = a.ns.contents.cache
        handed = threading.Event()
        move_in = cache.move_in

        def move_in_later(*args: Any, **kwargs: Any) -> None:
            handed.wait()
            move_in(*args, **kwargs)

        cache.move_in = move_in_later
        fh = await a.open("t1/ws1/read.bin")
        assert await a.read_handle(fh) == data
        await a.close(fh)
        handed.set()
        await cores.settle()
        node = await a.find("t1/ws1/read.bin")
        assert node.fd is None, "a file nobody has open keeps a descriptor on its bytes"
        assert await a.read("t1/ws1/read.bin") == data
        assert a.store.count("get", "t1/ws1/read.bin") == 1, "the second read came from the cache"
