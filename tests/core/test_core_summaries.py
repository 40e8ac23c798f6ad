"""Attribute summaries: one object per folder holds the metadata of the files cowfs put there,
written by read-modify-write from several mounts and read back in one GET per folder."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio

from core import Cores
from cowfs import summaries
from cowfs.changes import folder_of
from cowfs.batches import RecordCheck
from cowfs.gateway import StoreCalls
from cowfs.store import ObjectStore
from cowfs.summaries import Summaries, Summary, summary_key, usable
from cowfs.threads import blocking
from cowfs.workspaces import create_workspace

WS = ("t1", "ws1")
META = {"mode": "33188", "uid": "1000", "gid": "1000", "mtime": "1700000000.250000000"}


def writer(store: ObjectStore, **options: Any) -> Summaries:
    calls = StoreCalls(trio.CapacityLimiter(4))
    return Summaries(store, calls, records=RecordCheck(store, calls), **options)


def io_of(store: ObjectStore) -> Any:
    limiter = trio.CapacityLimiter(4)
    return lambda fn, *args: blocking(fn, *args, limiter=limiter)


def put(store: ObjectStore, into: Summaries, key: str, data: bytes, meta: dict[str, str] = META) -> str:
    """Put a file as the mount would, and tell the summaries."""
    etag = store.put(key, data, meta)
    into.noted(key, etag, meta)
    return etag


def stored(store: ObjectStore, folder: str) -> Summary:
    return Summary.decode(store.get(summary_key(WS, folder))[0])


def listed(store: ObjectStore, folder_key: str) -> dict[str, str]:
    """Name -> ETag of the files a listing of ``folder_key`` shows."""
    return {info.key[len(folder_key):]: info.etag for info in store.list_all(folder_key).objects
            if info.key != folder_key}


# -- pure ------------------------------------------------------------------------


def test_a_summary_key_is_short_at_any_depth_and_not_a_change_of_content() -> None:
    deep = "d/" * 500
    keys = {summary_key(WS, folder) for folder in ("", "a/", "a/b/", deep)}
    assert len(keys) == 4
    assert all(key.startswith("t1/ws1/.cowfs/attrs/") and len(key) == len("t1/ws1/.cowfs/attrs/") + 32
               for key in keys)
    assert all(folder_of(key) is None for key in keys)


def test_a_merge_sets_and_drops_entries_and_survives_encoding() -> None:
    summary = Summary("a/", {"old.txt": ('"e0"', META), "gone.txt": ('"e1"', META)})
    merged = summary.merged({"old.txt": ('"e2"', {"mode": "33261"}), "gone.txt": None, "new.txt": ('"e3"', META),
                             "never.txt": None})
    assert merged == Summary("a/", {"old.txt": ('"e2"', {"mode": "33261"}), "new.txt": ('"e3"', META)})
    assert summary.entries.keys() == {"old.txt", "gone.txt"}
    assert Summary.decode(merged.encode()) == merged
    for bad in (b"[]", b'{"folder": "a/"}', b'{"folder": "a/", "entries": {"x": ["e", {"mode": 1}]}}',
                b'{"folder": 1, "entries": {}}', b'{"folder": "a/", "entries": {"x": "e"}}', b"\xff"):
        with pytest.raises(ValueError):
            Summary.decode(bad)


def test_a_summary_beyond_its_caps_is_full_and_stays_so() -> None:
    many = {f"f{i}": (f'"e{i}"', META) for i in range(summaries.MAX_ENTRIES + 1)}
    full = Summary("a/").merged(many)
    assert full.full and full.entries == {}
    assert full.merged({"f1": None}) == full and full.merged({"x": ('"e"', META)}) == full
    assert Summary.decode(full.encode()) == full
    assert not Summary("a/").merged(dict(list(many.items())[:summaries.MAX_ENTRIES])).full
    big = {"xattr": "x" * 1800, **META}
    assert Summary("a/").merged({f"f{i}": ('"e"', big) for i in range(200)}).full
    assert len(Summary("a/").merged({f"f{i}": ('"e"', big) for i in range(100)}).encode()) < summaries.MAX_BYTES


def test_only_entries_of_the_listed_version_are_usable() -> None:
    entries = {"same.txt": ('"abc"', META), "bare.txt": ("def", META), "moved.txt": ('"old"', META),
               "deleted.txt": ('"ghi"', META)}
    listing = {"same.txt": '"abc"', "bare.txt": '"def"', "moved.txt": '"new"', "unsummarized.txt": '"jkl"'}
    assert usable(listing, entries) == {"same.txt": META, "bare.txt": META}


# -- writer and reader on an S3-like store ------------------------------------------


async def test_a_cold_reader_gets_every_files_metadata_in_one_request(cores: Cores) -> None:
    store = cores.store
    create_workspace(store, "t1", "u1", "general", workspace_id="ws1")
    mount = writer(store)
    store.put("t1/ws1/src/", b"", {"mode": "16877"})
    mount.noted("t1/ws1/src/", '"d"', {"mode": "16877"})
    metas = {f"f{i}.txt": {**META, "mode": str(0o100600 + i)} for i in range(5)}
    for name, meta in metas.items():
        put(store, mount, f"t1/ws1/src/{name}", name.encode(), meta)
    put(store, mount, "t1/ws1/src/sub/deep.txt", b"deep")
    put(store, mount, "t1/ws1/.cowfs/other.json", b"{}")
    await mount.flush()
    assert mount.pending == 0 and mount.failures == 0
    assert store.stored("t1/ws1/.cowfs/attrs/").keys() == {summary_key(WS, "src/"), summary_key(WS, "src/sub/")}

    reader = writer(store)
    start = store.mark()
    entries = await reader.read("t1/ws1/src/", io_of(store))
    assert store.since(start) == Counter({("get", summary_key(WS, "src/")): 1})
    assert usable(listed(store, "t1/ws1/src/"), entries) == metas
    assert usable(listed(store, "t1/ws1/src/sub/"), await reader.read("t1/ws1/src/sub/", io_of(store))) == {
        "deep.txt": META}
    assert await reader.read("t1/ws1/elsewhere/", io_of(store)) == {}
    assert await reader.read("t1/", io_of(store)) == {}


async def test_removed_files_leave_their_summary_and_an_empty_one_goes(cores: Cores) -> None:
    store = cores.store
    create_workspace(store, "t1", "u1", "general", workspace_id="ws1")
    mount = writer(store)
    for name in ("a.txt", "b.txt"):
        put(store, mount, f"t1/ws1/{name}", b"x")
    await mount.flush()
    assert stored(store, "").entries.keys() == {"a.txt", "b.txt"}
    mount.removed("t1/ws1/a.txt")
    await mount.flush()
    assert stored(store, "").entries.keys() == {"b.txt"}
    mount.removed("t1/ws1/b.txt")
    await mount.flush()
    assert store.stored("t1/ws1/.cowfs/attrs/") == {}


async def test_run_writes_a_folders_summary_at_most_once_an_interval(cores: Cores) -> None:
    store = cores.store
    create_workspace(store, "t1", "u1", "general", workspace_id="ws1")
    mount = writer(store, interval=0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mount.run)
        put(store, mount, "t1/ws1/a/1.txt", b"1")
        await cores.settle()
        assert stored(store, "a/").entries.keys() == {"1.txt"}
        start = store.mark()
        for i in range(2, 6):
            put(store, mount, f"t1/ws1/a/{i}.txt", b"i")
            await cores.advance(0.1)
        assert store.since(start)[("put", summary_key(WS, "a/"))] == 0
        await cores.advance(0.2)
        assert store.since(start)[("put", summary_key(WS, "a/"))] == 1
        assert stored(store, "a/").entries.keys() == {f"{i}.txt" for i in range(1, 6)}
        nursery.cancel_scope.cancel()


async def test_a_writer_merges_into_the_summary_it_wrote_without_reading_it_unless_it_changed(
        cores: Cores) -> None:
    store = cores.store
    create_workspace(store, "t1", "u1", "general", workspace_id="ws1")
    a, b = writer(store), writer(store)
    key = summary_key(WS, "src/")
    put(store, a, "t1/ws1/src/1.txt", b"1")
    await a.flush()
    start = store.mark()
    put(store, a, "t1/ws1/src/2.txt", b"2")
    await a.flush()
    assert store.since(start)[("get", key)] == 0
    assert stored(store, "src/").entries.keys() == {"1.txt", "2.txt"}

    put(store, b, "t1/ws1/src/3.txt", b"3")
    await b.flush()
    put(store, a, "t1/ws1/src/4.txt", b"4")
    await a.flush()
    assert stored(store, "src/").entries.keys() == {"1.txt", "2.txt", "3.txt", "4.txt"}

    for name in ("1.txt", "2.txt", "3.txt"):
        b.removed(f"t1/ws1/src/{name}")
    await b.flush()
    assert stored(store, "src/").entries.keys() == {"4.txt"}, "a delete decided on what b remembered"
    a.removed("t1/ws1/src/4.txt")
    await a.flush()
    assert store.stored("t1/ws1/.cowfs/attrs/") == {}
    put(store, b, "t1/ws1/src/5.txt", b"5")
    await b.flush()
    assert stored(store, "src/").entries.keys() == {"5.txt"}
    assert a.failures == b.failures == 0


async def test_the_summary_of_a_folder_made_here_or_read_by_a_listing_is_written_without_a_read(
        cores: Cores) -> None:
    store = cores.store
    create_workspace(store, "t1", "u1", "general", workspace_id="ws1")
    a, b = writer(store), writer(store)

    def made(mount: Summaries, folder: str) -> None:
        etag = store.put(f"t1/ws1/{folder}", b"", {"mode": "16877"})
        mount.noted(f"t1/ws1/{folder}", etag, {"mode": "16877"})

    def gets(start: Any, folder: str) -> int:
        return store.since(start)[("get", summary_key(WS, folder))]

    made(a, "new/")
    start = store.mark()
    put(store, a, "t1/ws1/new/1.txt", b"1")
    await a.flush()
    assert gets(start, "new/") == 0 and stored(store, "new/").entries.keys() == {"1.txt"}

    assert await b.read("t1/ws1/other/", io_of(store)) == {}
    assert (await b.read("t1/ws1/new/", io_of(store))).keys() == {"1.txt"}
    start = store.mark()
    put(store, b, "t1/ws1/other/2.txt", b"2")
    put(store, b, "t1/ws1/new/3.txt", b"3")
    await b.flush()
    assert gets(start, "other/") == gets(start, "new/") == 0
    assert stored(store, "other/").entries.keys() == {"2.txt"}
    assert stored(store, "new/").entries.keys() == {"1.txt", "3.txt"}

    made(a, "brief/")
    start = store.mark()
    a.removed("t1/ws1/brief/gone.txt")
    await a.flush()
    assert gets(start, "brief/") == 0 and store.stored("t1/ws1/.cowfs/attrs/").keys() == {
        summary_key(WS, "new/"), summary_key(WS, "other/")}

    made(a, "late/")
    put(store, b, "t1/ws1/late/x.txt", b"x")
    await b.flush()
    put(store, a, "t1/ws1/late/y.txt", b"y")
    await a.flush()
    assert stored(store, "late/").entries.keys() == {"x.txt", "y.txt"}, "a summary made meanwhile is merged into"
    assert a.failures == b.failures == 0


async def test_no_summary_goes_into_a_workspace_without_its_record_or_being_removed(cores: Cores) -> None:
    store = cores.store
    mount = writer(store)
    put(store, mount, "t1/ws1/a.txt", b"no record")
    await mount.flush()
    create_workspace(store, "t2", "u1", "general", workspace_id="ws2")
    leaving = writer(store, forgotten=lambda workspace: workspace == ("t2", "ws2"))
    put(store, leaving, "t2/ws2/a.txt", b"being removed")
    await leaving.flush()
    assert store.stored("t1/ws1/.cowfs/") == {} and store.stored("t2/ws2/.cowfs/attrs/") == {}
    assert mount.failures == leaving.failures == 0


async def test_a_failed_write_is_counted_and_tried_again(cores: Cores) -> None:
    store = cores.store
    create_workspace(store, "t1", "u1", "general", workspace_id="ws1")
    mount = writer(store)
    store.refusing.add("put")
    mount.noted("t1/ws1/a.txt", '"e1"', META)
    await mount.flush()
    assert mount.failures == 1 and "refuses" in (mount.last_error or "") and mount.pending == 1
    mount.noted("t1/ws1/b.txt", '"e2"', META)
    store.refusing.clear()
    await mount.flush()
    assert stored(store, "").entries == {"a.txt": ('"e1"', META), "b.txt": ('"e2"', META)}
    assert mount.pending == 0 and mount.failures == 1


async def test_an_unreadable_summary_reads_as_none_and_is_written_anew(cores: Cores) -> None:
    store = cores.store
    create_workspace(store, "t1", "u1", "general", workspace_id="ws1")
    store.put(summary_key(WS, "a/"), b"not json", {})
    mount = writer(store)
    assert await mount.read("t1/ws1/a/", io_of(store)) == {}
    put(store, mount, "t1/ws1/a/x.txt", b"x")
    await mount.flush()
    assert stored(store, "a/").entries.keys() == {"x.txt"} and mount.failures == 0
    store.put(summary_key(WS, "a/"), Summary("b/", {"x.txt": ('"e"', META)}).encode(), {})
    assert await mount.read("t1/ws1/a/", io_of(store)) == {}


async def test_a_folder_beyond_the_cap_keeps_a_full_summary(cores: Cores, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(summaries, "MAX_ENTRIES", 3)
    store = cores.store
    create_workspace(store, "t1", "u1", "general", workspace_id="ws1")
    mount = writer(store)
    for i in range(4):
        put(store, mount, f"t1/ws1/big/{i}.txt", b"x")
    await mount.flush()
    assert stored(store, "big/").full
    assert await mount.read("t1/ws1/big/", io_of(store)) == {}
    start = store.mark()
    mount.removed("t1/ws1/big/0.txt")
    await mount.flush()
    assert stored(store, "big/").full and store.since(start)[("put", summary_key(WS, "big/"))] == 0


# -- two writers on each store ----------------------------------------------------


class Interleaving:
    """The store as one writer sees it: right after that writer's first read of a summary,
    ``other`` flushes, so the write that follows finds the summary changed."""

    def __init__(self, store: ObjectStore, other: Summaries) -> None:
        self._store = store
        self._other: Summaries | None = other

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def get(self, key: str, *args: Any) -> Any:
        try:
            return self._store.get(key, *args)
        finally:
            if self._other is not None and summaries.SUMMARIES_DIR in key:
                other, self._other = self._other, None
                trio.from_thread.run(other.flush)


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
async def test_two_writers_merge_into_one_summary(store: ObjectStore, existing: bool) -> None:
    create_workspace(store, "t1", "u1", "general", workspace_id="ws1")
    b = writer(store)
    if existing:
        put(store, b, "t1/ws1/src/old.txt", b"old")
        await b.flush()
        store.delete("t1/ws1/src/old.txt")
        b.removed("t1/ws1/src/old.txt")
    a = writer(Interleaving(store, b))
    put(store, a, "t1/ws1/src/a.txt", b"from a", {**META, "uid": "1"})
    put(store, b, "t1/ws1/src/b.txt", b"from b", {**META, "uid": "2"})
    await a.flush()
    assert a.failures == b.failures == 0 and a.pending == b.pending == 0
    entries = await writer(store).read("t1/ws1/src/", io_of(store))
    assert entries.keys() == {"a.txt", "b.txt"}
    assert usable(listed(store, "t1/ws1/src/"), entries) == {"a.txt": {**META, "uid": "1"},
                                                               "b.txt": {**META, "uid": "2"}}
