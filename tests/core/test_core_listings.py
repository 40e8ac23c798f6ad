"""Revalidation in the core, in-process: what another writer's change costs to see, and when.

A store that lists like S3 (no metadata in listings) and a mock clock: each
test asserts which requests the core made, and what it showed, at exact times.
"""

from __future__ import annotations

import os
import stat
from collections import Counter

import pytest

from core import Cores
from cowfs.errors import NoAttribute
from cowfs.namespace import LISTING_LAG, ahead, listings

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


async def test_creates_in_a_busy_folder_do_not_wait_for_its_listing(cores: Cores) -> None:
    """A folder in continuous use is answered from its listing while the next one is made behind."""
    async with cores.mount(metadata_ttl=0.5, write_back_delay=30) as a:
        await a.makedirs("t1/ws1")
        made: list[str] = []

        async def create() -> None:
            name = f"f{len(made):04d}.txt"
            await a.write(f"t1/ws1/{name}", name.encode())
            made.append(name)

        for _ in range(25):  # three TTLs of creates, every 1/16 s; the last one's listing answered
            await create()
            await cores.advance(1 / 16)
        listed = a.store.count("list", "t1/ws1/")
        with a.store.holding("list"):
            for _ in range(12):  # a TTL and a half more, the folder's next LIST unanswered
                await cores.at_once(create)
                await cores.advance(1 / 16)
            assert a.store.held == 1 and a.store.count("list", "t1/ws1/") == listed + 1
        await cores.settle()
        assert await a.listdir("t1/ws1") == sorted(made)
        assert a.store.count("list", "t1/ws1/") == listed + 1


async def test_a_new_name_from_another_writer_shows_within_two_ttls_in_a_busy_folder(cores: Cores) -> None:
    ttl = 0.5
    async with cores.mount(metadata_ttl=ttl) as a:
        await a.makedirs("t1/ws1")
        for i in range(16):
            await a.write(f"t1/ws1/f{i}.txt", b"x")
            await cores.advance(1 / 16)
        cores.store.put("t1/ws1/remote.txt", b"remote", {})
        waited = 0.0
        while not await a.exists("t1/ws1/remote.txt"):
            assert waited < 2 * ttl, "a name another writer put stayed hidden"
            await a.write(f"t1/ws1/g{waited}.txt", b"x")
            await cores.advance(1 / 16)
            waited += 1 / 16
        assert await a.read("t1/ws1/remote.txt") == b"remote"


def put_tree(cores: Cores, shape: tuple[int, ...], under: str) -> set[str]:
    """Files at the leaves of a tree of folders ``shape`` wide at each level; returns every path in it."""
    paths: set[str] = set()
    folders = [""]
    for level, width in enumerate(shape):
        last = level == len(shape) - 1
        folders = [f"{folder}{'f' if last else f'd{level}-'}{i}{'' if last else '/'}"
                   for folder in folders for i in range(width)]
        paths.update(folder.rstrip("/") for folder in folders)
    for path in paths - {p for p in paths if any(q.startswith(p + "/") for q in paths)}:
        cores.store.put(f"{under}/{path}", path.encode(), {})
    return paths


async def test_a_walk_of_a_tree_lists_each_subtree_at_once_and_fetches_each_file_once(cores: Cores) -> None:
    """Folders a walker reaches are listed flat, a subtree at a time (rclone's ``--fast-list``),
    and the small files a listing shows are fetched ahead, each once; ``rm -r`` empties the tree."""
    tree = put_tree(cores, (4, 6, 2, 2), "t1/ws1/tree")
    files = {path for path in tree if "/f" in path}
    async with cores.mount() as a:
        await a.find("t1/ws1/tree")
        start = a.store.mark()
        assert await a.walk("t1/ws1/tree") == tree
        lists = Counter({("list", "t1/ws1/tree/"): 1}) + Counter(("list", f"t1/ws1/tree/d0-{i}/") for i in range(4))
        fetches = Counter(("get", f"t1/ws1/tree/{f}") for f in files)
        heads = Counter(("head", f"t1/ws1/tree/{d}/") for d in tree - files)  # a folder's marker, absent here
        assert a.store.since(start) == lists + fetches + heads

        async def remove(path: str) -> None:
            for name in await a.listdir(path):
                if stat.S_ISDIR((await a.find(f"{path}/{name}")).mode):
                    await remove(f"{path}/{name}")
                    await a.rmdir(f"{path}/{name}")
                else:
                    await a.unlink(f"{path}/{name}")

        start = a.store.mark()
        await remove("t1/ws1/tree")
        await a.rmdir("t1/ws1/tree")
        await a.ns.sync()
        assert cores.store.stored("t1/ws1/tree/") == {}
        deletes = [key for (kind, key), n in a.store.since(start).items() if kind == "delete" for _ in range(n)]
        assert sorted(deletes) == sorted(set(deletes)) and {f"t1/ws1/tree/{f}" for f in files} <= set(deletes)
        assert a.store.count("list", "t1/ws1/tree/") == 5, "rm -r listed again what the walk had listed"


