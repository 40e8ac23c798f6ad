"""Nothing lost: crashes, store outages, several mounts, a full cache disk."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faultproxy import ERROR, HANG, PASS, REFUSE
from mounting import cowfs, tmpfs

#: Every test here mounts FUSE (``-m "not mount"`` leaves them out).
pytestmark = pytest.mark.mount

HERE = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def keys(bucket, prefix: str = "") -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for page in bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = bucket.client.get_object(Bucket=bucket.name, Key=obj["Key"])["Body"].read()
    return out


def test_kill_9_during_write_storm_keeps_every_closed_file(mount_factory, s3_bucket):
    m = mount_factory("storm", extra=["--write-back-delay", "0.3"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, str(HERE / "storm.py"), str(ws), "300"],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(2.5)
    m.kill()
    log, _ = writer.communicate(timeout=60)
    closed: dict[str, str] = {}
    closing: dict[str, set[str]] = {}
    for line in log.splitlines():
        kind, name, digest = line.split()
        if kind == "pre":
            closing.setdefault(name, set()).add(digest)
        else:
            closed[name] = digest
            closing[name] = set()
    assert len(closed) > 100, "the storm should have closed hundreds of files"
    m2 = mount_factory("storm-again", cache=m.cache_dir)
    m2.sync()
    stored = {k[len("t1/ws1/"):]: hashlib.sha256(v).hexdigest()
              for k, v in keys(s3_bucket, "t1/ws1/").items() if not k.endswith("/") and "/.cowfs/" not in k}
    for name, digest in closed.items():
        assert stored.get(name) in {digest} | closing[name], f"{name}: not its last closed version"
    for name in set(stored) - set(closed):
        assert stored[name] in closing.get(name, set()), f"{name}: a version that was never closed"


def test_store_outage_writes_succeed_and_arrive_later(mount_factory, s3_bucket, proxy):
    m = mount_factory("outage", extra=["--endpoint-url", proxy.endpoint, "--write-back-delay", "0.2"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    (ws / "history.jsonl").write_text("line 0\n")
    m.sync()
    written = {}
    for mode in (ERROR, REFUSE):
        proxy.set_mode(mode)
        for i in range(20):
            name = f"{mode}-{i}.txt"
            (ws / name).write_text(f"{mode} {i}")
            written[name] = f"{mode} {i}".encode()
            with open(ws / "history.jsonl", "a") as f:
                f.write(f"{mode} {i}\n")
        time.sleep(1.5)
    assert json.loads(cowfs("status", str(m.path), "--json").stdout)["retries"] > 0
    done = cowfs("sync", str(m.path), "--timeout", "2", check=False)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "upload" in done.stderr and "still pending; last error: " in done.stderr, done.stderr
    assert "last error: none" not in done.stderr
    proxy.set_mode(PASS)
    cowfs("sync", str(m.path), "--timeout", "120")
    stored = keys(s3_bucket, "t1/ws1/")
    for name, data in written.items():
        assert stored[f"t1/ws1/{name}"] == data
    expected_history = "line 0\n" + "".join(f"{mode} {i}\n" for mode in (ERROR, REFUSE) for i in range(20))
    assert stored["t1/ws1/history.jsonl"].decode() == expected_history


def test_opening_one_file_of_a_folder_fetches_its_small_files_ahead(mount_factory, s3_bucket, proxy):
    files = {f"f{i:02d}.txt": os.urandom(1000 + i) for i in range(40)}
    for name, data in files.items():
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"t1/ws1/docs/{name}", Body=data)
    m = mount_factory("ahead", extra=["--endpoint-url", proxy.endpoint, "--store-timeout", "2"])
    docs = m.path / "t1" / "ws1" / "docs"
    assert (docs / "f00.txt").read_bytes() == files["f00.txt"]
    deadline = time.monotonic() + 10
    while json.loads((m.path / ".cowfs" / "status.json").read_text())["cacheBytes"] < 40 * 4096:
        assert time.monotonic() < deadline, "the folder's other files were not fetched ahead"
        time.sleep(0.1)
    time.sleep(0.5)
    proxy.set_mode(HANG)
    for name, data in files.items():
        assert (docs / name).read_bytes() == data, f"{name} was not fetched ahead of the reader"


def test_creates_in_a_busy_folder_do_not_wait_for_its_listing(mount_factory, s3_bucket, proxy):
    """Without change marks (``--foreign-ttl 0``) a busy folder is listed once per TTL, behind its creates."""
    ttl = 0.5
    m = mount_factory("busy", extra=["--endpoint-url", proxy.endpoint, "--metadata-ttl", str(ttl),
                                     "--write-back-delay", "30", "--store-timeout", "3", "--foreign-ttl", "0"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    made = []

    def create() -> float:
        start = time.monotonic()
        path = ws / f"f{len(made):04d}.txt"
        path.write_text(path.name)
        made.append(path.name)
        return time.monotonic() - start

    def listings() -> int:
        return json.loads((m.path / ".cowfs" / "status.json").read_text())["listings"]

    deadline = time.monotonic() + 3 * ttl
    while time.monotonic() < deadline:
        create()
        time.sleep(0.02)
    seen = listings()
    while listings() == seen:
        create()
        time.sleep(0.01)
    proxy.set_mode(HANG)
    waits = []
    for _ in range(int(1.5 * ttl / 0.02)):
        waits.append(create())
        time.sleep(0.02)
    proxy.set_mode(PASS)
    assert max(waits) < ttl, f"a create waited {max(waits):.2f} s for the store"
    m.sync()
    assert sorted(os.listdir(ws)) == sorted(made)
    assert set(keys(s3_bucket, "t1/ws1/")) >= {f"t1/ws1/{name}" for name in made}


def test_outage_reads_cached_ok_uncached_eio_within_timeout(mount_factory, s3_bucket, proxy):
    m = mount_factory("reads", extra=["--endpoint-url", proxy.endpoint, "--store-timeout", "2"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    (ws / "cached.txt").write_text("cached")
    remote = os.urandom(1024 * 1024)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/remote.txt", Body=remote)
    m.sync()
    time.sleep(1.2)
    assert sorted(os.listdir(ws)) == ["cached.txt", "remote.txt"]
    assert (ws / "cached.txt").read_text() == "cached"
    proxy.set_mode(HANG)
    time.sleep(1.2)
    started = time.monotonic()
    with pytest.raises(OSError) as exc:
        (ws / "remote.txt").read_bytes()
    assert exc.value.errno == errno.EIO
    assert time.monotonic() - started < 15
    assert (ws / "cached.txt").read_text() == "cached"
    assert sorted(os.listdir(ws)) == ["cached.txt", "remote.txt"]
    proxy.set_mode(PASS)
    assert (ws / "remote.txt").read_bytes() == remote


def _remote_file(s3_bucket, name: str, size: int) -> bytes:
    data = os.urandom(size)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"t1/ws1/{name}", Body=data)
    return data


def test_a_large_file_answers_its_first_reads_before_the_rest_arrives(mount_factory, s3_bucket, proxy):
    data = _remote_file(s3_bucket, "big.bin", 24 * MiB)
    m = mount_factory("head", extra=["--endpoint-url", proxy.endpoint])
    path = m.path / "t1" / "ws1" / "big.bin"
    assert path.stat().st_size == len(data)
    proxy.hold(after_bytes=4 * MiB)
    releaser = threading.Timer(20, proxy.release)
    releaser.start()
    try:
        with open(path, "rb", buffering=0) as f:
            head = f.read(64 * 1024)
            assert proxy.holding, "the first read waited for the whole object"
            proxy.release()
            rest = f.read()
    finally:
        releaser.cancel()
        proxy.release()
    assert head + rest == data


def test_a_read_far_past_the_stream_gets_its_bytes_by_a_ranged_get(mount_factory, s3_bucket, proxy):
    """``tail`` of a big log, an archive's index at its end: not behind the whole stream."""
    data = _remote_file(s3_bucket, "log.jsonl", 48 * MiB)
    m = mount_factory("tail", extra=["--endpoint-url", proxy.endpoint])
    path = m.path / "t1" / "ws1" / "log.jsonl"
    assert path.stat().st_size == len(data)
    proxy.hold(after_bytes=6 * MiB)  # the stream stops there; a ranged GET of the tail is smaller
    releaser = threading.Timer(20, proxy.release)
    releaser.start()
    try:
        with open(path, "rb", buffering=0) as f:
            assert f.read(4096) == data[:4096]
            f.seek(len(data) - 10_000)
            tail = f.read()
            assert proxy.holding, "the read of the tail waited for the stream"
            proxy.release()
    finally:
        releaser.cancel()
        proxy.release()
    assert tail == data[-10_000:]
    assert path.read_bytes() == data


