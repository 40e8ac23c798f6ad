"""The session index: pages that cost one page, keyset tokens under activity, reindex, exact counts."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from cowfs import sessionindex
from cowfs.activity import Activity
from cowfs.errors import StoreError
from cowfs.sessionindex import SessionSummary, read_page, read_record, refresh_session, reindex
from cowfs.sessions import list_page
from cowfs.store.local import LocalStore
from cowfs.store.s3 import S3Store
from cowfs.workspaces import create_workspace, record_key
from cowfs.gateway import StoreCalls
from mounting import cowfs

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class CountingStore(LocalStore):
    """A local store that counts the requests a remote one would get."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lists = self.listed = self.gets = 0

    def list_pages(self, prefix, delimiter="/", start_after=None):
        for page in super().list_pages(prefix, delimiter, start_after):
            self.lists += 1
            self.listed += len(page.objects)
            yield page

    def get(self, key, start=None, end=None):
        self.gets += 1
        return super().get(key, start, end)

    def reset(self) -> None:
        self.lists = self.listed = self.gets = 0


def index(store, sessions: list[SessionSummary], tenant: str = "acme", workspace: str = "ws") -> None:
    """Write records and entries as a writer would, with chosen times."""
    for s in sessions:
        old, etag = read_record(store, tenant, workspace, s.sessionId)
        sessionindex._commit(store, tenant, workspace, s.sessionId, old, etag, s)