async def test_walking_a_known_tree_again_lists_it_in_one_go(cores: Cores) -> None:
    """A folder whose known subtree fits into one flat listing is listed flat from the top of the walk."""
    tree = put_tree(cores, (3, 3, 1), "t1/ws1/tree")
    async with cores.mount(metadata_ttl=0.25) as a:
        assert await a.walk("t1/ws1/tree") == tree
        await cores.advance(0.5)
        cores.store.put("t1/ws1/tree/d0-1/d1-2/new.txt", b"new", {})
        start = a.store.mark()
        assert await a.walk("t1/ws1/tree") == tree | {"d0-1/d1-2/new.txt"}
        assert a.store.since(start) == Counter({("list", "t1/ws1/tree/"): 1, ("get", "t1/ws1/tree/d0-1/d1-2/new.txt"): 1})


async def test_a_walk_of_a_folder_larger_than_one_flat_listing_finds_every_file(cores: Cores) -> None:
    """A walk lists a subtree in a few pages at most; a folder those pages did not cover is listed whole."""
    files = {f"a/f{i:03d}" for i in range(100)} | {f"b/g{i:02d}" for i in range(30)}
    for path in files:
        cores.store.put(f"t1/ws1/big/{path}", b"x", {})
    async with cores.mount() as a:
        a.store.page_size = 10
        assert await a.walk("t1/ws1/big") == files | {"a", "b"}


async def test_the_small_files_of_a_listed_folder_are_fetched_ahead_of_the_reader(cores: Cores) -> None:
    files = {f"f{i:02d}.txt": os.urandom(1000 + i) for i in range(40)}
    for name, data in files.items():
        cores.store.put(f"t1/ws1/docs/{name}", data, {})
    async with cores.mount() as a:
        assert await a.read("t1/ws1/docs/f00.txt") == files["f00.txt"]
        await cores.settle()
        start = a.store.mark()
        for name, data in files.items():
            assert await a.read(f"t1/ws1/docs/{name}") == data
        assert a.store.since(start) == Counter(), "files were not fetched ahead of the reader"
        assert a.store.count("get", "t1/ws1/docs/") == len(files), "a file was fetched twice"


async def test_a_listing_that_lags_a_write_does_not_make_the_file_vanish(cores: Cores) -> None:
    """A server whose listings lag its writes: a file this mount wrote moments before a
    listing that lacks it stays until a HEAD says it is gone; an older one goes at once."""
    async with cores.mount(metadata_ttl=1.0, write_back_delay=0.25) as a:
        await a.makedirs("t1/ws1")
        await a.write("t1/ws1/old.txt", b"old")
        await a.ns.sync()
        await cores.advance(LISTING_LAG)
        await a.write("t1/ws1/kept.txt", b"written a moment ago")
        await a.write("t1/ws1/gone.txt", b"deleted by another writer")
        await a.ns.sync()
        a.store.unlisted.add("t1/ws1/kept.txt")
        cores.store.delete("t1/ws1/gone.txt")
        cores.store.delete("t1/ws1/old.txt")
        await cores.advance(1.0)
        start = a.store.mark()
        assert await a.listdir("t1/ws1") == ["kept.txt"]
        assert a.store.since(start) == Counter({("list", "t1/ws1/"): 1, ("head", "t1/ws1/kept.txt"): 1,
                                                ("head", "t1/ws1/gone.txt"): 1})
        assert await a.read("t1/ws1/kept.txt") == b"written a moment ago"


async def test_a_listing_whose_pages_keep_coming_may_outlast_the_store_timeout(cores: Cores) -> None:
    """The store timeout counts from the last page: a folder of 100,000 keys on a slow server
    takes longer than it to list, and is still listed."""
    names = [f"f{i:02d}" for i in range(10)]
    for name in names:
        cores.store.put(f"t1/ws1/big/{name}", b"x", {})
    async with cores.mount(store_timeout=10) as a:
        await a.find("t1/ws1/big")
        assert await cores.list_slowly(a, "t1/ws1/big", 3, 6) == names
        assert a.store.count("list", "t1/ws1/big/") >= 4