def test_a_download_that_keeps_coming_may_outlast_the_store_timeout(mount_factory, s3_bucket, proxy):
    data = _remote_file(s3_bucket, "slow.bin", 12 * MiB)
    m = mount_factory("slow", extra=["--endpoint-url", proxy.endpoint, "--store-timeout", "2"])
    path = m.path / "t1" / "ws1" / "slow.bin"
    assert path.stat().st_size == len(data)
    proxy.throttle(3 * MiB)
    started = time.monotonic()
    assert path.read_bytes() == data
    assert time.monotonic() - started > 3, "the download was not slowed down"


def test_a_download_that_stalls_fails_the_reads_past_it_then_recovers(mount_factory, s3_bucket, proxy):
    data = _remote_file(s3_bucket, "stall.bin", 24 * MiB)
    m = mount_factory("stall", extra=["--endpoint-url", proxy.endpoint, "--store-timeout", "2"])
    path = m.path / "t1" / "ws1" / "stall.bin"
    assert path.stat().st_size == len(data)
    proxy.hold(after_bytes=4 * MiB)
    try:
        with open(path, "rb", buffering=0) as f:
            assert f.read(4096) == data[:4096]
            started = time.monotonic()
            f.seek(6 * MiB)  # near the stream's front: no ranged GET of its own
            with pytest.raises(OSError) as exc:
                f.read(4096)
            assert exc.value.errno == errno.EIO
            assert time.monotonic() - started < 15
    finally:
        proxy.release()
    assert path.read_bytes() == data


