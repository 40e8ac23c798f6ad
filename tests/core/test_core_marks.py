"""Change marks in the core, in-process: mounts of one workspace revalidate what they hold
of it with one LIST of its marks per TTL, and still see each other's changes within it."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import trio

from core import Cores
from cowfs import changes
from cowfs.changes import Mark, folder_of, listed_folder, writer_id
from cowfs.summaries import summary_key
from cowfs.workspaces import create_workspace

MARKS = "t1/ws1/.cowfs/changes/"
FOLDERS = 8


def tree(cores: Cores) -> set[str]:
    """A workspace (its record) and a tree of ``FOLDERS`` folders of one file in it, put by another
    tool; the tree's paths under src."""
    create_workspace(cores.store, "t1", "u1", "general", workspace_id="ws1")
    for i in range(FOLDERS):
        cores.store.put(f"t1/ws1/src/d{i}/", b"", {})
        cores.store.put(f"t1/ws1/src/d{i}/f.txt", f"file {i}".encode(), {})
    return {f"d{i}" for i in range(FOLDERS)} | {f"d{i}/f.txt" for i in range(FOLDERS)}


async def test_walking_a_workspace_again_costs_one_listing_of_its_marks_per_ttl(cores: Cores) -> None:
    paths = tree(cores)
    async with cores.mount(foreign_ttl=30) as b:
        assert await b.walk("t1/ws1/src") == paths
        for _ in range(3):
            await cores.advance(2.0)
            start = b.store.mark()
            assert await b.walk("t1/ws1/src") == paths
            assert b.store.since(start) == Counter({("list", MARKS): 1})


async def test_another_mounts_changes_show_within_a_ttl_of_its_mark(cores: Cores) -> None:
    tree(cores)
    async with cores.mount(foreign_ttl=30) as a, cores.mount(foreign_ttl=30) as b:
        await a.walk("t1/ws1/src")
        await b.walk("t1/ws1/src")
        await a.write("t1/ws1/src/d3/new.txt", b"new from a")
        await a.write("t1/ws1/src/d5/f.txt", b"file 5, rewritten by a")
        await a.unlink("t1/ws1/src/d6/f.txt")
        await a.sync()
        await cores.advance(1.0)
        start = b.store.mark()
        assert await b.read("t1/ws1/src/d3/new.txt") == b"new from a"
        assert await b.read("t1/ws1/src/d5/f.txt") == b"file 5, rewritten by a"
        assert not await b.exists("t1/ws1/src/d6/f.txt")
        asked = b.store.since(start)
        assert asked[("list", MARKS)] == 1 and asked[("get", MARKS + "core1")] == 1
        assert {key for kind, key in asked if kind == "list"} == {
            MARKS, "t1/ws1/src/d3/", "t1/ws1/src/d5/", "t1/ws1/src/d6/"}
        assert b.store.stored(MARKS).keys() == {MARKS + "core1"}


async def test_no_mark_brings_back_a_workspace_without_its_record(cores: Cores) -> None:
    """Deletes replayed after a crash during a workspace's removal, or a folder other tools made."""
    tree(cores)
    cores.store.delete("t1/ws1/.cowfs/workspace.json")
    async with cores.mount(foreign_ttl=30) as a:
        await a.unlink("t1/ws1/src/d0/f.txt")
        await a.sync()
        assert cores.store.stored(MARKS) == {}


async def test_the_marks_and_summaries_of_a_workspace_ask_for_its_record_once(cores: Cores) -> None:
    tree(cores)
    async with cores.mount(foreign_ttl=30) as a:
        for i in range(3):
            await a.write(f"t1/ws1/src/d{i}/new.txt", b"mine")
            await a.sync()
            await cores.advance(2.0)
        assert a.store.count("head", "t1/ws1/.cowfs/workspace.json") == 1
        assert a.store.stored(MARKS).keys() == {MARKS + "core1"}
        assert len(a.store.stored("t1/ws1/.cowfs/attrs/")) == 3


async def test_a_mount_ignores_its_own_marks(cores: Cores) -> None:
    tree(cores)
    async with cores.mount(foreign_ttl=30) as a:
        await a.walk("t1/ws1/src")
        await a.write("t1/ws1/src/d3/new.txt", b"mine")
        await a.sync()
        await cores.advance(2.0)
        start = a.store.mark()
        assert "d3/new.txt" in await a.walk("t1/ws1/src")
        assert a.store.since(start) == Counter({("list", MARKS): 1})


async def test_objects_other_tools_write_show_once_a_listing_is_foreign_ttl_old(cores: Cores) -> None:
    tree(cores)
    async with cores.mount(foreign_ttl=10) as b:
        await b.walk("t1/ws1/src")
        cores.store.put("t1/ws1/src/d1/foreign.txt", b"from boto3", {})
        await cores.advance(10.0)
        assert "foreign.txt" in await b.listdir("t1/ws1/src/d1")
        assert await b.read("t1/ws1/src/d1/foreign.txt") == b"from boto3"


