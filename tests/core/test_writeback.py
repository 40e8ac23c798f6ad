"""Write-back engine rules that need no FUSE: what listings may still show."""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import trio

from cowfs.journal import Journal
from cowfs.store.local import LocalStore
from cowfs.journal import BODY_INLINE, PutRecord
from cowfs.writeback import Upload, WriteBack
from cowfs.gateway import StoreCalls


class GatedStore(LocalStore):
    """A real local store whose batched deletes wait until the test opens the gate."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def delete_many(self, keys: list[str]) -> None:
        self.entered.set()
        self.gate.wait(10)
        super().delete_many(keys)


def test_a_deleted_folder_stays_hidden_from_listings_that_started_before_its_deletes_finished(tmp_path):
    store = GatedStore(tmp_path / "store")
    for key in ("t/ws/src/", "t/ws/src/a", "t/ws/src/sub/b"):
        store.put(key, b"x", {})
    journal = Journal(tmp_path / "journal")

    async def main() -> None:
        wb = WriteBack(store, journal, StoreCalls(trio.CapacityLimiter(4)), delay=0.0)
        before = wb.clock()
        for key in ("t/ws/src/", "t/ws/src/a", "t/ws/src/sub/b"):
            journal.write_delete(key)
            wb.schedule_delete(key)
        assert wb.may_still_list("t/ws/src/", before)
        assert wb.may_still_list("t/ws/src/sub/", before)
        assert wb.deleting("t/ws/src/a")
        assert not wb.may_still_list("t/ws/other/", before)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wb.run)
            await trio.to_thread.run_sync(store.entered.wait, 10)
            in_flight = wb.clock()
            assert wb.may_still_list("t/ws/src/", in_flight), "a delete in flight must hide the folder"
            assert wb.deleting("t/ws/src/sub/b")
            store.gate.set()
            await wb.drain()
            nursery.cancel_scope.cancel()
        assert wb.may_still_list("t/ws/src/", in_flight), "a listing that started before the delete may show it"
        assert not wb.may_still_list("t/ws/src/", wb.clock())
        assert not wb.deleting("t/ws/src/a")
        assert store.list_all("t/ws/", None).objects == []

    trio.run(main)
    journal.close()


def test_a_cancelled_delete_hides_nothing(tmp_path):
    journal = Journal(tmp_path / "journal")

    async def main() -> None:
        wb = WriteBack(LocalStore(tmp_path / "store"), journal, StoreCalls(trio.CapacityLimiter(4)), delay=60)
        start = wb.clock()
        wb.schedule_delete("t/ws/f")
        assert wb.may_still_list("t/ws/f", start)
        assert wb.cancel_delete("t/ws/f")
        assert not wb.may_still_list("t/ws/f", start)
        assert not wb.may_still_list("t/ws/", start)

    trio.run(main)
    journal.close()


class CountingStore(LocalStore):
    """A real local store that notes the size of each batched delete and when each put started."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.batches: list[int] = []
        self.put_times: list[float] = []

    def delete_many(self, keys: list[str]) -> None:
        self.batches.append(len(keys))
        super().delete_many(keys)

    def put(self, key: str, body, metadata, if_match=None, if_none_match=False) -> str:
        self.put_times.append(time.monotonic())
        return super().put(key, body, metadata, if_match, if_none_match)


def test_deletes_during_a_long_burst_go_in_few_batches(tmp_path, monkeypatch):
    import cowfs.writeback as writeback

    monkeypatch.setattr(writeback, "MAX_DEFER", 0.4)
    monkeypatch.setattr(writeback, "DELETE_INTERVAL", 0.25)
    store = CountingStore(tmp_path / "store")
    keys = [f"t/ws/tree/f{i:04d}" for i in range(600)]
    for key in keys:
        store.put(key, b"x", {})
    journal = Journal(tmp_path / "journal")

    async def main() -> None:
        wb = WriteBack(store, journal, StoreCalls(trio.CapacityLimiter(4)), delay=0.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wb.run)
            start = wb.clock()
            for key in keys:
                wb.active()
                journal.write_delete(key)
                wb.schedule_delete(key)
                await trio.sleep(0.003)
            busy = wb.clock() - start
            await wb.drain()
            nursery.cancel_scope.cancel()
        assert sum(store.batches) == len(keys)
        # the burst's first deletes go before it counts as one
        allowed = busy / 0.25 + 3 + writeback.BUSY_CHANGES
        assert len(store.batches) <= allowed, f"{len(store.batches)} delete requests in a {busy:.1f} s burst"
        assert store.list_all("t/ws/", None).objects == []

    trio.run(main)
    journal.close()


