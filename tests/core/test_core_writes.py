"""Writes in the core, in-process: when and what the write-back sends, copy on write,
renames, unlinks, failed writes and fsync, folder times.

A store that lists like S3 and counts its requests, and a mock clock: the
write-back delay, the pause it waits for and the store timeout pass only when
a test advances the clock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
from collections import Counter
from typing import Iterator

import pytest
import trio

from core import Core, Cores
from cowfs.errors import StoreError, errno_of
from cowfs.journal import Journal
from cowfs.recovery import replay

KiB = 1024


def stored_mtime(ns: int) -> str:
    """A time as the ``mtime`` metadata of an object holds it."""
    return "{}.{:09d}".format(*divmod(ns, 10**9))


def files(cores: Cores) -> dict[str, bytes]:
    """What the store holds in ``t1/ws1`` but the workspace's own records."""
    return {key: data for key, data in cores.store.stored("t1/ws1/").items() if not key.startswith("t1/ws1/.cowfs/")}


async def workspace(core: Core) -> None:
    """``t1/ws1``, made and in the store, so that what a test counts is its own."""
    await core.makedirs("t1/ws1")
    await core.ns.sync()


async def test_a_closed_file_goes_up_once_its_write_back_delay_has_passed(cores: Cores) -> None:
    async with cores.mount(write_back_delay=3) as a:
        await workspace(a)
        fh = await a.open("t1/ws1/late.txt", os.O_CREAT | os.O_WRONLY)
        await a.ns.write(fh, 0, b"pending")
        await a.ns.flush(fh)
        await a.ns.release(fh)
        assert await a.read("t1/ws1/late.txt") == b"pending"
        await cores.advance(2.75)
        assert a.store.count("put", "t1/ws1/late.txt") == 0
        await cores.advance(0.25)
        assert a.store.count("put", "t1/ws1/late.txt") == 1
        assert cores.store.stored("t1/ws1/late.txt") == {"t1/ws1/late.txt": b"pending"}


async def test_closes_within_the_write_back_delay_go_up_as_one_upload_of_the_last_version(cores: Cores) -> None:
    async with cores.mount(write_back_delay=1) as a:
        await workspace(a)
        for i in range(8):
            await a.write("t1/ws1/notes.txt", b"version %d" % i)
            await cores.advance(1 / 8)
        await cores.advance(1)
        assert a.store.count("put", "t1/ws1/notes.txt") == 1
        assert cores.store.stored("t1/ws1/notes.txt") == {"t1/ws1/notes.txt": b"version 7"}


async def test_a_transcript_appended_line_by_line_goes_up_at_most_once_per_write_back_delay(cores: Cores) -> None:
    """The delay counts from the first close after the last upload, not from the latest close."""
    path = "t1/ws1/sessions/s1/history.jsonl"
    async with cores.mount(write_back_delay=0.5) as a:
        await a.makedirs("t1/ws1/sessions/s1")
        await a.ns.sync()
        lines = [b'{"turn": %d}\n' % i for i in range(160)]
        for line in lines:
            await a.write(path, line, append=True)
            await cores.advance(1 / 32)
        assert 1 <= a.store.count("put", path) <= 5 / 0.5
        await a.ns.sync()
        assert cores.store.stored(path) == {path: b"".join(lines)}


async def test_uploads_wait_for_a_pause_in_a_burst_but_fsync_does_not(cores: Cores) -> None:
    async with cores.mount(write_back_delay=0.25) as a:
        await workspace(a)
        for i in range(32):  # half a second of closes, each due 0.25 s later, held back 0.5 s at most
            await a.write(f"t1/ws1/f{i}", b"burst %d" % i)
            await cores.advance(1 / 64)
        assert a.store.count("put", "t1/ws1/f") == 0, "files closed while the burst went on went up"
        fh = await a.open("t1/ws1/synced", os.O_CREAT | os.O_WRONLY)
        await a.ns.write(fh, 0, b"now")
        await cores.at_once(lambda: a.ns.fsync(fh))
        assert cores.store.stored("t1/ws1/synced") == {"t1/ws1/synced": b"now"}
        await a.close(fh)
        await cores.advance(0.25)
        assert {f"t1/ws1/f{i}" for i in range(32)} <= cores.store.stored("t1/ws1/").keys()