def test_two_mounts_close_to_open_and_conflicts_keep_both(mount_factory, s3_bucket):
    a = mount_factory("a", extra=["--write-back-delay", "30"])
    b = mount_factory("b", extra=["--write-back-delay", "30"])
    (a.path / "t1" / "ws1").mkdir(parents=True)
    fa, fb = a.path / "t1" / "ws1" / "shared.txt", b.path / "t1" / "ws1" / "shared.txt"
    fa.write_text("from a")
    a.sync()
    deadline = time.monotonic() + 3
    while not fb.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fb.read_text() == "from a"
    fa.write_text("a wins")
    fb.write_text("b loses the race")
    a.sync()
    b.sync()
    stored = keys(s3_bucket, "t1/ws1/")
    assert stored["t1/ws1/shared.txt"] == b"a wins"
    conflicts = [k for k in stored if k.startswith("t1/ws1/shared.txt.conflict-")]
    assert len(conflicts) == 1 and stored[conflicts[0]] == b"b loses the race"
    assert "was changed by another writer" in b.log_text()
    time.sleep(1.5)
    assert fb.read_text() == "a wins"
    assert any(n.startswith("shared.txt.conflict-") for n in os.listdir(b.path / "t1" / "ws1"))


def test_full_cache_disk_gives_enospc_and_keeps_the_daemon(mount_factory, s3_bucket, tmp_path):
    with tmpfs(tmp_path / "small-cache", "6m") as cache:
        m = mount_factory("full", cache=cache)
        ws = m.path / "t1" / "ws1"
        ws.mkdir(parents=True)
        (ws / "small.txt").write_bytes(b"s" * 1000)
        with pytest.raises(OSError) as exc:
            with open(ws / "big.bin", "wb") as f:
                for _ in range(16):
                    f.write(os.urandom(1024 * 1024))
        assert exc.value.errno == errno.ENOSPC
        assert m.proc.poll() is None
        assert (ws / "small.txt").read_bytes() == b"s" * 1000
        (ws / "after.txt").write_text("still works")
        m.sync()
        stored = keys(s3_bucket, "t1/ws1/")
        assert stored["t1/ws1/small.txt"] == b"s" * 1000
        assert stored["t1/ws1/after.txt"] == b"still works"
        assert stored.get("t1/ws1/big.bin", b"") == b""
        m.umount()


def read_through(m, s3_bucket, count: int) -> dict[str, bytes]:
    """``count`` objects of 4 MiB put by another tool, then read through the mount (into its cache)."""
    blobs = {f"t1/ws1/read{i}.bin": os.urandom(4 * MiB) for i in range(count)}
    for key, data in blobs.items():
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=data)
    time.sleep(1.5)
    for key, data in blobs.items():
        assert (m.path / key).read_bytes() == data
    return blobs