async def test_a_folder_of_many_unknown_entries_is_listed_by_name_first_and_lookups_fetch_ahead(
        cores: Cores, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ls -f`` of a folder of thousands of objects other tools wrote waits for its LIST
    only, not a request per entry; a walker looking the entries up in order (``ls -l``)
    finds the next ones fetched ahead of it, several at a time."""
    monkeypatch.setattr(listings, "NAMES_FIRST_AFTER", 20)
    monkeypatch.setattr(ahead, "STAT_AHEAD", 8)
    names = [f"f{i:02d}" for i in range(30)]
    for name in names:
        cores.store.put(f"t1/ws1/big/{name}", b"x" * BIG, {})
    async with cores.mount() as a:
        folder = await a.find("t1/ws1/big")
        with a.store.holding("head"), a.store.holding("get"):
            assert await cores.at_once(lambda: a.listdir("t1/ws1/big")) == names
        assert not any(folder.children[name].meta_known for name in names)

        start = a.store.mark()
        await a.find("t1/ws1/big/f00")
        await cores.settle()
        assert a.store.since(start) == Counter(("head", f"t1/ws1/big/f{i:02d}") for i in range(9))
        start = a.store.mark()
        for name in names[1:5]:
            await cores.at_once(lambda: a.find(f"t1/ws1/big/{name}"))
        await cores.settle()
        assert a.store.since(start) == Counter(), "a lookup well inside the span fetched ahead sent for more"
        await a.find("t1/ws1/big/f05")
        await cores.settle()
        assert a.store.since(start) == Counter(("head", f"t1/ws1/big/f{i:02d}") for i in range(9, 14))


async def test_fetches_ahead_in_a_folder_listed_by_name_first_are_heads_and_its_files_are_not_read_ahead(
        cores: Cores, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ahead of ``ls -l``'s lookups in a folder of thousands of small objects, a HEAD per
    entry, its answer kept in the node: a GET of each file's bytes into the cache cost the
    daemon twice the time (``ls -l`` of 10,000 on Ceph RGW: 25 s, now 13 s), for files
    nobody reads one by one soon; nor does its listing read its small files ahead."""
    monkeypatch.setattr(listings, "NAMES_FIRST_AFTER", 20)
    monkeypatch.setattr(ahead, "STAT_AHEAD", 8)
    names = [f"f{i:02d}" for i in range(30)]
    for name in names:
        cores.store.put(f"t1/ws1/big/{name}", b"x", {"mode": str(0o100600)})
    async with cores.mount() as a:
        start = a.store.mark()
        assert await a.listdir("t1/ws1/big") == names
        await cores.settle()
        assert not [key for kind, key in a.store.since(start) if kind == "get" and key.startswith("t1/ws1/big/")]

        start = a.store.mark()
        await a.find("t1/ws1/big/f00")
        await cores.settle()
        assert a.store.since(start) == Counter([("get", "t1/ws1/big/f00")]
                                               + [("head", f"t1/ws1/big/f{i:02d}") for i in range(1, 9)])
        ahead_of_it = await a.find("t1/ws1/big/f05")
        assert ahead_of_it.mode & 0o777 == 0o600
        assert a.store.since(start)[("get", "t1/ws1/big/f05")] == 0


async def test_fetches_ahead_of_lookups_go_a_few_at_a_time(cores: Cores, monkeypatch: pytest.MonkeyPatch) -> None:
    """The HEADs ahead of ``ls -l`` go ``READ_AHEAD_PARALLEL`` at a time, not one thread per
    entry ahead: more threads cost the daemon more CPU than the server's latency needs."""
    monkeypatch.setattr(listings, "NAMES_FIRST_AFTER", 20)
    monkeypatch.setattr(ahead, "STAT_AHEAD", 30)
    names = [f"f{i:02d}" for i in range(40)]
    for name in names:
        cores.store.put(f"t1/ws1/big/{name}", b"x", {})
    async with cores.mount() as a:
        assert await a.listdir("t1/ws1/big") == names
        with a.store.holding("head"):
            await cores.at_once(lambda: a.find("t1/ws1/big/f00"))
            await cores.settle()
            assert a.store.held == listings.READ_AHEAD_PARALLEL
        await cores.settle()
        assert a.store.count("head", "t1/ws1/big/f") == 30


async def test_a_folder_of_few_unknown_entries_gives_every_attribute_with_its_names(cores: Cores) -> None:
    for i in range(5):
        cores.store.put(f"t1/ws1/few/f{i}", b"x" * BIG, {"mode": str(0o100600)})
    async with cores.mount() as a:
        folder = await a.find("t1/ws1/few")
        assert await a.listdir("t1/ws1/few") == [f"f{i}" for i in range(5)]
        assert all(child.meta_known and child.mode & 0o777 == 0o600 for child in folder.children.values())