@pytest.mark.parametrize("offset", [0, 48 * KiB], ids=["overwrite", "append"])
async def test_a_write_after_a_close_does_not_change_what_its_pending_upload_sends(cores: Cores, offset: int) -> None:
    """Copy on write: the closed version's bytes are never changed in place while its
    upload waits; bytes past its size need no copy, as the pending record names the size."""
    first, later = os.urandom(48 * KiB), b"X" * KiB
    async with cores.mount(write_back_delay=1) as a:
        await workspace(a)
        await a.write("t1/ws1/data.bin", first)
        fh = await a.open("t1/ws1/data.bin", os.O_WRONLY)
        await a.ns.write(fh, offset, later)
        await cores.advance(1.5)
        assert cores.store.stored("t1/ws1/data.bin") == {"t1/ws1/data.bin": first}
        await a.close(fh)
        await cores.advance(1.5)
        assert files(cores) == {"t1/ws1/data.bin": first[:offset] + later + first[offset + len(later):]}
        assert a.store.count("put", "t1/ws1/data.bin") == 2


#: What ``rename_unsynced`` must leave in the store.
RENAMED_UNSYNCED = {"t1/ws1/final": b"fresh", "t1/ws1/moved/": b"", "t1/ws1/moved/x": b"x"}


async def rename_unsynced(core: Core) -> None:
    """A file and a folder with a file in it, each renamed before any upload."""
    await workspace(core)
    await core.write("t1/ws1/tmp", b"fresh")
    await core.rename("t1/ws1/tmp", "t1/ws1/final")
    await core.makedirs("t1/ws1/newdir")
    await core.write("t1/ws1/newdir/x", b"x")
    await core.rename("t1/ws1/newdir", "t1/ws1/moved")


async def test_renamed_unsynced_files_and_folders_go_up_under_their_new_names_only(cores: Cores) -> None:
    async with cores.mount(write_back_delay=30) as a:
        await rename_unsynced(a)
        await a.ns.sync()
        assert files(cores) == RENAMED_UNSYNCED
        assert a.store.count("put", "t1/ws1/tmp") == a.store.count("put", "t1/ws1/newdir") == 0
        assert a.store.count("copy") == 0, "bytes the store never had were copied in it"


async def test_renames_of_unsynced_files_and_folders_survive_a_crash_under_their_new_names(cores: Cores) -> None:
    """The journal follows a rename: what a crash leaves is replayed at the new keys."""
    async with cores.mount(write_back_delay=30) as a:
        await rename_unsynced(a)
        journal = a.journal.root
    replay(cores.store, Journal(journal))
    assert files(cores) == RENAMED_UNSYNCED


async def test_a_file_renamed_while_its_upload_is_under_way_ends_up_under_the_new_name_only(cores: Cores) -> None:
    async with cores.mount(write_back_delay=1) as a:
        await workspace(a)
        await a.write("t1/ws1/tmp", b"fresh")
        start = a.store.mark()
        with a.store.holding("put"):
            await cores.advance(1.5)
            assert a.store.held == 1
            await a.rename("t1/ws1/tmp", "t1/ws1/final")
        await cores.advance(1.5)  # the upload lands at the old key, which is then deleted
        assert a.store.since(start) == Counter({("put", "t1/ws1/tmp"): 1, ("put", "t1/ws1/final"): 1,
                                                ("delete", "t1/ws1/tmp"): 1, ("list", "t1/ws1/"): 1})
        assert files(cores) == {"t1/ws1/final": b"fresh"}