class IdleSource:
    """A source that is never due within the test (a long write-back delay)."""

    def __init__(self, rid: str) -> None:
        self.rid = rid

    def snapshot(self) -> None:
        return None

    async def uploaded(self, upload: object, etag: str) -> bool:
        return True

    def conflicted(self, upload: object, kept_as: str, etag: str) -> None:
        pass


def test_a_wake_up_of_the_scheduler_does_not_rescan_every_pending_upload(tmp_path, monkeypatch):
    """A burst of closes, then readers waiting on the store (each wakes the scheduler when served)."""
    journal = Journal(tmp_path / "journal")
    pending, wakes = 2000, 200
    looked_at = 0
    original = WriteBack._start_at

    def counting(self: WriteBack, due: float, urgent: bool) -> float:
        nonlocal looked_at
        looked_at += 1
        return original(self, due, urgent)

    monkeypatch.setattr(WriteBack, "_start_at", counting)

    async def main() -> None:
        wb = WriteBack(LocalStore(tmp_path / "store"), journal, StoreCalls(trio.CapacityLimiter(4)), delay=60)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wb.run)
            for i in range(pending):
                wb.active()
                wb.schedule(IdleSource(f"r{i}"))
                await trio.sleep(0)
            for _ in range(wakes):
                await wb.calls.call(int, background=False)
            assert wb.stats().pending_uploads == pending
            nursery.cancel_scope.cancel()
        assert looked_at < 10 * (pending + wakes), f"{looked_at} due-time checks for {pending} uploads"

    trio.run(main)
    journal.close()


class SmallFile:
    """A closed 100-byte file waiting to go up."""

    def __init__(self, rid: str) -> None:
        self.rid = rid

    def snapshot(self) -> Upload:
        return Upload(PutRecord(self.rid, f"t/ws/{self.rid}", BODY_INLINE, None, {}, b"x" * 100, 100), 1)

    async def uploaded(self, upload: Upload, etag: str) -> bool:
        return True

    def conflicted(self, upload: Upload, kept_as: str, etag: str) -> None:
        pass


def test_uploads_trickle_while_the_mount_stays_busy_and_all_go_once_it_pauses(tmp_path, monkeypatch):
    import cowfs.writeback as writeback

    monkeypatch.setattr(writeback, "MAX_DEFER", 0.3)
    monkeypatch.setattr(writeback, "BUSY_UPLOAD_RATE", 10.0)
    store = CountingStore(tmp_path / "store")
    journal = Journal(tmp_path / "journal")
    files = 150

    async def main() -> None:
        wb = WriteBack(store, journal, StoreCalls(trio.CapacityLimiter(8)), delay=0.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wb.run)
            start = time.monotonic()
            for i in range(files):
                wb.active()
                wb.schedule(SmallFile(f"f{i:03d}"))
                await trio.sleep(0.01)
            burst_end = time.monotonic()
            with trio.fail_after(5):
                while wb.stats().pending_uploads:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        during = [t for t in store.put_times if t < burst_end]
        allowed = (burst_end - start - 0.3) * 10 + 2 + writeback.BUSY_CHANGES  # the burst's first changes make it one
        assert 0 < len(during) <= allowed, f"{len(during)} uploads during a {burst_end - start:.1f} s burst"
        assert len(store.put_times) == files
        assert max(store.put_times) - burst_end < 2, "the rest went as soon as the mount paused"

    trio.run(main)
    journal.close()


class SlowStore(CountingStore):
    """Each put takes 20 ms, like a small PUT to a busy server."""

    def put(self, key: str, body, metadata, if_match=None, if_none_match=False) -> str:
        etag = super().put(key, body, metadata, if_match, if_none_match)
        time.sleep(0.02)
        return etag


