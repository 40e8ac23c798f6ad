"""Faults that must neither lose data nor hang: a store that is down or hangs, a crash in the middle
of a folder rename, a key the store will never take."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time

import pytest

from cowfs.journal import Journal, MoveRecord
from cowfs.recovery import finish_move, replay
from cowfs.store.local import LocalStore
from faultproxy import HANG, PASS, REFUSE
from mounting import cowfs
from test_durability import keys


def status(mount) -> dict:
    return json.loads((mount.path / ".cowfs" / "status.json").read_text())


@pytest.mark.parametrize("mode", [REFUSE, HANG])
@pytest.mark.mount
def test_fsync_with_the_store_out_of_reach_fails_with_eio_within_the_store_timeout(mount_factory, s3_bucket, proxy,
                                                                                    mode):
    m = mount_factory("down", extra=["--endpoint-url", proxy.endpoint, "--store-timeout", "3"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    m.sync()
    proxy.set_mode(mode)
    started = time.monotonic()
    with pytest.raises(OSError) as failed:
        with open(ws / "notes.txt", "w") as f:
            f.write("kept in the journal")
            f.flush()
            os.fsync(f.fileno())
    assert failed.value.errno == errno.EIO
    assert time.monotonic() - started < 3 + 5
    proxy.set_mode(PASS)
    m.sync()
    assert keys(s3_bucket, "t1/ws1/notes.txt") == {"t1/ws1/notes.txt": b"kept in the journal"}


@pytest.mark.mount
def test_with_the_store_hanging_what_the_mount_holds_is_served_at_once(mount_factory, s3_bucket, proxy):
    m = mount_factory("hang", extra=["--endpoint-url", proxy.endpoint, "--store-timeout", "2"])
    ws = m.path / "t1" / "ws1"
    (ws / "written").mkdir(parents=True)
    for i in range(5):
        (ws / "written" / f"f{i}.txt").write_text(f"file {i}")
    m.sync()
    time.sleep(1.2)  # past the metadata TTL: every access would revalidate
    proxy.set_mode(HANG)
    first = time.monotonic()
    assert (ws / "written" / "f0.txt").read_text() == "file 0"
    assert time.monotonic() - first < 2 + 3, "at most one store timeout"
    time.sleep(6)  # however long the store stays away, what the mount holds is served at once
    started = time.monotonic()
    for i in range(5):
        assert (ws / "written" / f"f{i}.txt").read_text() == f"file {i}"
    assert sorted(os.listdir(ws / "written")) == [f"f{i}.txt" for i in range(5)]
    assert time.monotonic() - started < 1.0, "served from what the mount holds, not after a timeout each"
    with pytest.raises(OSError) as unknown:
        (ws / "written" / "never-seen.txt").read_text()
    assert unknown.value.errno in (errno.EIO, errno.ENOENT)
    down = status(m)
    assert down["storeUnreachableSince"] and down["lastError"]
    proxy.set_mode(PASS)
    deadline = time.monotonic() + 15
    while status(m)["storeUnreachableSince"] is not None:
        assert time.monotonic() < deadline, "the store answers again, and the mount must notice"
        time.sleep(0.2)
    assert "the store answers again" in m.log_text()
    (ws / "written" / "after.txt").write_text("back")
    m.sync()
    assert keys(s3_bucket, "t1/ws1/written/after.txt") == {"t1/ws1/written/after.txt": b"back"}


@pytest.mark.parametrize("kill_after", [0.3, 1.0, 2.0])
@pytest.mark.mount
def test_kill_9_during_a_folder_rename_leaves_one_whole_tree(mount_factory, s3_bucket, proxy, kill_after):
    m = mount_factory("mv", extra=["--endpoint-url", proxy.endpoint])
    ws = m.path / "t1" / "ws1"
    (ws / "src" / "sub").mkdir(parents=True)
    names = [f"f{i:03d}.txt" if i % 2 else f"sub/f{i:03d}.txt" for i in range(400)]
    for name in names:
        (ws / "src" / name).write_text(name)
    m.sync()
    proxy.throttle(400_000)  # the copies take a few seconds
    mv = subprocess.Popen(["mv", str(ws / "src"), str(ws / "dst")], stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    m.kill()
    mv.wait(timeout=30)
    proxy.throttle(0)
    again = mount_factory("mv-again", extra=["--endpoint-url", proxy.endpoint], cache=m.cache_dir)
    again.sync()
    stored = keys(s3_bucket, "t1/ws1/")
    trees = {top: {k[len(f"t1/ws1/{top}/"):] for k in stored if k.startswith(f"t1/ws1/{top}/")} - {"", "sub/"}
             for top in ("src", "dst")}
    whole = set(names)
    assert sorted(len(t) for t in trees.values()) == [0, 400], f"both trees after kill -9: {len(trees['src'])} " \
                                                               f"and {len(trees['dst'])} files"
    assert whole in trees.values()
    shown = [top for top in ("src", "dst") if (again.path / "t1" / "ws1" / top).exists()]
    assert len(shown) == 1 and sorted(
        str(p.relative_to(again.path / "t1" / "ws1" / shown[0]))
        for p in (again.path / "t1" / "ws1" / shown[0]).rglob("*") if p.is_file()) == sorted(names)


def test_replay_finishes_a_folder_move_copying_only_what_is_missing(tmp_path):
    store = LocalStore(tmp_path / "store")
    objects = []
    for name in ("a", "b", "c", "d/e"):
        etag = store.put(f"t/w/old/{name}", name.encode(), {"mode": "33188"})
        objects.append((f"t/w/old/{name}", etag))
    store.copy("t/w/old/a", "t/w/new/a")
    store.delete("t/w/old/b")  # copied and deleted before the crash
    store.put("t/w/new/b", b"b", {"mode": "33188"})
    store.put("t/w/old/c", b"changed by another writer", {})
    journal = Journal(tmp_path / "journal")
    journal.write_move("t/w/old/", "t/w/new/", objects)
    report = replay(store, journal)
    assert report.moved == ["t/w/old/ to t/w/new/"]
    assert journal.records() == []
    listed = {o.key: store.get(o.key)[0] for o in store.list_all("t/w/", None).objects}
    assert listed == {"t/w/new/a": b"a", "t/w/new/b": b"b", "t/w/new/d/e": b"d/e",
                      "t/w/old/c": b"changed by another writer"}
    assert store.head("t/w/new/d/e").metadata == {"mode": "33188"}
    finish_move(store, MoveRecord("m", "t/w/old/", "t/w/new/", objects))
    assert {o.key for o in store.list_all("t/w/", None).objects} == set(listed), "a second replay changes nothing"
    journal.close()


@pytest.mark.mount
def test_a_key_the_store_refuses_does_not_block_sync_or_umount(mount_factory, s3_bucket):
    m = mount_factory("refused")
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    bad = ws / "line\nbreak.txt"  # moto answers 404 to a PUT of a key with a newline
    bad.write_text("mine")
    (ws / "good.txt").write_text("fine")
    started = time.monotonic()
    done = cowfs("sync", "--timeout", "30", str(m.path), check=False)
    assert done.returncode == 1 and time.monotonic() - started < 30
    assert "line\\nbreak.txt" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert keys(s3_bucket, "t1/ws1/good.txt") == {"t1/ws1/good.txt": b"fine"}
    assert list(status(m)["refusedKeys"]) == ["t1/ws1/line\nbreak.txt"]
    assert "the store refuses" in m.log_text()
    bad.rename(ws / "renamed.txt")
    m.sync()
    assert keys(s3_bucket, "t1/ws1/renamed.txt") == {"t1/ws1/renamed.txt": b"mine"}
    assert status(m)["refusedKeys"] == {}
    (ws / "again\nbad.txt").write_text("kept")
    done = cowfs("umount", "--timeout", "60", str(m.path), check=False)
    assert done.returncode == 1 and "again\\nbad.txt" in done.stderr
    assert m.proc.wait(timeout=30) == 0
    later = mount_factory("refused-later", cache=m.cache_dir)
    assert list(status(later)["refusedKeys"]) == ["t1/ws1/again\nbad.txt"], "still in the journal, still named"


@pytest.mark.mount
def test_kill_9_right_after_rm_r_of_a_workspace_leaves_nothing_of_it(mount_factory, s3_bucket):
    m = mount_factory("rm")
    ws = m.path / "t1" / "gone"
    (ws / "sessions" / "s1").mkdir(parents=True)
    for i in range(300):
        (ws / "sessions" / "s1" / f"f{i:03d}.txt").write_text(str(i))
    m.sync()
    subprocess.run(["rm", "-r", str(ws)], check=True)
    m.kill()
    again = mount_factory("rm-again", cache=m.cache_dir)
    again.sync()
    assert keys(s3_bucket, "t1/gone/") == {}
    assert not (again.path / "t1" / "gone").exists()
