"""Revalidation in the core, in-process: what another writer's change costs to see, and when.

A store that lists like S3 (no metadata in listings) and a mock clock: each
test asserts which requests the core made, and what it showed, at exact times.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from core import Cores
from cowfs.errors import NoAttribute, NotFound

#: Bigger than what the core fetches whole when it needs an object's metadata: a HEAD asks for that.
BIG = 300 * 1024


async def test_a_file_another_writer_changed_is_seen_once_its_own_answer_is_a_ttl_old(cores: Cores) -> None:
    cores.store.put("t1/ws1/shared.txt", b"version one", {})
    async with cores.mount(metadata_ttl=1.0) as a:
        assert await a.read("t1/ws1/shared.txt") == b"version one"
        cores.store.put("t1/ws1/shared.txt", b"version two, longer", {})
        await cores.advance(0.75)
        start = a.store.mark()
        assert (await a.find("t1/ws1/shared.txt")).size == len(b"version one")
        assert await a.read("t1/ws1/shared.txt") == b"version one"
        assert a.store.since(start) == Counter(), "an answer younger than the TTL was asked again"

        await cores.advance(0.25)
        assert (await a.find("t1/ws1/shared.txt")).size == len(b"version two, longer")
        assert await a.read("t1/ws1/shared.txt") == b"version two, longer"
        assert a.store.since(start) == Counter({("list", "t1/ws1/"): 1, ("get", "t1/ws1/shared.txt"): 1})

        cores.store.delete("t1/ws1/shared.txt")
        await cores.advance(1.0)
        assert not await a.exists("t1/ws1/shared.txt")


async def test_files_validated_by_their_own_request_need_no_listing_of_their_folder(cores: Cores) -> None:
    """Per-entry validation: the HEAD that brings a listed file's metadata proves it current."""
    for i in range(6):
        cores.store.put(f"t1/ws1/dir/f{i}.bin", os.urandom(BIG), {})
    async with cores.mount(metadata_ttl=0.3) as a:
        assert (await a.find("t1/ws1/dir/f0.bin")).size == BIG
        await cores.advance(0.5)
        start = a.store.mark()
        for i in range(1, 6):
            assert (await a.find(f"t1/ws1/dir/f{i}.bin")).size == BIG
        assert a.store.since(start) == Counter({("head", f"t1/ws1/dir/f{i}.bin"): 1 for i in range(1, 6)})

        cores.store.delete("t1/ws1/dir/f3.bin")
        await cores.advance(0.5)
        start = a.store.mark()
        assert not await a.exists("t1/ws1/dir/f3.bin")
        assert a.store.since(start) == Counter({("list", "t1/ws1/dir/"): 1})


async def test_a_deep_path_revalidates_only_the_folder_of_its_file(cores: Cores) -> None:
    """Looking a file up goes through every folder above it, once per TTL; only its own folder is listed."""
    async with cores.mount(metadata_ttl=0.25) as a:
        await a.makedirs("t1/ws1/a/b/c")
        await a.write("t1/ws1/a/b/c/f.txt", b"x")
        await a.ns.sync()
        start = a.store.mark()
        for _ in range(32):
            assert (await a.find("t1/ws1/a/b/c/f.txt")).size == 1
            await cores.advance(1 / 16)
        # Its folder counts as listed when it was made; then one LIST a TTL: at 0.25, 0.5, ... 1.75 s.
        assert a.store.since(start) == Counter({("list", "t1/ws1/a/b/c/"): 7}), "one LIST per TTL, of one folder"


async def test_a_file_this_mount_owns_is_never_revalidated_by_a_listing(cores: Cores) -> None:
    """An unsynced or open file is left as it is by a listing, so looking at it costs no LIST,
    however stale its folder's listing (the kernel asks for ``security.capability``
    before every write)."""
    async with cores.mount(metadata_ttl=0.2, write_back_delay=30) as a:
        await a.makedirs("t1/ws1/dir")
        await a.write("t1/ws1/dir/closed.txt", b"closed, not uploaded yet")
        fh = await a.open("t1/ws1/dir/open.txt", os.O_CREAT | os.O_WRONLY)
        opened = a.ns.handle(fh).node
        await cores.advance(0.5)
        start = a.store.mark()
        for i in range(4):
            await a.ns.write(fh, 7 * i, b"line %d\n" % i)
            assert (await a.ns.getattr(opened.ino)).size == 7 * (i + 1)
            assert (await a.find("t1/ws1/dir/closed.txt")).size == 24
            with pytest.raises(NoAttribute):
                await a.ns.getxattr(opened.ino, b"security.capability")
            await cores.advance(0.3)
        assert a.store.since(start) == Counter()
        await a.close(fh)
        assert await a.read("t1/ws1/dir/open.txt") == b"".join(b"line %d\n" % i for i in range(4))


async def test_the_kernels_security_capability_question_costs_no_listing(cores: Cores) -> None:
    """cowfs stores only ``user.*`` names: other ones are answered without revalidating the file."""
    cores.store.put("t1/ws1/dir/f.txt", b"remote", {})
    async with cores.mount(metadata_ttl=0.2) as a:
        assert await a.read("t1/ws1/dir/f.txt") == b"remote"
        ino = (await a.find("t1/ws1/dir/f.txt")).ino
        await cores.advance(0.5)
        start = a.store.mark()
        with pytest.raises(NoAttribute):
            await a.ns.getxattr(ino, b"security.capability")
        assert a.store.since(start) == Counter()
        with pytest.raises(NoAttribute):
            await a.ns.getxattr(ino, b"user.missing")
        assert a.store.since(start) == Counter({("list", "t1/ws1/dir/"): 1}), "user.* comes from revalidated metadata"


async def test_a_missing_object_is_an_answer_not_an_outage(cores: Cores) -> None:
    """A 404 to a HEAD removes the file; listings go on being refreshed after it."""
    cores.store.put("t1/ws1/big.bin", os.urandom(BIG), {})
    cores.store.put("t1/ws1/small.txt", b"small", {})
    async with cores.mount() as a:
        assert (await a.find("t1/ws1/small.txt")).size == 5
        cores.store.delete("t1/ws1/big.bin")
        start = a.store.mark()
        assert not await a.exists("t1/ws1/big.bin")
        assert a.store.since(start) == Counter({("head", "t1/ws1/big.bin"): 1})
        cores.store.put("t1/ws1/new.txt", b"new", {})
        await cores.advance(1.0)
        assert await a.listdir("t1/ws1") == ["new.txt", "small.txt"]