async def test_a_stored_file_renamed_is_copied_in_the_store_not_sent_again(cores: Cores) -> None:
    async with cores.mount() as a:
        await workspace(a)
        await a.write("t1/ws1/a.txt", b"A" * 100 * KiB)
        await a.ns.sync()
        start = a.store.mark()
        await a.rename("t1/ws1/a.txt", "t1/ws1/b.txt")
        assert not await a.exists("t1/ws1/a.txt")
        await a.ns.sync()
        assert a.store.since(start) == Counter({("copy", "t1/ws1/b.txt"): 1, ("delete", "t1/ws1/a.txt"): 1})
        assert await a.read("t1/ws1/b.txt") == b"A" * 100 * KiB
        assert cores.store.stored("t1/ws1/b.txt") == {"t1/ws1/b.txt": b"A" * 100 * KiB}
        assert "t1/ws1/a.txt" not in cores.store.stored("t1/ws1/")


async def test_a_renamed_folder_of_stored_files_is_one_copy_and_one_delete_per_key(cores: Cores) -> None:
    contents = {f"{'sub/' if i % 5 == 0 else ''}f{i}": b"file %d" % i for i in range(20)}
    async with cores.mount() as a:
        await a.makedirs("t1/ws1/src/sub")
        for path, data in contents.items():
            await a.write(f"t1/ws1/src/{path}", data)
        await a.ns.sync()
        start = a.store.mark()
        await a.rename("t1/ws1/src", "t1/ws1/dst")
        assert not await a.exists("t1/ws1/src")
        assert len(await a.listdir("t1/ws1/dst")) == 17
        await a.ns.sync()
        keys = [*contents, "", "sub/"]
        assert a.store.since(start) == (
            Counter({("list", "t1/ws1/src/"): 1, ("put", "t1/ws1/dst/"): 1})  # the folder's new ctime
            + Counter(("copy", f"t1/ws1/dst/{key}") for key in keys)
            + Counter(("delete", f"t1/ws1/src/{key}") for key in keys)
        )
        assert files(cores) == {f"t1/ws1/dst/{key}": data for key, data in [*contents.items(), ("", b""), ("sub/", b"")]}


async def test_an_unlinked_open_file_stays_readable_and_never_reaches_the_store(cores: Cores) -> None:
    async with cores.mount() as a:
        await workspace(a)
        fh = await a.open("t1/ws1/scratch", os.O_CREAT | os.O_RDWR)
        await a.ns.write(fh, 0, b"scratch data")
        await a.unlink("t1/ws1/scratch")
        assert not await a.exists("t1/ws1/scratch")
        assert a.ns.handle(fh).node.nlink == 0
        await a.ns.write(fh, 12, b", more")
        assert await a.read_handle(fh) == b"scratch data, more"
        await a.close(fh)
        await a.ns.sync()
        assert a.store.count("put", "t1/ws1/scratch") == 0
        assert "t1/ws1/scratch" not in cores.store.stored("t1/ws1/")


async def test_a_stored_file_unlinked_while_open_is_deleted_and_still_read_through_its_handle(cores: Cores) -> None:
    data = os.urandom(100 * KiB)
    cores.store.put("t1/ws1/old.bin", data, {})
    async with cores.mount(write_back_delay=1) as a:
        fh = await a.open("t1/ws1/old.bin")
        await a.unlink("t1/ws1/old.bin")
        await cores.advance(1.5)
        assert a.store.count("delete", "t1/ws1/old.bin") == 1
        assert "t1/ws1/old.bin" not in cores.store.stored("t1/ws1/")
        assert await a.read_handle(fh) == data
        await a.ns.release(fh)