async def test_a_reader_that_missed_folders_a_mark_dropped_lists_everything_again(
        cores: Cores, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(changes, "MAX_FOLDERS", 2)
    paths = tree(cores)
    async with cores.mount(foreign_ttl=30) as a, cores.mount(foreign_ttl=30) as b:
        await a.walk("t1/ws1/src")
        await b.walk("t1/ws1/src")
        await cores.advance(2.0)
        assert await b.walk("t1/ws1/src") == paths  # b has read a's mark (none yet) and holds its baseline
        for i in range(4):
            await a.write(f"t1/ws1/src/d{i}/more.txt", b"more")
            await a.sync()
        assert len(Mark.decode(cores.store.stored(MARKS)[MARKS + "core1"]).folders) == 2
        await cores.advance(2.0)
        assert await b.walk("t1/ws1/src") == paths | {f"d{i}/more.txt" for i in range(4)}


async def test_a_writer_that_lost_its_mark_makes_readers_list_everything_again(cores: Cores) -> None:
    paths = tree(cores)
    async with cores.mount(foreign_ttl=30) as a, cores.mount(foreign_ttl=30) as b:
        await a.walk("t1/ws1/src")
        await a.write("t1/ws1/src/d0/one.txt", b"1")
        await a.sync()
        await b.walk("t1/ws1/src")
        await cores.advance(2.0)
        await b.walk("t1/ws1/src")
        cores.store.put(MARKS + "core1", Mark(1, 0, {"src/d0/": 1}).encode(), {})
        cores.store.put("t1/ws1/src/d7/two.txt", b"2", {})
        await cores.advance(2.0)
        assert await b.walk("t1/ws1/src") == paths | {"d0/one.txt", "d7/two.txt"}


def test_the_folder_a_key_changes() -> None:
    assert folder_of("t/ws/a/b/c.txt") == (("t", "ws"), "a/b/")
    assert folder_of("t/ws/a/b/") == (("t", "ws"), "a/")
    assert folder_of("t/ws/top.txt") == (("t", "ws"), "")
    assert folder_of("t/ws/.cowfs/workspace.json") is None
    assert folder_of("t/ws/") is None and folder_of("t/ws") is None
    assert listed_folder("t/ws/") == (("t", "ws"), "")
    assert listed_folder("t/ws/a/b/") == (("t", "ws"), "a/b/")
    assert listed_folder("t/") is None and listed_folder("") is None


def test_a_mark_keeps_the_folders_changed_last_and_the_highest_it_dropped() -> None:
    mark = Mark()
    for i in range(changes.MAX_FOLDERS + 5):
        mark = mark.advanced({f"f{i}/"})
    assert mark.seq == changes.MAX_FOLDERS + 5 and mark.floor == 5
    assert len(mark.folders) == changes.MAX_FOLDERS and min(mark.folders.values()) == 6
    assert Mark.decode(mark.encode()) == mark
    with pytest.raises(ValueError):
        Mark.decode(b'{"seq": "1", "floor": 0, "folders": {}}')


def test_a_cache_folder_keeps_its_writer_name(tmp_path) -> None:
    name = writer_id(tmp_path)
    assert name == writer_id(tmp_path) and "/" not in name


async def test_removing_a_workspace_leaves_no_mark_behind(cores: Cores) -> None:
    async with cores.mount(foreign_ttl=30) as a:
        await a.makedirs("t1/ws1/src")
        await a.write("t1/ws1/src/f.txt", b"x")
        await a.sync()
        assert MARKS + "core1" in cores.store.stored("t1/ws1/")
        await a.unlink("t1/ws1/src/f.txt")
        await a.rmdir("t1/ws1/src")
        await a.rmdir("t1/ws1")
        await a.sync()
        await cores.advance(1.0)
        assert cores.store.stored("t1/ws1/") == {}


async def test_a_tree_this_mount_just_wrote_is_walked_without_listing_it_again(cores: Cores) -> None:
    """An untar, then ``find``: the folders this mount made stay vouched for while their uploads go up."""
    async with cores.mount(foreign_ttl=30) as a:
        made: set[str] = set()
        for i in range(30):
            await a.makedirs(f"t1/ws1/walk/src/d{i}/sub")
            made |= {f"d{i}", f"d{i}/sub"}
            for j in range(5):
                await a.write(f"t1/ws1/walk/src/d{i}/sub/f{j}.txt", b"x")
                made.add(f"d{i}/sub/f{j}.txt")
            await cores.advance(0.1)
        await cores.advance(0.5)
        start = a.store.mark()
        assert await a.walk("t1/ws1/walk/src") == made
        assert Counter(kind for kind, _ in a.store.since(start).elements() if kind != "put") == Counter({"list": 1})


async def test_a_walk_after_a_remount_takes_attributes_from_the_folders_summaries(cores: Cores) -> None:
    """One GET of a folder's summary instead of a HEAD per file; a file another tool rewrote
    (its ETag no longer the summary's) still gets its HEAD."""
    create_workspace(cores.store, "t1", "u1", "general", workspace_id="ws1")
    big = os.urandom(300 * 1024)
    async with cores.mount(foreign_ttl=30) as a:
        for i in range(3):
            for j in range(4):
                await a.makedirs(f"t1/ws1/src/d{i}")
                await a.write(f"t1/ws1/src/d{i}/f{j}.bin", big)
        await a.sync()
        modes = {path: (await a.find(f"t1/ws1/src/{path}")).mode for path in await a.walk("t1/ws1/src")}
    cores.store.put("t1/ws1/src/d0/f0.bin", os.urandom(300 * 1024), {})
    async with cores.mount(foreign_ttl=30) as b:
        start = b.store.mark()
        seen = {path: (await b.find(f"t1/ws1/src/{path}")).mode for path in await b.walk("t1/ws1/src")}
        heads = {key for kind, key in b.store.since(start) if kind == "head" and not key.endswith("/")}
        assert heads == {"t1/ws1/src/d0/f0.bin"}
        assert {p: m for p, m in seen.items() if p != "d0/f0.bin"} == {p: m for p, m in modes.items() if p != "d0/f0.bin"}


async def written_docs(cores: Cores, count: int) -> None:
    """A workspace whose folder docs holds ``count`` small files a mount wrote (and summarized)."""
    create_workspace(cores.store, "t1", "u1", "general", workspace_id="ws1")
    async with cores.mount(foreign_ttl=30) as a:
        await a.makedirs("t1/ws1/docs")
        for i in range(count):
            await a.write(f"t1/ws1/docs/f{i}.txt", b"doc %d" % i)
        await a.sync()


async def test_small_files_whose_attributes_came_from_a_summary_are_still_fetched_ahead(cores: Cores) -> None:
    await written_docs(cores, 6)
    async with cores.mount(foreign_ttl=30) as b:
        assert await b.listdir("t1/ws1/docs") == [f"f{i}.txt" for i in range(6)]
        await cores.settle()
        start = b.store.mark()
        assert [await b.read(f"t1/ws1/docs/f{i}.txt") for i in range(6)] == [b"doc %d" % i for i in range(6)]
        assert not [key for kind, key in b.store.since(start) if kind in ("get", "head")]


async def test_a_folders_first_listing_reads_its_summary_beside_it(cores: Cores) -> None:
    """A cold walk waits for one round trip per folder, not a LIST and then a GET."""
    await written_docs(cores, 3)
    async with cores.mount(foreign_ttl=30) as b:
        await b.find("t1/ws1/docs")
        start = b.store.mark()
        async with trio.open_nursery() as nursery:
            with b.store.holding("list"):
                nursery.start_soon(b.listdir, "t1/ws1/docs")
                await cores.settle()
                assert b.store.held == 1
                assert b.store.since(start) == Counter({("list", "t1/ws1/docs/"): 1,
                                                        ("get", summary_key(("t1", "ws1"), "docs/")): 1})
        start = b.store.mark()
        assert {(await b.find(f"t1/ws1/docs/f{i}.txt")).size for i in range(3)} == {5}
        assert not [key for kind, key in b.store.since(start) if kind == "head"]


async def test_a_listing_longer_than_the_foreign_ttl_is_not_made_again_at_once(cores: Cores) -> None:
    """Other tools' objects show within the foreign TTL of the end of the listing that missed
    them: a folder that takes longer than that to list is not listed over and over."""
    create_workspace(cores.store, "t1", "u1", "general", workspace_id="ws1")
    names = [f"f{i:02d}" for i in range(10)]
    for name in names:
        cores.store.put(f"t1/ws1/big/{name}", b"x", {})
    async with cores.mount(foreign_ttl=30, store_timeout=60) as b:
        await b.find("t1/ws1/big")
        assert await cores.list_slowly(b, "t1/ws1/big", 3, 10) == names
        await cores.advance(0.5)
        start = b.store.mark()
        assert await b.listdir("t1/ws1/big") == names
        assert ("list", "t1/ws1/big/") not in b.store.since(start)
        await cores.advance(40)
        assert await b.listdir("t1/ws1/big") == names
        assert ("list", "t1/ws1/big/") not in b.store.since(start), \
            "a folder listed in 40 s was listed again 40 s later: most of the store's time on one folder"
        await cores.advance(4 * 40)
        assert await b.listdir("t1/ws1/big") == names
        assert ("list", "t1/ws1/big/") in b.store.since(start)