def spread(n: int, step: int = 60) -> list[SessionSummary]:
    """``n`` sessions a ``step`` apart on average, with ties within a second."""
    return [SessionSummary(f"s{i:05d}", T0, T0 + timedelta(seconds=(i // 3) * 3 * step + i % 2), 1, i)
            for i in range(n)]


def ordered(sessions: list[SessionSummary]) -> list[str]:
    return [s.sessionId for s in sorted(sessions, key=lambda s: (-s.lastActiveAt.timestamp(), s.sessionId))]


def walk(store, limit: int, tenant: str = "acme", workspace: str = "ws") -> list[list[str]]:
    pages, after = [], None
    while True:
        page = read_page(store, tenant, workspace, limit, after)
        pages.append([s.sessionId for s in page.sessions])
        if not page.more:
            return pages
        last = page.sessions[-1]
        after = (last.lastActiveAt, last.sessionId)


def test_pages_follow_activity_order_through_gaps_and_ties(tmp_path):
    store = LocalStore(tmp_path / "store")
    sessions = spread(300, step=7) + [SessionSummary(f"t{i}", T0, T0 + timedelta(days=400 * i), 2, 2)
                                      for i in range(5)]
    index(store, sessions)
    for limit in (1, 7, 100):
        pages = walk(store, limit)
        assert [p for p in pages if len(p) != limit] in ([], [pages[-1]])
        assert sum(pages, []) == ordered(sessions)


def test_every_page_costs_one_list_whatever_the_number_of_sessions(tmp_path):
    """A later page lists from its anchor on, not the entries before it: one LIST
    and a record read per session shown, and one to know there is more."""
    for n in (200, 3000):
        store = CountingStore(tmp_path / f"store{n}")
        sessions = spread(n)
        index(store, sessions)
        by_id = {s.sessionId: s for s in sessions}
        anchors = [None] + [(by_id[sid].lastActiveAt, sid) for sid in ordered(sessions)[19:n - 20:n // 7]]
        for after in anchors:
            store.reset()
            assert len(read_page(store, "acme", "ws", 20, after).sessions) == 20
            assert (store.lists, store.gets) == (1, 21), (n, after)
        last = by_id[ordered(sessions)[-11]]
        store.reset()
        tail = read_page(store, "acme", "ws", 20, (last.lastActiveAt, last.sessionId))
        assert (len(tail.sessions), tail.more, store.lists, store.gets) == (10, False, 1, 10)


def test_tokens_survive_activity_no_repeat_no_inactive_skipped(tmp_path):
    store = LocalStore(tmp_path / "store")
    sessions = spread(45, step=30)
    index(store, sessions)
    shown: list[str] = []
    page = read_page(store, "acme", "ws", 20)
    shown += [s.sessionId for s in page.sessions]
    later = T0 + timedelta(days=1)
    touched = {shown[-1], shown[3], ordered(sessions)[25], ordered(sessions)[44]}  # the anchor among them
    index(store, [SessionSummary(sid, T0, later, 5, 5) for sid in touched]
          + [SessionSummary(f"new{i}", later, later, 1, 1) for i in range(30)])
    while page.more:
        last = page.sessions[-1]
        page = read_page(store, "acme", "ws", 20, (last.lastActiveAt, last.sessionId))
        shown += [s.sessionId for s in page.sessions]
    assert len(shown) == len(set(shown))
    assert {s.sessionId for s in sessions} - touched <= set(shown)
    assert not any(s.startswith("new") for s in shown)


def test_reindex_counts_foreign_writes_and_drops_stale_entries(store):
    create_workspace(store, "acme", "u", "general", workspace_id="ws")
    for sid, files in (("a", 3), ("b", 1), ("c", 2)):
        for i in range(files):
            store.put(f"acme/ws/sessions/{sid}/f{i}", b"x" * (i + 1), {})
    store.put("acme/ws/sessions/a/sub/", b"", {})
    store.put("acme/ws/sessions/bad name/f", b"x", {})
    store.put("acme/ws/notes.md", b"x", {})
    assert reindex(store, "acme", "ws").sessions == 3
    summary = {s.sessionId: (s.files, s.bytes) for s in list_page(store, "acme", "ws", 10, None)[0]}
    assert summary == {"a": (3, 6), "b": (1, 1), "c": (2, 3)}
    store.put("acme/ws/sessions/d/f", b"12345", {})
    store.delete("acme/ws/sessions/b/f0")
    store.put("acme/ws/.cowfs/sessions/active/0000000001!zz!1!0!1!1", b"", {})  # no record names it
    assert {s.sessionId for s in list_page(store, "acme", "ws", 10, None)[0]} == {"a", "b", "c"}
    done = reindex(store, "acme", "ws")
    assert done.dropped_entries >= 1
    summary = {s.sessionId: (s.files, s.bytes) for s in list_page(store, "acme", "ws", 10, None)[0]}
    assert summary == {"a": (3, 6), "c": (2, 3), "d": (1, 5)}
    entries = [o.key for o in store.list_all("acme/ws/.cowfs/sessions/active/", None).objects]
    assert len(entries) == 3
    assert reindex(store, "acme", "ws").written == 0


def test_writers_racing_on_one_session_end_with_exact_counts(store):
    """Writer a lists, writer b uploads and writes its record, then a writes: a must not win."""
    create_workspace(store, "acme", "u", "general", workspace_id="ws")
    reindex(store, "acme", "ws")  # complete: pages trust the records from now on
    b_done = threading.Event()
    put = store.put

    def record_put_of_a_waits_for_b(key, body, metadata, **conditions):
        if "/records/" in key and threading.current_thread().name == "a" and not b_done.is_set():
            b_done.wait(10)
        return put(key, body, metadata, **conditions)

    store.put = record_put_of_a_waits_for_b

    def writer(name: str, session: str) -> None:
        put(f"acme/ws/sessions/{session}/{name}", b"x" * 3, {})
        refresh_session(store, "acme", "ws", session)

    a = threading.Thread(target=writer, args=("a", "shared"), name="a")
    a.start()
    time.sleep(0.3)  # a has listed and waits to write
    writer("b", "shared")
    b_done.set()
    a.join()
    assert [(s.sessionId, s.files, s.bytes) for s in list_page(store, "acme", "ws", 100, None)[0]] == [
        ("shared", 2, 6)]


def test_a_removed_session_leaves_the_index_and_comes_back_with_its_creation(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put("acme/ws/sessions/s1/f", b"abc", {})
    first, _ = refresh_session(store, "acme", "ws", "s1", first_write=T0)
    assert first.summary.createdAt == T0 and first.summary.files == 1
    store.delete("acme/ws/sessions/s1/f")
    gone, wrote = refresh_session(store, "acme", "ws", "s1")
    assert wrote and gone.removed and read_page(store, "acme", "ws", 10).sessions == []
    store.put("acme/ws/sessions/s1/g", b"ab", {})
    back, _ = refresh_session(store, "acme", "ws", "s1")
    assert (back.summary.createdAt, back.summary.files, back.summary.bytes) == (T0, 1, 2)
    assert [s.sessionId for s in read_page(store, "acme", "ws", 10).sessions] == ["s1"]


class RefusingStore(LocalStore):
    """Refuses writes under ``.cowfs/`` until ``refusals`` runs out, as a store in trouble would."""

    refusals = 0

    def put(self, key, body, metadata, if_match=None, if_none_match=False):
        if "/.cowfs/" in key and self.refusals > 0:
            self.refusals -= 1
            raise StoreError("503 Slow Down")
        return super().put(key, body, metadata, if_match=if_match, if_none_match=if_none_match)


def test_activity_writes_that_fail_are_counted_and_tried_again(tmp_path, caplog):
    store = RefusingStore(tmp_path / "store")
    create_workspace(store, "acme", "ws", "general", workspace_id="ws", now=T0)
    store.put("acme/ws/sessions/s1/f", b"abc", {})
    store.refusals = 2

    async def scenario() -> Activity:
        activity = Activity(store, StoreCalls(trio.CapacityLimiter(4)), clock=lambda: T0 + timedelta(hours=1))
        activity.mark("acme/ws/sessions/s1/f")
        await activity.flush()
        assert activity.failures == 2 and "503 Slow Down" in activity.last_error and activity.pending == 2
        await activity.flush()
        assert activity.pending == 0
        return activity

    activity = trio.run(scenario)
    assert activity.failures == 2
    assert json.loads(store.get(record_key("acme", "ws"))[0])["lastActiveAt"] == "2026-01-01T01:00:00Z"
    assert read_record(store, "acme", "ws", "s1")[0].summary.files == 1
    assert "could not update" in caplog.text and "503 Slow Down" in caplog.text


# -- the command line on moto --------------------------------------------------------


def cli(bucket, *args: str, check: bool = True):
    return cowfs(*args, "--store", f"s3://{bucket.name}", "--endpoint-url", bucket.endpoint, "--path-style",
                 check=check)


def test_cli_pages_45_sessions_by_20_while_others_are_written(s3_bucket):
    store = S3Store(s3_bucket.name, endpoint_url=s3_bucket.endpoint, region="us-east-1", path_style=True)
    create_workspace(store, "acme", "u", "general", workspace_id="ws")
    for i in range(45):
        store.put(f"acme/ws/sessions/s{i:02d}/history.jsonl", b"x" * i, {})
    cli(s3_bucket, "sessions", "reindex", "acme/ws")
    stop = threading.Event()
    touched: set[str] = set()

    def agent() -> None:
        n = 0
        while not stop.is_set():
            sid = f"new{n:03d}" if n % 2 else f"s{(n * 7) % 45:02d}"
            touched.add(sid)
            store.put(f"acme/ws/sessions/{sid}/turn{n}", b"y", {})
            refresh_session(store, "acme", "ws", sid)
            n += 1

    thread = threading.Thread(target=agent)
    thread.start()
    try:
        shown, token = [], None
        while True:
            extra = ("--next-token", token) if token else ()
            doc = json.loads(cli(s3_bucket, "sessions", "list", "acme/ws", "--limit", "20", "--json", *extra).stdout)
            shown += [s["sessionId"] for s in doc["sessions"]]
            token = doc.get("nextToken")
            if token is None:
                break
    finally:
        stop.set()
        thread.join()
    assert len(touched) > 4
    assert len(shown) == len(set(shown))
    assert {f"s{i:02d}" for i in range(45)} - touched <= set(shown)


def test_cli_builds_a_missing_or_older_index_once_and_reindexes_foreign_writes(s3_bucket):
    put = lambda key, body=b"x": s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=body)  # noqa: E731
    cli(s3_bucket, "workspace", "create", "--tenant", "acme", "--user", "u", "--scope", "local",
        "--local-path", "/p")
    ws = cli(s3_bucket, "workspace", "resolve", "--tenant", "acme", "--user", "u", "--local-path", "/p").stdout.strip()
    put(f"acme/{ws}/sessions/a/h", b"abc")

    def listed() -> dict[str, tuple[int, int]]:
        doc = json.loads(cli(s3_bucket, "sessions", "list", f"acme/{ws}", "--json").stdout)
        return {s["sessionId"]: (s["files"], s["bytes"]) for s in doc["sessions"]}

    assert listed() == {"a": (1, 3)}  # no index yet: built from a full listing
    put(f"acme/{ws}/sessions/b/h")
    assert listed() == {"a": (1, 3)}  # built once: other tools' writes wait for a reindex
    out = cli(s3_bucket, "sessions", "reindex", f"acme/{ws}").stdout
    assert out.startswith(f"indexed 2 sessions of acme/{ws}")
    assert listed() == {"a": (1, 3), "b": (1, 1)}
    put(f"acme/{ws}/sessions/c/h")
    put(f"acme/{ws}/.cowfs/sessions/index.json", json.dumps({"format": 0}).encode())
    assert listed() == {"a": (1, 3), "b": (1, 1), "c": (1, 1)}  # an older format is rebuilt
    assert cli(s3_bucket, "sessions", "reindex", "acme/none", check=False).returncode == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 999)), min_size=1, max_size=80),
       st.integers(0, 79), st.integers(1, 300))
def test_a_page_holds_every_session_after_any_anchor_once_in_order(times, at, page_size):
    """Bursts within a second, ids that prefix others (s1, s10), gaps of days, listings of any page size."""
    sessions = [SessionSummary(f"s{i}", T0, T0 + timedelta(seconds=t * 10**scale), 1, 1)
                for i, (scale, t) in enumerate(times)]
    with tempfile.TemporaryDirectory() as root:
        store = LocalStore(Path(root))
        index(store, sessions)
        store.page_size = page_size
        order = ordered(sessions)
        anchor = next(s for s in sessions if s.sessionId == order[at % len(order)])
        page = read_page(store, "acme", "ws", 100, (anchor.lastActiveAt, anchor.sessionId))
    assert [s.sessionId for s in page.sessions] == order[order.index(anchor.sessionId) + 1:]


def test_a_workspace_being_deleted_is_neither_touched_nor_indexed_until_written_again(tmp_path):
    store = LocalStore(tmp_path / "store")
    activity = Activity(store, StoreCalls(trio.CapacityLimiter(2)))
    activity.forget("acme", "ws")  # rm -r: its deletes arrive afterwards
    activity.deleted("acme/ws/sessions/s1/f")
    activity.mark("acme/ws/sessions/s2/f")
    assert activity.pending == 0
    activity.wrote(("acme", "ws"))  # mkdir again
    activity.mark("acme/ws/sessions/s2/f")
    assert activity.pending == 2 and activity.unindexed("acme", "ws") == {"s2": None}
