"""Pure logic, no FUSE and no network: names, keys, metadata, journal replay order."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from cowfs.attrs import Attrs, check_xattrs_fit, from_metadata, to_metadata
from cowfs.errors import InvalidName, NameTooLong, NoSpace, ObjectNotFound, Refused, StoreError
from cowfs.journal import BODY_STAGING, SPARE_AHEAD, DeleteRecord, Journal, MoveRecord, PutRecord, plan_replay
from cowfs.keys import KeyMap
from cowfs.names import check_key_length, component, is_listable
from cowfs.reachability import says_unreachable


def test_component_rules():
    assert component(b"hello world.txt") == "hello world.txt"
    assert component("ü".encode()) == "ü"
    assert component(b"x" * 255) == "x" * 255
    with pytest.raises(NameTooLong):
        component(b"x" * 256)
    with pytest.raises(NameTooLong):
        component("ü".encode() * 128)
    for bad in (b"\xff", b"", b".", b"..", b"a/b", b"a\0b"):
        with pytest.raises(InvalidName):
            component(bad)
    assert not is_listable("") and is_listable("ok")


def test_key_length_includes_store_prefix():
    check_key_length("k" * 1024)
    with pytest.raises(NameTooLong):
        check_key_length("k" * 1020, "pre/p")
    with pytest.raises(NameTooLong):
        check_key_length("ü" * 513)


def test_keymap_roots_and_rebase():
    whole = KeyMap()
    assert whole.file_key(("t", "w", "f")) == "t/w/f"
    assert whole.dir_key(("t", "w")) == "t/w/"
    assert whole.dir_key(()) == ""
    tenant = KeyMap(root=("acme",))
    assert tenant.file_key(("w", "f")) == "acme/w/f"
    assert tenant.dir_key(()) == "acme/"
    assert KeyMap.child_name("acme/w/", "acme/w/sub/") == "sub"
    assert whole.rebase("a/b/c", "a/", "z/") == "z/b/c"
    with pytest.raises(NameTooLong):
        whole.checked_key(("a" * 200,) * 6, is_dir=True)


def test_metadata_round_trip_and_foreign_objects():
    attrs = Attrs(stat.S_IFREG | 0o640, 1000, 1001, 1_600_000_000_123_456_789, {"user.k": b"\x00\xff"})
    meta = to_metadata(attrs)
    assert meta["mode"] == str(stat.S_IFREG | 0o640)
    assert meta["mtime"] == "1600000000.123456789"
    assert all(v.isascii() for v in meta.values())
    back = from_metadata(meta, is_dir=False, last_modified=0, uid=0, gid=0)
    assert back == attrs
    foreign = from_metadata(None, is_dir=False, last_modified=1234.5, uid=7, gid=8)
    assert foreign == Attrs(stat.S_IFREG | 0o644, 7, 8, 1_234_500_000_000, {})
    assert from_metadata({}, is_dir=True, last_modified=0, uid=0, gid=0).mode == stat.S_IFDIR | 0o755
    assert from_metadata({"mtime": "1700000000"}, is_dir=False, last_modified=0, uid=0, gid=0).mtime_ns == 1_700_000_000 * 10**9
    assert from_metadata({"mode": "420"}, is_dir=False, last_modified=0, uid=0, gid=0).mode == stat.S_IFREG | 0o644


def test_special_files_and_times_in_metadata_as_s3fs_writes_them():
    fifo = Attrs(stat.S_IFIFO | 0o640, 1, 2, 1_600_000_000_000_000_001)
    assert to_metadata(fifo) == {"mode": str(stat.S_IFIFO | 0o640), "uid": "1", "gid": "2",
                                 "mtime": "1600000000.000000001"}
    device = Attrs(stat.S_IFCHR | 0o600, 0, 0, 1_600_000_000_000_000_000, rdev=os.makedev(1, 3),
                   atime_ns=1_500_000_000_500_000_000, ctime_ns=1_700_000_000_000_000_007)
    meta = to_metadata(device)
    assert (meta["rdev"], meta["atime"], meta["ctime"]) == ("259", "1500000000.500000000", "1700000000.000000007")
    assert from_metadata(meta, is_dir=False, last_modified=0, uid=0, gid=0) == device
    same = Attrs(stat.S_IFREG | 0o644, 0, 0, 5, atime_ns=5, ctime_ns=5)
    assert {"atime", "ctime", "rdev"}.isdisjoint(to_metadata(same))  # as mtime: not written
    back = from_metadata(to_metadata(same), is_dir=False, last_modified=0, uid=0, gid=0)
    assert (back.atime_ns, back.ctime_ns) == (None, None)
    not_a_device = from_metadata({"mode": str(stat.S_IFREG | 0o644), "rdev": "259"}, is_dir=False, last_modified=0,
                                 uid=0, gid=0)
    assert not_a_device.rdev == 0


def test_xattrs_limited_to_object_metadata_size():
    check_xattrs_fit({"user.a": b"x" * 1000})
    with pytest.raises(NoSpace):
        check_xattrs_fit({"user.a": b"x" * 1500})


def test_replay_plan_moves_then_deletes_and_drops_superseded_deletes():
    put = PutRecord("r1", "t/w/a", BODY_STAGING, "s1", {})
    move = MoveRecord("m1", "t/w/old/", "t/w/new/", [("t/w/old/x", '"e"')])
    moves, deletes, puts = plan_replay([DeleteRecord("t/w/a"), DeleteRecord("t/w/b"), put, move])
    assert moves == [move]
    assert deletes == ["t/w/b"]
    assert puts == [put]


def test_journal_records_survive_reopen(tmp_path):
    journal = Journal(tmp_path / "j")
    staging, fd = journal.create_staging()
    journal.write_put(PutRecord("r1", "t/w/a", BODY_STAGING, staging, {"mode": "33188"}, b""))
    journal.write_put(PutRecord("r1", "t/w/renamed", BODY_STAGING, staging, {"mode": "33188"}, b""))
    journal.write_delete("t/w/old")
    journal.close()
    again = Journal(tmp_path / "j")
    records = again.records()
    assert PutRecord("r1", "t/w/renamed", BODY_STAGING, staging, {"mode": "33188"}, b"") in records
    assert DeleteRecord("t/w/old") in records
    assert len(records) == 2
    again.remove_put("r1")
    again.remove_delete("t/w/old")
    assert again.records() == []


def test_journal_log_skips_a_torn_last_line_and_compacts_to_its_live_records(tmp_path, monkeypatch):
    import cowfs.journal as journal_module

    journal = Journal(tmp_path / "j")
    for i in range(200):
        journal.write_put(PutRecord(f"r{i}", f"t/w/f{i}", BODY_STAGING, None, {"n": "x" * 100}, b""))
        if i != 7:
            journal.remove_put(f"r{i}")
    journal.write_delete("t/w/gone")
    journal.close()
    log = tmp_path / "j" / "log.jsonl"
    with open(log, "a") as f:
        f.write('{"op":"put","rid":"torn","key":"t/w/to')
    again = Journal(tmp_path / "j")
    assert {getattr(r, "key", None) for r in again.records()} == {"t/w/f7", "t/w/gone"}
    before = log.stat().st_size
    monkeypatch.setattr(journal_module, "COMPACT_BYTES", 1000)
    again.write_delete("t/w/also")
    again.sync_to_disk()
    assert log.stat().st_size < before / 10
    again.remove_delete("t/w/also")
    again.close()
    third = Journal(tmp_path / "j")
    assert sorted(getattr(r, "key", None) for r in third.records()) == ["t/w/f7", "t/w/gone"]
    third.close()


def test_closes_are_logged_while_a_compaction_waits_for_the_disk(tmp_path, monkeypatch):
    """The thread that serves the kernel logs every close; a compaction's fsync
    (tens of ms for an untar's pending files) must not stall it, nor lose a line."""
    journal = Journal(tmp_path / "j")
    for i in range(50):
        journal.write_put(PutRecord(f"r{i}", f"t/w/f{i}", BODY_STAGING, None, {}, b""))
    entered, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            entered.set()
            release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    compacting = threading.Thread(target=journal.compact)
    compacting.start()
    try:
        assert entered.wait(10)
        logging = threading.Thread(target=lambda: (
            journal.write_put(PutRecord("late", "t/w/late", BODY_STAGING, None, {}, b"")), journal.remove_put("r3")))
        logging.start()
        logging.join(5)
        assert not logging.is_alive(), "a close waited for the compaction's fsync"
    finally:
        release.set()
        compacting.join(10)
    journal.close()
    again = Journal(tmp_path / "j")
    assert {r.key for r in again.records()} == {f"t/w/f{i}" for i in range(50) if i != 3} | {"t/w/late"}
    again.close()


def test_journal_reads_records_of_the_one_file_per_record_layout(tmp_path):
    root = tmp_path / "j"
    root.mkdir()
    (root / "put-r1.json").write_text(json.dumps(
        {"key": "t/w/a", "body": BODY_STAGING, "staging": "s1", "metadata": {}, "inline": "", "size": 3}))
    (root / "del-0123.json").write_text(json.dumps({"key": "t/w/b"}))
    journal = Journal(root)
    records = journal.records()
    assert PutRecord("r1", "t/w/a", BODY_STAGING, "s1", {}, b"", 3) in records and DeleteRecord("t/w/b") in records
    assert not list(root.glob("*.json"))
    journal.close()
    assert len(Journal(root).records()) == 2


def test_settled_staging_files_become_spares_and_others_are_removed(tmp_path):
    journal = Journal(tmp_path / "j")
    journal.sync_to_disk()
    spares = {p.name for p in journal.data.iterdir()}
    assert len(spares) == SPARE_AHEAD and all((journal.data / n).stat().st_size == 0 for n in spares)
    uploaded, fd = journal.create_staging()
    assert uploaded in spares, "a create takes a spare made ahead, no new file"
    os.write(fd, b"uploaded bytes")
    os.close(fd)
    inode = journal.staging_path(uploaded).stat().st_ino
    replaced, fd = journal.create_staging()
    os.close(fd)
    journal.discard_staging(uploaded, reuse=True)
    journal.discard_staging(replaced)
    journal.sync_to_disk()
    assert not journal.staging_path(uploaded).exists() and not journal.staging_path(replaced).exists()
    reused = [p for p in journal.data.iterdir() if p.stat().st_ino == inode]
    assert reused and reused[0].name not in spares and reused[0].stat().st_size == 0, "emptied, under a new id"
    taken = set()
    for _ in range(SPARE_AHEAD):
        staging, fd = journal.create_staging()
        taken.add(staging)
        os.close(fd)
    assert reused[0].name in taken, "the emptied file is handed out again"
    journal.close()


def test_a_burst_of_settled_staging_files_is_kept_for_the_next_burst(tmp_path):
    """More files than are made ahead: every settled one is emptied and kept, none
    deleted and none created, so the next burst allocates no inode."""
    journal = Journal(tmp_path / "j")
    journal.sync_to_disk()
    taken = []
    for _ in range(SPARE_AHEAD + 44):
        staging, fd = journal.create_staging()
        os.write(fd, b"x" * 100)
        taken.append(os.fstat(fd).st_ino)
        os.close(fd)
        journal.discard_staging(staging, reuse=True)
    journal.sync_to_disk()
    left = list(journal.data.iterdir())
    assert sorted(p.stat().st_ino for p in left) == sorted(taken) and all(p.stat().st_size == 0 for p in left)
    journal.close()


def test_record_and_staging_ids_are_unique_and_inline_bodies_survive_the_log(tmp_path):
    ids = {Journal.new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    journal = Journal(tmp_path / "j")
    body = bytes(range(256)) * 20
    journal.write_put(PutRecord("r1", 't/w/"quoted"\\name', "inline", None, {"mode": "100644"}, body, len(body)))
    journal.close()
    again = Journal(tmp_path / "j")
    assert again.records() == [PutRecord("r1", 't/w/"quoted"\\name', "inline", None, {"mode": "100644"}, body, len(body))]
    again.close()


def test_replay_reports_a_version_whose_bytes_did_not_reach_the_disk_and_uploads_the_rest(tmp_path):
    """After a machine crash inside the group-commit window a staging file may come back short."""
    from cowfs.recovery import replay
    from cowfs.store.local import LocalStore

    store = LocalStore(tmp_path / "store")
    store.put("t/w/short", b"old version", {})
    journal = Journal(tmp_path / "j")
    short, fd = journal.create_staging()
    os.write(fd, b"0123")
    os.close(fd)
    whole, fd = journal.create_staging()
    os.write(fd, b"all of it")
    os.close(fd)
    journal.write_put(PutRecord("r1", "t/w/short", BODY_STAGING, short, {}, b"", 10))
    journal.write_put(PutRecord("r2", "t/w/whole", BODY_STAGING, whole, {}, b"", 9))
    journal.sync_to_disk()
    report = replay(store, journal)
    assert report.lost == ["t/w/short"]
    assert report.uploaded == ["t/w/whole"]
    assert store.get("t/w/short")[0] == b"old version"
    assert store.get("t/w/whole")[0] == b"all of it"
    assert journal.records() == []


def test_replay_settles_a_delete_that_a_put_of_the_same_key_superseded(tmp_path):
    """unlink then create of one name, then a crash: the next mount after the
    recovering one must not replay the delete alone."""
    from cowfs.recovery import replay
    from cowfs.store.local import LocalStore

    store = LocalStore(tmp_path / "store")
    journal = Journal(tmp_path / "j")
    journal.write_delete("t/w/f")
    journal.write_put(PutRecord("r1", "t/w/f", "inline", None, {}, b"new", 3))
    journal.sync_to_disk()
    assert replay(store, journal).uploaded == ["t/w/f"]
    assert journal.records() == []
    journal.close()
    again = Journal(tmp_path / "j")
    assert replay(store, again).lines() == []
    assert store.get("t/w/f")[0] == b"new"
    again.close()


def test_replay_keeps_the_empty_staging_files_it_finds_as_spares(tmp_path):
    from cowfs.recovery import replay
    from cowfs.store.local import LocalStore

    journal = Journal(tmp_path / "j")
    empty = {"0fa1c0de00000001": None, "0fa1c0de00000002": None}
    for name in empty:
        (journal.data / name).touch()
        empty[name] = (journal.data / name).stat().st_ino
    (journal.data / "0fa1c0de00000003").write_bytes(b"bytes of a settled version")
    replay(LocalStore(tmp_path / "store"), journal)
    assert not (journal.data / "0fa1c0de00000003").exists()
    taken = {}
    for _ in empty:
        staging, fd = journal.create_staging()
        taken[staging] = os.fstat(fd).st_ino
        os.close(fd)
    assert taken == empty, "the same files, not new ones"
    journal.close()


def test_layout_rules_by_depth():
    from cowfs import layout
    from cowfs.errors import NotPermitted

    layout.check_new_entry(("acme",), is_dir=True)
    layout.check_new_entry(("acme", "ws-1.a_b"), is_dir=True)
    layout.check_new_entry(("acme", "ws", "any name ü.txt"), is_dir=False)
    layout.check_new_entry(("acme", "ws", "sessions", "sess_789"), is_dir=True)
    layout.check_new_entry(("acme", "ws", "sessions", "s1", "notes.txt"), is_dir=False)
    for parts in (("acme",), ("acme", "ws"), ("acme", "ws", "sessions", "s1")):
        with pytest.raises(NotPermitted):
            layout.check_new_entry(parts, is_dir=False)
    for parts in (("bad name",), (".hidden",), ("acme", "-x"), ("acme", "w" * 129), ("acme", "ws", "sessions", "a b")):
        with pytest.raises(InvalidName):
            layout.check_new_entry(parts, is_dir=True)
    assert not layout.visible(("acme", "ws", ".cowfs"), is_dir=True)
    assert layout.visible(("acme", "ws", "sub", ".cowfs"), is_dir=True)
    assert not layout.visible(("file-at-root",), is_dir=False)
    assert not layout.visible(("acme", "ws", "sessions", "stray.txt"), is_dir=False)
    assert not layout.can_rename(("acme", "ws")) and layout.can_rename(("acme", "ws", "f"))
    assert layout.workspace_of(("acme", "ws", "f")) == ("acme", "ws")
    assert layout.workspace_of(("acme", "ws")) is None


def test_trash_folders_at_the_mount_root_are_the_one_exception():
    from cowfs import layout
    from cowfs.errors import NotPermitted

    for parts, root in (((".Trash-1000",), 0), ((".Trash", "1000"), 0), (("acme", ".Trash-1000"), 1)):
        layout.check_new_entry(parts, is_dir=True, mount_root=root)
        layout.check_new_entry(parts + ("files", "a.txt"), is_dir=False, mount_root=root)
        layout.check_new_entry(parts + ("files", "sessions", "x.txt"), is_dir=False, mount_root=root)
        assert layout.trash_owner(parts, root) == 1000
        assert layout.trash_owner(parts + ("files",), root) is None
        assert not layout.can_rename(parts, root)
        assert layout.can_rename(parts + ("files", "a.txt"), root)
        assert layout.workspace_of(parts + ("files", "a.txt")) is None
        assert not layout.is_workspace(parts + ("files",))
        assert layout.visible(parts + ("files", ".cowfs"), is_dir=True, mount_root=root)
    with pytest.raises(NotPermitted):
        layout.check_new_entry((".Trash-1000",), is_dir=False)
    with pytest.raises(NotPermitted):
        layout.check_new_entry((".Trash", "1000"), is_dir=False)
    with pytest.raises(InvalidName):
        layout.check_new_entry((".Trash", "alice"), is_dir=True)
    for parts, root in (((".Trash-1000",), 1), (("acme", ".Trash-1000"), 0), ((".Trash-x",), 0), ((".Trash-",), 0)):
        with pytest.raises(InvalidName):
            layout.check_new_entry(parts, is_dir=True, mount_root=root)  # only at the mount's root, only a uid
    assert not layout.can_rename((".Trash",), 0)
    assert layout.is_workspace(("acme", "ws"))


def test_artifact_type_follows_the_path():
    from cowfs.layout import artifact_type

    ws = ("acme", "ws")
    assert artifact_type(ws + ("sessions", "s1", "history.jsonl")) == ("session_history", "s1")
    assert artifact_type(ws + ("sessions", "s1", "artifacts", "out.txt")) == ("tool_output", "s1")
    assert artifact_type(ws + ("sessions", "s1", "diffs", "a", "b.diff")) == ("file_diff", "s1")
    assert artifact_type(ws + ("sessions", "s1", "notes.txt")) == ("file", "s1")
    assert artifact_type(ws + ("sessions", "s1")) == ("file", "s1")
    assert artifact_type(ws + ("sessions", "s1", "artifacts")) == ("file", "s1")
    assert artifact_type(ws + ("README.md",)) == ("file", None)
    assert artifact_type(ws + ("history.jsonl",)) == ("file", None)


def test_a_refusal_is_an_answer_and_a_timeout_is_not() -> None:
    assert not says_unreachable(Refused("put k: 400"))
    assert not says_unreachable(ObjectNotFound("k"))
    assert says_unreachable(StoreError("the store did not answer within 30 s"))


def _files(names: list[str]) -> list:
    from cowfs.namespace.node import Kind, Node

    folder = Node(2, Kind.DIR, "big", None, Attrs(0o40755, 0, 0, 0))
    nodes = [Node(3 + i, Kind.FILE, name, folder, Attrs(0o100644, 0, 0, 0)) for i, name in enumerate(names)]
    for node in nodes:
        node.meta_known = False
    return nodes


def test_lookups_in_order_fetch_the_entries_after_them_a_span_at_a_time() -> None:
    from cowfs.namespace.ahead import STAT_AHEAD, StatAhead

    nodes = _files([f"f{i:04d}" for i in range(2000)])
    walk = StatAhead(nodes)
    sent: list[str] = []
    for node in nodes[:400]:
        sent += [n.name for n in walk.after(node.name)]
        node.meta_known = True
    assert sent == [n.name for n in nodes[1:1 + len(sent)]], "each entry once, in order"
    assert 400 + STAT_AHEAD // 2 <= 1 + len(sent) <= 400 + STAT_AHEAD, "not far ahead, never behind"
    assert [n.name for n in walk.after("f0100")] == [], "what a jump back reaches is known"
    assert [n.name for n in walk.after("f1499")] == [f"f{i:04d}" for i in range(1500, 1500 + STAT_AHEAD)]