def test_reads_never_leave_a_small_cache_disk_full_for_writes(mount_factory, s3_bucket, tmp_path):
    """With the default --cache-size (10G) on a 64 MiB disk, the clean cache leaves room for new writes."""
    with tmpfs(tmp_path / "small-disk", "64m") as cache:
        m = mount_factory("small", cache=cache)
        ws = m.path / "t1" / "ws1"
        ws.mkdir(parents=True)
        (ws / "first.bin").write_bytes(b"1" * 8 * MiB)
        m.sync()
        read_through(m, s3_bucket, 24)
        (ws / "second.bin").write_bytes(b"2" * 8 * MiB)
        m.sync()
        assert keys(s3_bucket, "t1/ws1/second.bin")["t1/ws1/second.bin"] == b"2" * 8 * MiB
        m.umount()


def test_a_write_on_a_disk_others_filled_gets_room_from_the_clean_cache(mount_factory, s3_bucket, tmp_path):
    """Another program fills the disk below the cache's free-space floor: a write evicts
    clean copies (a re-download later) rather than fail with ENOSPC."""
    with tmpfs(tmp_path / "full-disk", "64m") as cache:
        m = mount_factory("full", cache=cache)
        ws = m.path / "t1" / "ws1"
        ws.mkdir(parents=True)
        blobs = read_through(m, s3_bucket, 6)
        disk = os.statvfs(cache)
        (cache / "filler").write_bytes(b"f" * (disk.f_bavail * disk.f_frsize - 2 * MiB))
        (ws / "after.bin").write_bytes(b"3" * 8 * MiB)
        m.sync()
        assert keys(s3_bucket, "t1/ws1/after.bin")["t1/ws1/after.bin"] == b"3" * 8 * MiB
        assert (m.path / "t1/ws1/read0.bin").read_bytes() == blobs["t1/ws1/read0.bin"]
        (cache / "filler").unlink()
        m.umount()


def test_fsck_replays_a_journal_without_mounting(mount_factory, s3_bucket):
    m = mount_factory("fsck", extra=["--write-back-delay", "60"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    (ws / "gone.txt").write_text("x")
    m.sync()
    store = ["--store", f"s3://{s3_bucket.name}", "--endpoint-url", s3_bucket.endpoint, "--path-style"]
    cowfs("sessions", "reindex", "t1/ws1", *store)
    (ws / "pending.txt").write_text("only in the journal")
    (ws / "sessions" / "s1").mkdir(parents=True)
    (ws / "sessions" / "s1" / "history.jsonl").write_text("12345")
    (ws / "gone.txt").unlink()
    m.kill()
    assert "t1/ws1/pending.txt" not in keys(s3_bucket, "t1/ws1/")
    done = cowfs("fsck", f"s3://{s3_bucket.name}", "--cache-dir", str(m.cache_dir),
                 "--endpoint-url", s3_bucket.endpoint, "--path-style")
    assert "uploaded t1/ws1/pending.txt" in done.stdout
    assert "deleted t1/ws1/gone.txt" in done.stdout
    assert "reindexed the sessions of t1/ws1" in done.stdout
    listed = json.loads(cowfs("sessions", "list", "t1/ws1", "--json", *store).stdout)["sessions"]
    assert [(s["sessionId"], s["files"], s["bytes"]) for s in listed] == [("s1", 1, 5)]
    stored = keys(s3_bucket, "t1/ws1/")
    assert stored["t1/ws1/pending.txt"] == b"only in the journal"
    assert "t1/ws1/gone.txt" not in stored
    again = cowfs("fsck", f"s3://{s3_bucket.name}", "--cache-dir", str(m.cache_dir),
                  "--endpoint-url", s3_bucket.endpoint, "--path-style")
    assert again.stdout.strip() == "nothing to recover"


def test_replay_at_mount_indexes_the_sessions_it_uploads(mount_factory, s3_bucket):
    m = mount_factory("replayed", extra=["--write-back-delay", "60"])
    (m.path / "t1" / "ws1").mkdir(parents=True)
    store = ["--store", f"s3://{s3_bucket.name}", "--endpoint-url", s3_bucket.endpoint, "--path-style"]
    cowfs("sessions", "reindex", "t1/ws1", *store)
    (m.path / "t1" / "ws1" / "sessions" / "s2").mkdir(parents=True)
    (m.path / "t1" / "ws1" / "sessions" / "s2" / "history.jsonl").write_text("abc")
    m.kill()
    again = mount_factory("replayed-again", cache=m.cache_dir)
    again.sync()
    listed = json.loads(cowfs("sessions", "list", "t1/ws1", "--json", *store).stdout)["sessions"]
    assert [(s["sessionId"], s["files"], s["bytes"]) for s in listed] == [("s2", 1, 3)]