@contextlib.contextmanager
def disk_full_past(size: int) -> Iterator[None]:
    """Writes past ``size`` bytes of a file fail, as on a full disk (EFBIG, not ENOSPC:
    the file size limit of the process, the one way to fill a disk without root)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


async def test_a_failed_write_leaves_the_last_complete_version(cores: Cores) -> None:
    """A write that fails (a full disk) is never stored torn: closing the file takes it
    back to its last closed version, whether the store has that one or not yet."""
    async with cores.mount(write_back_delay=30) as a:
        await workspace(a)
        await a.write("t1/ws1/stored.txt", b"stored version")
        await cores.advance(30)
        await a.write("t1/ws1/pending.txt", b"closed version, not uploaded yet")
        start = a.store.mark()
        for path, flags in (("t1/ws1/stored.txt", os.O_TRUNC), ("t1/ws1/pending.txt", 0)):
            fh = await a.open(path, os.O_WRONLY | flags)
            with disk_full_past(32 * KiB):
                assert await a.ns.write(fh, 0, b"y" * 48 * KiB) == 32 * KiB
                with pytest.raises(OSError) as failed:
                    await a.ns.write(fh, 32 * KiB, b"y" * 16 * KiB)
            assert failed.value.errno == errno.EFBIG
            await a.close(fh)
        assert await a.read("t1/ws1/stored.txt") == b"stored version"
        assert await a.read("t1/ws1/pending.txt") == b"closed version, not uploaded yet"
        await a.ns.sync()
        assert a.store.since(start) == Counter({("put", "t1/ws1/pending.txt"): 1})
        assert cores.store.stored("t1/ws1/stored.txt") == {"t1/ws1/stored.txt": b"stored version"}
        assert cores.store.stored("t1/ws1/pending.txt") == {"t1/ws1/pending.txt": b"closed version, not uploaded yet"}


async def test_fsync_fails_with_eio_when_the_store_refuses_and_the_file_goes_up_later(cores: Cores) -> None:
    async with cores.mount() as a:
        await workspace(a)
        a.store.refusing.add("put")
        fh = await a.open("t1/ws1/notes.txt", os.O_CREAT | os.O_WRONLY)
        await a.ns.write(fh, 0, b"kept in the journal")
        with pytest.raises(StoreError) as failed:
            await a.ns.fsync(fh)
        assert errno_of(failed.value) == errno.EIO
        await a.close(fh)
        a.store.refusing.clear()
        await a.ns.sync()
        assert cores.store.stored("t1/ws1/notes.txt") == {"t1/ws1/notes.txt": b"kept in the journal"}


async def test_fsync_fails_with_eio_when_no_upload_finishes_within_the_store_timeout(cores: Cores) -> None:
    """The store timeout and a second per MiB of the file: then EIO, and the upload goes on."""
    failures: list[BaseException] = []
    async with cores.mount(store_timeout=10) as a:
        await workspace(a)
        fh = await a.open("t1/ws1/notes.txt", os.O_CREAT | os.O_WRONLY)
        await a.ns.write(fh, 0, b"x" * 1024 * KiB)

        async def fsync() -> None:
            try:
                await a.ns.fsync(fh)
            except StoreError as exc:
                failures.append(exc)

        with a.store.holding("put"):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fsync)
                await cores.advance(10.75)
                assert failures == [] and a.store.held == 1
                await cores.advance(0.5)
                assert [errno_of(exc) for exc in failures] == [errno.EIO]
        await a.close(fh)
        await a.ns.sync()
        assert cores.store.stored("t1/ws1/notes.txt") == {"t1/ws1/notes.txt": b"x" * 1024 * KiB}


async def test_folder_times_add_no_upload_per_change_and_reach_the_marker_at_sync(cores: Cores) -> None:
    async with cores.mount() as a:
        await a.makedirs("t1/ws1/d")
        await a.ns.sync()
        marked = cores.store.head("t1/ws1/d/").metadata["mtime"]
        start = a.store.mark()
        for i in range(5):
            await a.write(f"t1/ws1/d/f{i}", b"x")
        await cores.advance(1.5)
        assert a.store.since(start) == Counter(("put", f"t1/ws1/d/f{i}") for i in range(5))
        assert cores.store.head("t1/ws1/d/").metadata["mtime"] == marked
        shown = (await a.find("t1/ws1/d")).mtime_ns
        assert shown > (await a.find("t1/ws1/d/f0")).mtime_ns
        await a.ns.sync()
        assert a.store.count("put", "t1/ws1/d/") - 5 == 2  # the marker when made, and now
        assert cores.store.head("t1/ws1/d/").metadata["mtime"] == stored_mtime(shown)


async def test_a_file_that_replaces_a_stored_object_takes_it_along_when_removed(cores: Cores) -> None:
    """sqlite's journal and git's refs: a new file over a stored key, gone again before its upload."""
    async with cores.mount(write_back_delay=30) as a:
        await workspace(a)
        for name in ("journal", "ref", "target"):
            await a.write(f"t1/ws1/{name}", b"stored")
        await a.ns.sync()
        await a.unlink("t1/ws1/journal")
        await a.write("t1/ws1/journal", b"new, never uploaded")  # takes over the pending delete
        await a.unlink("t1/ws1/journal")
        await a.write("t1/ws1/tmp", b"new")
        await a.rename("t1/ws1/tmp", "t1/ws1/target")  # over a stored object
        await a.rename("t1/ws1/target", "t1/ws1/moved")  # and away again before any upload
        await a.unlink("t1/ws1/moved")
        await a.ns.sync()
        assert files(cores) == {"t1/ws1/ref": b"stored"}
        await a.write("t1/ws1/journal", b"again")  # a plain create: no conflict copy appears
        await a.ns.sync()
        assert files(cores) == {"t1/ws1/journal": b"again", "t1/ws1/ref": b"stored"}


async def test_another_writer_wins_and_ours_is_kept_beside_it(cores: Cores) -> None:
    async with cores.mount(write_back_delay=30) as a, cores.mount(write_back_delay=30) as b:
        await workspace(a)
        await a.write("t1/ws1/shared.txt", b"from a")
        await a.ns.sync()
        assert await b.read("t1/ws1/shared.txt") == b"from a"
        await a.write("t1/ws1/shared.txt", b"a wins")
        await b.write("t1/ws1/shared.txt", b"b loses the race")
        await a.ns.sync()
        await b.ns.sync()
        stored = cores.store.stored("t1/ws1/shared.txt")
        assert stored.pop("t1/ws1/shared.txt") == b"a wins"
        [(copy, kept)] = stored.items()
        assert copy.startswith("t1/ws1/shared.txt.conflict-") and kept == b"b loses the race"
        assert await b.read("t1/ws1/shared.txt") == b"a wins"
        assert await b.read(copy) == b"b loses the race"
        assert sorted(await b.listdir("t1/ws1")) == sorted(["shared.txt", copy.rsplit("/", 1)[1]])


async def test_after_a_conflict_an_open_file_becomes_the_conflict_copy_and_the_path_shows_the_winner(
    cores: Cores,
) -> None:
    async with cores.mount() as a, cores.mount() as b:
        await workspace(a)
        await a.write("t1/ws1/doc.txt", b"base")
        await a.ns.sync()
        assert await b.read("t1/ws1/doc.txt") == b"base"
        mine = await b.open("t1/ws1/doc.txt", os.O_RDWR)
        await a.write("t1/ws1/doc.txt", b"the other writer's")
        await a.ns.sync()
        await b.ns.write(mine, 0, b"mine")
        await b.ns.fsync(mine)
        stored = cores.store.stored("t1/ws1/doc.txt")
        assert stored.pop("t1/ws1/doc.txt") == b"the other writer's"
        [(copy, kept)] = stored.items()
        assert kept == b"mine"
        assert await b.read("t1/ws1/doc.txt") == b"the other writer's"
        assert await b.read(copy) == b"mine"
        await b.ns.write(mine, 4, b" and more")
        await b.close(mine)
        await b.ns.sync()
        assert cores.store.stored("t1/ws1/doc.txt") == {"t1/ws1/doc.txt": b"the other writer's",
                                                        copy: b"mine and more"}
        assert sorted(await b.listdir("t1/ws1")) == sorted(["doc.txt", copy.rsplit("/", 1)[1]])


async def test_the_kernel_keeps_its_page_cache_of_a_file_only_while_its_content_is_unchanged(cores: Cores) -> None:
    cores.store.put("t1/ws1/f.txt", b"one", {})
    async with cores.mount() as a:
        node = await a.find("t1/ws1/f.txt")
        for keep in (False, True):
            opened = await a.ns.open(node.ino, os.O_RDONLY)
            assert opened.keep_cache is keep
            await a.ns.release(opened.fh)
        cores.store.put("t1/ws1/f.txt", b"two, longer", {})
        await cores.advance(1)
        assert (await a.ns.getattr(node.ino)).size == len(b"two, longer")
        opened = await a.ns.open(node.ino, os.O_RDONLY)
        assert opened.keep_cache is False
        assert await a.read_handle(opened.fh) == b"two, longer"
        await a.ns.release(opened.fh)


async def test_a_writer_of_a_few_files_a_second_is_not_held_back(cores: Cores) -> None:
    """Only a burst counts as busy: a file closed every 1/16 s goes up its write-back delay after its close."""
    async with cores.mount(write_back_delay=0.25) as a:
        await workspace(a)
        for i in range(24):
            await a.write(f"t1/ws1/f{i}", b"line %d" % i)
            await cores.advance(1 / 16)
            if i >= 4:
                assert f"t1/ws1/f{i - 4}" in cores.store.stored("t1/ws1/"), f"f{i - 4} waited past its delay"


async def test_an_upload_under_way_when_its_folder_is_renamed_lands_under_the_new_name(cores: Cores) -> None:
    """The move waits for the upload under way before it lists the folder: an object
    landing between the move's listing and its end would stay at the old key, and the
    new one never be written."""
    async with cores.mount(write_back_delay=1) as a:
        await a.makedirs("t1/ws1/src")
        await a.write("t1/ws1/src/old", b"stored")
        await a.ns.sync()
        await a.write("t1/ws1/src/new", b"fresh")
        async with trio.open_nursery() as nursery:
            with a.store.holding("copy"):
                with a.store.holding("put"):
                    await cores.advance(1.5)
                    assert a.store.held == 1
                    nursery.start_soon(a.rename, "t1/ws1/src", "t1/ws1/dst")
                    await cores.settle()
                    assert a.store.count("list", "t1/ws1/src/") == 0
                await cores.settle()
                assert a.store.count("list", "t1/ws1/src/") == 1
        await a.ns.sync()
        assert files(cores) == {"t1/ws1/dst/": b"", "t1/ws1/dst/old": b"stored", "t1/ws1/dst/new": b"fresh"}


async def test_a_walk_of_the_tree_holds_uploads_back_as_a_burst_of_changes_does(cores: Cores) -> None:
    """``find`` or ``grep -r`` right after an untar: the uploads trickle until the walk pauses."""
    async with cores.mount() as a:
        await workspace(a)
        for i in range(40):
            await a.write(f"t1/ws1/f{i:02d}", b"x")
        await cores.advance(0.9)
        start = a.store.mark()
        for step in range(5):
            assert len(await a.listdir("t1/ws1")) == 40
            for i in range(12):
                await a.ns.release(await a.open(f"t1/ws1/f{(step * 12 + i) % 40:02d}"))
            await cores.advance(0.1)
        walking = sum(n for (kind, _), n in a.store.since(start).items() if kind == "put")
        assert walking <= 12, f"{walking} uploads went up during the walk"
        await cores.advance(1.0)
        assert len(cores.store.stored("t1/ws1/f")) == 40