def test_uploads_started_in_a_pause_do_not_run_on_at_full_speed_once_the_mount_is_busy(tmp_path, monkeypatch):
    """Only as many uploads start as there are slots: the rest of a backlog waits in the
    queue, where a busy mount holds it back, instead of in tasks queued for a slot."""
    import cowfs.writeback as writeback

    monkeypatch.setattr(writeback, "MAX_DEFER", 0.3)
    monkeypatch.setattr(writeback, "BUSY_UPLOAD_RATE", 10.0)
    store = SlowStore(tmp_path / "store")
    journal = Journal(tmp_path / "journal")
    files, slots = 100, 4

    async def main() -> tuple[float, float]:
        wb = WriteBack(store, journal, StoreCalls(trio.CapacityLimiter(8)), delay=0.0, concurrency=slots)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wb.run)
            for i in range(files):
                wb.schedule(SmallFile(f"f{i:03d}"))
            await trio.sleep(0.05)
            busy_start = time.monotonic()
            for _ in range(writeback.BUSY_CHANGES):  # a burst starts with many changes at once
                wb.active()
            while time.monotonic() - busy_start < 1.0:
                wb.active()
                await trio.sleep(0.01)
            busy_end = time.monotonic()
            with trio.fail_after(10):
                await wb.drain()
            nursery.cancel_scope.cancel()
        return busy_start, busy_end

    busy_start, busy_end = trio.run(main)
    journal.close()
    during = [t for t in store.put_times if busy_start <= t < busy_end]
    assert len(during) <= slots + (busy_end - busy_start) * 10 + 2, f"{len(during)} uploads started in a busy second"
    assert len(store.put_times) == files


class StaleWrite:
    """A closed file whose upload is based on a version another writer replaced."""

    def __init__(self, rid: str, body: bytes) -> None:
        self.rid = rid
        self.body = body
        self.kept: list[tuple[str, str]] = []

    def snapshot(self) -> Upload:
        return Upload(PutRecord(self.rid, "t/ws/f", BODY_INLINE, None, {}, self.body, len(self.body)), 1,
                      if_match='"stale"')

    async def uploaded(self, upload: Upload, etag: str) -> bool:
        raise AssertionError("a write based on a replaced version must not land at its key")

    def conflicted(self, upload: Upload, kept_as: str, etag: str) -> None:
        self.kept.append((kept_as, etag))


def test_two_conflicts_of_one_key_in_one_second_keep_three_versions(tmp_path, monkeypatch):
    """Conflict copies are written with If-None-Match under a name with a random end:
    even when the clock and the random end repeat, no copy replaces another."""
    import cowfs.writeback as writeback

    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 4, 12, 0, 0, tzinfo=tz)

    suffixes = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(writeback, "datetime", FrozenClock)
    monkeypatch.setattr(writeback.secrets, "token_hex", lambda n: next(suffixes))
    store = LocalStore(tmp_path / "store")
    theirs = store.put("t/ws/f", b"theirs", {})
    journal = Journal(tmp_path / "journal")
    sources = [StaleWrite("r1", b"mine one"), StaleWrite("r2", b"mine two")]

    async def main() -> None:
        wb = WriteBack(store, journal, StoreCalls(trio.CapacityLimiter(4)), delay=0.0, concurrency=1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wb.run)
            for source in sources:
                wb.schedule(source, now=True)
            await wb.drain()
            nursery.cancel_scope.cancel()

    trio.run(main)
    journal.close()
    stored = {o.key: store.get(o.key)[0] for o in store.list_all("t/ws/", None).objects}
    kept = [name for source in sources for name, _ in source.kept]
    assert sorted(kept) == [f"t/ws/f.conflict-{socket.gethostname()}-20261204T120000-{s}" for s in ("aaaaaa", "bbbbbb")]
    assert stored == {"t/ws/f": b"theirs", kept[0]: sources[0].body, kept[1]: sources[1].body}
    assert store.head("t/ws/f").etag == theirs
    assert [etag for source in sources for _, etag in source.kept] == [store.head(k).etag for k in kept]
