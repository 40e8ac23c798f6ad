"""How long the kernel keeps entries, in-process: longer than a TTL where the change marks vouch
for a folder, and taken back from the kernel as soon as a mark names the folder."""

from __future__ import annotations

from core import Cores
from cowfs.namespace import leases
from cowfs.workspaces import create_workspace

MARKS = "t1/ws1/.cowfs/changes/"


def tree(cores: Cores) -> None:
    create_workspace(cores.store, "t1", "u1", "general", workspace_id="ws1")
    for i in range(4):
        cores.store.put(f"t1/ws1/src/d{i}/f.txt", f"file {i}".encode(), {})


async def test_entries_of_a_folder_the_marks_vouch_for_are_kept_longer_while_the_marks_are_read(
        cores: Cores) -> None:
    tree(cores)
    async with cores.mount(foreign_ttl=60) as b:
        await b.walk("t1/ws1/src")
        node = await b.find("t1/ws1/src/d1/f.txt")
        assert b.ns.kernel_timeout(node) == leases.LONGEST
        start = b.store.mark()
        for _ in range(20):
            await cores.advance(0.5)
        checks = b.store.since(start)[("list", MARKS)]
        assert checks in (9, 10), f"the marks are read once per TTL while the kernel holds entries ({checks})"
        await cores.advance(leases.LONGEST)
        start = b.store.mark()
        for _ in range(20):
            await cores.advance(0.5)
        assert b.store.since(start)[("list", MARKS)] == 0, "nor after the kernel's time ran out"


async def test_another_mounts_change_takes_its_folders_entries_back_from_the_kernel(cores: Cores) -> None:
    tree(cores)
    async with cores.mount(foreign_ttl=60) as a, cores.mount(foreign_ttl=60) as b:
        await a.walk("t1/ws1/src")
        await b.walk("t1/ws1/src")
        kept = {i: await b.find(f"t1/ws1/src/d{i}/f.txt") for i in range(4)}
        for node in kept.values():
            b.ns.remember(node)
            assert b.ns.kernel_timeout(node) > 1.0
        await a.write("t1/ws1/src/d1/f.txt", b"file 1, rewritten")
        await a.unlink("t1/ws1/src/d2/f.txt")
        await a.sync()
        assert b.taken_back == []
        await cores.advance(1.0)
        folders = {i: kept[i].parent.ino for i in range(4)}
        assert sorted(b.taken_back) == sorted([(folders[1], b"f.txt"), (folders[2], b"f.txt")])
        assert await b.read("t1/ws1/src/d1/f.txt") == b"file 1, rewritten"
        assert not await b.exists("t1/ws1/src/d2/f.txt")


async def test_the_kernel_keeps_no_entry_past_the_time_another_tools_object_must_show(cores: Cores) -> None:
    tree(cores)
    async with cores.mount(foreign_ttl=20) as b:
        await b.walk("t1/ws1/src")
        node = await b.find("t1/ws1/src/d0/f.txt")
        assert b.ns.kernel_timeout(node) == 20.0
        await cores.advance(15.0)
        assert b.ns.kernel_timeout(node) == 5.0
        await cores.advance(4.5)
        assert b.ns.kernel_timeout(node) == 1.0, "no shorter than a TTL"


async def test_without_marks_entries_are_kept_a_ttl_and_a_listings_guess_not_at_all(cores: Cores) -> None:
    tree(cores)
    async with cores.mount() as plain:
        node = await plain.find("t1/ws1/src/d0/f.txt")
        assert plain.ns.kernel_timeout(node) == 1.0
        node.meta_known = False
        assert plain.ns.kernel_timeout(node) == 0.0


async def test_a_conflict_takes_the_name_back_from_the_kernel(cores: Cores) -> None:
    """The path shows the other writer's version at once, not the conflict copy the kernel holds."""
    tree(cores)
    async with cores.mount(foreign_ttl=60, write_back_delay=30) as a, \
            cores.mount(foreign_ttl=60, write_back_delay=30) as b:
        await b.walk("t1/ws1/src")
        node = await b.find("t1/ws1/src/d0/f.txt")
        assert b.ns.kernel_timeout(node) > 1.0
        await a.write("t1/ws1/src/d0/f.txt", b"a wins")
        await a.ns.sync()
        await b.write("t1/ws1/src/d0/f.txt", b"b loses the race")
        await b.ns.sync()
        await cores.settle()
        assert (node.parent.ino, b"f.txt") in b.taken_back
        assert await b.read("t1/ws1/src/d0/f.txt") == b"a wins"


async def test_a_folder_a_mark_names_is_listed_before_a_lookup_there_is_answered(cores: Cores) -> None:
    """Even in continuous use, where a lookup is otherwise answered from the folder's listing
    while a new one is made behind it: the mark says that listing is out of date."""
    tree(cores)
    async with cores.mount(foreign_ttl=60) as a, cores.mount(foreign_ttl=60) as b:
        await a.walk("t1/ws1/src")
        await b.walk("t1/ws1/src")
        node = await b.find("t1/ws1/src/d3/f.txt")
        b.ns.remember(node)
        assert b.ns.kernel_timeout(node) > 1.0
        await a.unlink("t1/ws1/src/d3/f.txt")
        await a.sync()
        for _ in range(3):
            assert not await b.exists("t1/ws1/src/d3/missing.txt")  # keeps d3 in continuous use
            await cores.advance(0.4)
        assert (node.parent.ino, b"f.txt") in b.taken_back, "the watcher read the mark"
        assert not await b.exists("t1/ws1/src/d3/f.txt")
