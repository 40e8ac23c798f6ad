"""POSIX operations through a real mount, checked again in the bucket with boto3."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import base64
import ctypes
import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
import urllib.parse

import pytest

from cowfs.changes import MARKS_DIR
from cowfs.summaries import SUMMARIES_DIR

from mounting import cowfs, is_mounted

#: What these tests check can differ between S3 servers: each runs on moto and on Ceph RGW;
#: every one mounts FUSE (or has a mount refused).
pytestmark = [pytest.mark.servers, pytest.mark.mount]


def body(bucket, key: str) -> bytes:
    return bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read()


def meta(bucket, key: str) -> dict[str, str]:
    return bucket.client.head_object(Bucket=bucket.name, Key=key)["Metadata"]


#: "Another client" in these tests is boto3, which leaves no change mark: without reading marks
#: every folder is listed once per TTL, the revalidation these tests are about.
EVERY_TTL = ["--foreign-ttl", "0"]


def keys(bucket, prefix: str = "") -> set[str]:
    """The keys under ``prefix``, but the mounts' change marks and attribute summaries."""
    out: set[str] = set()
    for page in bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=prefix):
        out.update(o["Key"] for o in page.get("Contents", [])
                   if f"/{MARKS_DIR}" not in o["Key"] and f"/{SUMMARIES_DIR}" not in o["Key"])
    return out


def test_create_read_overwrite_append_random_write_truncate(mnt, ws, s3_bucket):
    f = ws / "notes.txt"
    f.write_bytes(b"hello world\n")
    assert f.read_bytes() == b"hello world\n"
    f.write_bytes(b"overwritten\n")
    with open(f, "ab") as out:
        out.write(b"appended\n")
    with open(f, "r+b") as out:
        out.seek(4)
        out.write(b"XX")
        out.seek(100)
        out.write(b"end")
    expected = bytearray(b"overwritten\nappended\n")
    expected[4:6] = b"XX"
    expected += b"\0" * (100 - len(expected)) + b"end"
    assert f.read_bytes() == bytes(expected)
    os.truncate(f, 50)
    assert f.read_bytes() == bytes(expected[:50])
    assert f.stat().st_size == 50
    mnt.sync()
    assert body(s3_bucket, "t1/ws1/notes.txt") == bytes(expected[:50])


def test_rename_file_and_folder_of_100_files(mnt, ws, s3_bucket):
    (ws / "a.txt").write_bytes(b"A")
    mnt.sync()
    (ws / "a.txt").rename(ws / "b.txt")
    assert (ws / "b.txt").read_bytes() == b"A"
    assert not (ws / "a.txt").exists()
    src = ws / "src"
    src.mkdir()
    (src / "sub").mkdir()
    for i in range(100):
        (src / ("sub" if i % 10 == 0 else ".") / f"f{i}").write_bytes(f"file {i}".encode())
    mnt.sync()
    src.rename(ws / "dst")
    assert not src.exists()
    assert len(list((ws / "dst").iterdir())) == 91
    assert (ws / "dst" / "sub" / "f10").read_bytes() == b"file 10"
    mnt.sync()
    found = keys(s3_bucket, "t1/ws1/")
    assert "t1/ws1/b.txt" in found and "t1/ws1/a.txt" not in found
    assert not [k for k in found if k.startswith("t1/ws1/src/")]
    for i in range(100):
        key = f"t1/ws1/dst/{'sub/' if i % 10 == 0 else ''}f{i}"
        assert body(s3_bucket, key) == f"file {i}".encode()


def test_rename_of_unsynced_files_lands_under_new_name(mnt, ws, s3_bucket):
    (ws / "tmp").write_bytes(b"fresh")
    (ws / "tmp").rename(ws / "final")
    d = ws / "newdir"
    d.mkdir()
    (d / "x").write_bytes(b"x")
    d.rename(ws / "moved")
    mnt.sync()
    found = keys(s3_bucket, "t1/ws1/")
    assert body(s3_bucket, "t1/ws1/final") == b"fresh"
    assert body(s3_bucket, "t1/ws1/moved/x") == b"x"
    assert "t1/ws1/tmp" not in found and not [k for k in found if k.startswith("t1/ws1/newdir")]


def test_unlink_mkdir_rmdir(mnt, ws, s3_bucket):
    d = ws / "dir"
    d.mkdir()
    (d / "f").write_bytes(b"1")
    with pytest.raises(OSError) as exc:
        d.rmdir()
    assert exc.value.errno == errno.ENOTEMPTY
    mnt.sync()
    assert keys(s3_bucket, "t1/ws1/dir/") == {"t1/ws1/dir/", "t1/ws1/dir/f"}
    (d / "f").unlink()
    assert not (d / "f").exists()
    d.rmdir()
    assert not d.exists()
    (ws / "empty").mkdir()
    mnt.sync()
    assert keys(s3_bucket, "t1/ws1/") >= {"t1/ws1/empty/"}
    assert not [k for k in keys(s3_bucket, "t1/ws1/") if k.startswith("t1/ws1/dir")]


def test_symlink_readlink(mnt, ws, s3_bucket):
    (ws / "target.txt").write_bytes(b"t")
    os.symlink("target.txt", ws / "link")
    assert os.readlink(ws / "link") == "target.txt"
    assert (ws / "link").read_bytes() == b"t"
    assert stat.S_ISLNK(os.lstat(ws / "link").st_mode)
    mnt.sync()
    assert body(s3_bucket, "t1/ws1/link") == b"target.txt"
    assert stat.S_ISLNK(int(meta(s3_bucket, "t1/ws1/link")["mode"]))


def test_chmod_utimens_and_user_xattrs(mnt, ws, s3_bucket):
    f = ws / "script.sh"
    f.write_bytes(b"#!/bin/sh\n")
    os.chmod(f, 0o750)
    os.utime(f, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.setxattr(f, "user.task", b"task-42")
    os.setxattr(f, "user.Tool", "grep ü".encode())
    os.setxattr(f, "user.gone", b"x")
    os.removexattr(f, "user.gone")
    st = f.stat()
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert os.getxattr(f, "user.task") == b"task-42"
    assert sorted(os.listxattr(f)) == ["user.Tool", "user.task"]
    with pytest.raises(OSError) as exc:
        os.getxattr(f, "user.gone")
    assert exc.value.errno == errno.ENODATA
    with pytest.raises(OSError) as exc:
        os.setxattr(f, "trusted.x", b"1")
    assert exc.value.errno in (errno.EOPNOTSUPP, errno.EPERM)
    mnt.sync()
    m = meta(s3_bucket, "t1/ws1/script.sh")
    assert int(m["mode"]) == stat.S_IFREG | 0o750
    assert m["mtime"] == "1600000000.123456789"
    xattrs = {k: base64.b64decode(v) for k, v in json.loads(urllib.parse.unquote(m["xattr"])).items()}
    assert xattrs == {"user.task": b"task-42", "user.Tool": "grep ü".encode()}


def test_remount_with_empty_cache_restores_bytes_mode_mtime(mount_factory, s3_bucket):
    first = mount_factory("one")
    ws = first.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    files = {}
    for i in range(20):
        data = os.urandom(i * 997)
        path = ws / f"d{i % 3}" / f"f{i}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o600 + i % 8)
        os.utime(path, ns=(1_500_000_000_000_000_000 + i, 1_500_000_000_000_000_000 + i))
        files[path.relative_to(first.path)] = (hashlib.sha256(data).hexdigest(), 0o600 + i % 8, 1_500_000_000_000_000_000 + i)
    os.symlink("d0/f0.bin", ws / "ln")
    first.umount()
    second = mount_factory("two")
    for rel, (digest, mode, mtime) in files.items():
        path = second.path / rel
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == mode
        assert st.st_mtime_ns == mtime
    assert os.readlink(second.path / "t1" / "ws1" / "ln") == "d0/f0.bin"


def test_object_put_by_boto3_appears(mnt, ws, s3_bucket):
    data = os.urandom(12345)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/from-boto/x.bin", Body=data)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/plain.txt", Body=b"plain")
    time.sleep(1.2)
    st = (ws / "from-boto" / "x.bin").stat()
    assert st.st_size == 12345
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert stat.S_IMODE((ws / "from-boto").stat().st_mode) == 0o755
    assert (ws / "from-boto" / "x.bin").read_bytes() == data
    assert sorted(os.listdir(ws)) == ["from-boto", "plain.txt"]


def test_a_folder_of_thousands_of_foreign_objects_lists_by_name_and_stats_exactly(mnt, ws, s3_bucket):
    """Past 1,000 entries of unknown attributes readdir gives names first, with the
    listing's guess (a file, 0644): a stat still shows what the object's metadata says,
    a symlink another tool wrote included (its kind fixed on lookup)."""
    def put(i: int) -> None:
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"t1/ws1/many/f{i:04d}", Body=b"x")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(1050)))
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/many/secret", Body=b"s",
                                Metadata={"mode": str(0o100600)})
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/many/link", Body=b"f0007",
                                Metadata={"mode": str(0o120777)})
    time.sleep(1.2)
    names = os.listdir(ws / "many")
    assert len(names) == 1052 and {"secret", "link", "f1049"} <= set(names)
    assert stat.S_IMODE((ws / "many" / "secret").stat().st_mode) == 0o600
    assert os.readlink(ws / "many" / "link") == "f0007"
    assert (ws / "many" / "link").read_bytes() == b"x"
    assert all(stat.S_ISREG(os.lstat(ws / "many" / name).st_mode) for name in names if name != "link")


def test_fsync_returns_only_when_object_is_in_bucket(mnt, ws, s3_bucket):
    fd = os.open(ws / "durable.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"must survive")
        os.fsync(fd)
        assert body(s3_bucket, "t1/ws1/durable.txt") == b"must survive"
    finally:
        os.close(fd)


def test_write_is_local_until_close_then_uploaded_after_delay(mount_factory, s3_bucket):
    m = mount_factory("slow", extra=["--write-back-delay", "3"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    with open(ws / "late.txt", "wb") as f:
        f.write(b"pending")
        f.flush()
        assert "t1/ws1/late.txt" not in keys(s3_bucket)
    assert (ws / "late.txt").read_bytes() == b"pending"
    assert "t1/ws1/late.txt" not in keys(s3_bucket)
    big = os.urandom(100 * 1024)
    (ws / "big.bin").write_bytes(big)
    records = {}
    for line in (m.cache_dir / "journal" / "log.jsonl").read_text().splitlines():
        doc = json.loads(line)
        if doc["op"] == "put":
            records[doc["key"]] = doc
    small, large = records["t1/ws1/late.txt"], records["t1/ws1/big.bin"]
    assert small["body"] == "inline" and base64.b64decode(small["inline"]) == b"pending", "a small file's record holds it"
    assert large["body"] == "staging" and large["size"] == len(big), "a large one's names its staging file"
    m.sync()
    assert body(s3_bucket, "t1/ws1/late.txt") == b"pending"
    assert body(s3_bucket, "t1/ws1/big.bin") == big


def test_uploads_wait_for_a_pause_in_a_burst_but_fsync_does_not(mount_factory, s3_bucket):
    m = mount_factory("burst", extra=["--write-back-delay", "0.2"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    m.sync()
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 0.6:  # a burst: each close due 0.2 s later, held back 0.5 s at most
        (ws / f"f{i}").write_bytes(b"burst %d" % i)
        i += 1
        time.sleep(0.005)
    mid_burst = [k for k in keys(s3_bucket) if k.startswith("t1/ws1/f")]
    with open(ws / "synced", "wb") as f:
        f.write(b"now")
        f.flush()
        os.fsync(f.fileno())
        assert body(s3_bucket, "t1/ws1/synced") == b"now"
    assert mid_burst == [], "files closed 0.4 s ago went up while the burst went on"
    deadline = time.monotonic() + 10
    while len([k for k in keys(s3_bucket) if k.startswith("t1/ws1/f")]) < i:
        assert time.monotonic() < deadline, "uploads did not follow the pause"
        time.sleep(0.1)
    assert body(s3_bucket, "t1/ws1/f0") == b"burst 0"


def test_umount_waits_for_pending_uploads(mount_factory, s3_bucket):
    m = mount_factory("um", extra=["--write-back-delay", "30"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    for i in range(30):
        (ws / f"f{i}").write_bytes(b"x" * i)
    m.umount()
    for i in range(30):
        assert body(s3_bucket, f"t1/ws1/f{i}") == b"x" * i


def test_closed_file_survives_kill_9(mount_factory, s3_bucket):
    m = mount_factory("crash", extra=["--write-back-delay", "60"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    (ws / "closed.txt").write_bytes(b"closed before the crash")
    m.kill()
    assert "t1/ws1/closed.txt" not in keys(s3_bucket)
    again = mount_factory("crash-again", cache=m.cache_dir)
    assert body(s3_bucket, "t1/ws1/closed.txt") == b"closed before the crash"
    assert (again.path / "t1" / "ws1" / "closed.txt").read_bytes() == b"closed before the crash"


def test_names_too_long_or_invalid_write_nothing(mnt, ws, s3_bucket):
    deep = ws
    for i in range(5):
        deep = deep / (f"{i}" * 200)
    deep.mkdir(parents=True)
    mnt.sync()
    before = keys(s3_bucket)
    refused = [
        (ws / ("x" * 256), errno.ENAMETOOLONG),
        (deep / ("5" * 200), errno.ENAMETOOLONG),
        (deep / ("y" * 30), errno.ENAMETOOLONG),
    ]
    for path, code in refused:
        with pytest.raises(OSError) as exc:
            path.write_bytes(b"1")
        assert exc.value.errno == code
    with pytest.raises(OSError) as exc:
        (deep / ("5" * 200)).mkdir()
    assert exc.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as exc:
        os.open(os.fsencode(ws) + b"/bad\xff", os.O_CREAT | os.O_WRONLY)
    assert exc.value.errno == errno.EINVAL
    mnt.sync()
    assert keys(s3_bucket) == before


def test_hard_link_refused_with_eperm(mnt, ws):
    (ws / "a").write_bytes(b"a")
    with pytest.raises(OSError) as exc:
        os.link(ws / "a", ws / "b")
    assert exc.value.errno == errno.EPERM


def test_rename_noreplace_honoured(mnt, ws):
    (ws / "a").write_bytes(b"a")
    (ws / "b").write_bytes(b"b")
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD, RENAME_NOREPLACE = -100, 1
    rc = libc.renameat2(AT_FDCWD, os.fsencode(ws / "a"), AT_FDCWD, os.fsencode(ws / "b"), RENAME_NOREPLACE)
    assert rc == -1 and ctypes.get_errno() == errno.EEXIST
    assert (ws / "b").read_bytes() == b"b"


def test_mount_refuses_unreachable_store(tmp_path, moto_server):
    done = cowfs("mount", "s3://no-such-bucket-here", str(tmp_path), "--endpoint-url", moto_server,
                 "--path-style", check=False)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "error" in done.stderr
    done = cowfs("mount", "s3://bucket", str(tmp_path), "--endpoint-url", "http://127.0.0.1:9", check=False)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1


def test_sigterm_flushes_and_unmounts(mount_factory, s3_bucket):
    m = mount_factory("term", extra=["--write-back-delay", "30"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    (ws / "before-term").write_bytes(b"flushed on SIGTERM")
    m.proc.terminate()
    assert m.proc.wait(timeout=60) == 0
    assert not is_mounted(m.path)
    assert body(s3_bucket, "t1/ws1/before-term") == b"flushed on SIGTERM"


def test_object_changed_by_another_client_is_seen_after_ttl(mount_factory, s3_bucket):
    m = mount_factory(extra=EVERY_TTL)
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    f = ws / "shared.txt"
    f.write_bytes(b"version one")
    m.sync()
    assert f.read_bytes() == b"version one"
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/shared.txt", Body=b"version two, longer")
    time.sleep(1.5)
    assert f.stat().st_size == len(b"version two, longer")
    assert f.read_bytes() == b"version two, longer"
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key="t1/ws1/shared.txt")
    time.sleep(1.5)
    assert not f.exists()


def test_new_name_from_another_client_shows_within_two_ttls_in_a_busy_folder(mount_factory, s3_bucket):
    ttl = 0.5
    m = mount_factory("busy", extra=["--metadata-ttl", str(ttl), *EVERY_TTL])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    for i in range(int(2 * ttl / 0.02)):
        (ws / f"f{i}.txt").write_text("x")
        time.sleep(0.02)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/remote.txt", Body=b"remote")
    put = time.monotonic()
    i = 0
    while not (ws / "remote.txt").exists():
        assert time.monotonic() - put < 2 * ttl + 0.5, "a name put by another client stayed hidden"
        (ws / f"g{i}.txt").write_text("x")
        i += 1
        time.sleep(0.02)
    assert (ws / "remote.txt").read_bytes() == b"remote"


def test_a_missing_object_does_not_freeze_listings(mount_factory, s3_bucket):
    """A 404 is an answer, not an outage: listings keep being refreshed after one."""
    ws = mount_factory(extra=EVERY_TTL).path / "t1" / "ws1"
    ws.mkdir(parents=True)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/big.bin", Body=os.urandom(300 * 1024))
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/small.txt", Body=b"small")
    time.sleep(1.2)
    assert (ws / "small.txt").stat().st_size == 5
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key="t1/ws1/big.bin")
    assert not (ws / "big.bin").exists()  # known from the listing; its HEAD finds it gone
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/new.txt", Body=b"new")
    time.sleep(1.2)
    assert sorted(os.listdir(ws)) == ["new.txt", "small.txt"]


def listings(m) -> int:
    """How many LISTs the daemon of mount ``m`` has made."""
    return json.loads((m.path / ".cowfs" / "status.json").read_text())["listings"]


def test_walking_a_deep_path_lists_only_the_folder_of_the_file(mount_factory, s3_bucket):
    m = mount_factory("deep", extra=["--metadata-ttl", "0.2"])
    deep = m.path / "t1" / "ws1" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f.txt").write_bytes(b"x")
    m.sync()

    before = listings(m)
    start = time.monotonic()
    while time.monotonic() - start < 2.0:
        assert (deep / "f.txt").stat().st_size == 1
        time.sleep(0.05)
    windows = (time.monotonic() - start) / 0.2 + 1
    made = listings(m) - before
    assert made <= windows + 1, f"{made} LISTs in {windows:.0f} TTL windows: ancestors were re-listed"


def test_a_file_validated_by_its_own_request_needs_no_listing_of_its_folder(mount_factory, s3_bucket):
    """Per-entry validation: the HEAD that fetches a listed file's metadata proves it
    current, so looking up the files of a folder listed a TTL ago costs no LIST; a
    file last validated a TTL ago still is revalidated (and found gone) by one."""
    big = os.urandom(300 * 1024)
    for i in range(6):
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"t1/ws1/dir/f{i}.bin", Body=big)
    m = mount_factory("entry", extra=["--metadata-ttl", "0.3", *EVERY_TTL])
    folder = m.path / "t1" / "ws1" / "dir"
    assert (folder / "f0.bin").stat().st_size == len(big)
    time.sleep(0.5)
    before = listings(m)
    for i in range(1, 6):
        assert (folder / f"f{i}.bin").stat().st_size == len(big)
    assert listings(m) == before, "files known from a stale listing were validated by re-listing their folder"
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key="t1/ws1/dir/f3.bin")
    time.sleep(0.5)
    assert not (folder / "f3.bin").exists()
    assert listings(m) > before


def test_a_file_this_mount_is_writing_is_never_revalidated_by_a_listing(mount_factory, s3_bucket):
    """A listing leaves an open or unsynced file as it is, so stat-ing or writing one
    (the kernel asks for ``security.capability`` before every write) costs no LIST,
    however stale its folder's listing."""
    m = mount_factory("owned", extra=["--metadata-ttl", "0.2", "--write-back-delay", "30"])
    folder = m.path / "t1" / "ws1" / "dir"
    folder.mkdir(parents=True)
    (folder / "closed.txt").write_bytes(b"closed, not uploaded yet")
    fd = os.open(folder / "open.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        time.sleep(0.5)
        before = listings(m)
        for i in range(4):
            os.write(fd, b"line %d\n" % i)
            assert os.fstat(fd).st_size == 7 * (i + 1)
            assert (folder / "closed.txt").stat().st_size == 24
            with pytest.raises(OSError) as caught:
                os.getxattr(fd, "security.capability")
            assert caught.value.errno == errno.ENODATA
            time.sleep(0.3)
        assert listings(m) == before, "a file this mount owns was revalidated by listing its folder"
    finally:
        os.close(fd)
    assert (folder / "open.txt").read_bytes() == b"".join(b"line %d\n" % i for i in range(4))


def test_the_kernels_security_capability_question_costs_no_listing(mount_factory, s3_bucket):
    """The kernel asks for ``security.capability`` before every write; cowfs stores only
    ``user.*`` names, so the answer needs no revalidation even of a file it does not
    own. (Through /proc/self/fd the kernel reaches the inode without a LOOKUP.)"""
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/dir/f.txt", Body=b"remote")
    m = mount_factory("capability", extra=["--metadata-ttl", "0.2", *EVERY_TTL])
    path = m.path / "t1" / "ws1" / "dir" / "f.txt"
    assert path.read_bytes() == b"remote"
    fd = os.open(path, os.O_PATH)
    try:
        time.sleep(0.5)
        before = listings(m)
        with pytest.raises(OSError) as caught:
            os.getxattr(f"/proc/self/fd/{fd}", "security.capability")
        assert caught.value.errno == errno.ENODATA
        assert listings(m) == before, "asking for security.capability re-listed the file's folder"
        with pytest.raises(OSError) as caught:
            os.getxattr(f"/proc/self/fd/{fd}", "user.missing")
        assert caught.value.errno == errno.ENODATA
        assert listings(m) == before + 1, "a user.* name is answered from revalidated metadata"
    finally:
        os.close(fd)


def test_walking_a_tree_lists_each_subtree_at_once_and_rm_r_empties_the_bucket(mount_factory, s3_bucket):
    expected = set()
    for top in range(4):
        for sub in range(6):
            for leaf in range(2):
                folder = f"top{top}/sub{sub}/leaf{leaf}"
                expected.update({f"top{top}", f"top{top}/sub{sub}", folder})
                for i in range(2):
                    key = f"t1/ws1/tree/{folder}/f{i}.txt"
                    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=key.encode())
                    expected.add(f"{folder}/f{i}.txt")
    m = mount_factory("walk")
    tree = m.path / "t1" / "ws1" / "tree"

    before = listings(m)
    found = set()
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), tree))
    assert found == expected
    made = listings(m) - before
    folders = sum(1 for rel in expected if "." not in rel)
    assert made <= 4 + 4, f"{made} LISTs to walk {folders} folders: subtrees were not listed at once"
    assert (tree / "top3" / "sub5" / "leaf1" / "f1.txt").read_bytes() == b"t1/ws1/tree/top3/sub5/leaf1/f1.txt"
    subprocess.run(["rm", "-r", str(tree)], check=True)
    assert not tree.exists()
    m.sync()
    assert keys(s3_bucket, "t1/ws1/tree/") == set()


def test_walking_a_known_tree_again_lists_it_in_one_go(mount_factory, s3_bucket):
    """A folder whose known subtree fits into one flat listing is listed flat from the
    top of the walk: one LIST, not one for the folder and one per subfolder."""
    for top in range(3):
        for sub in range(3):
            key = f"t1/ws1/tree/top{top}/sub{sub}/f.txt"
            s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=key.encode())
    m = mount_factory("rewalk", extra=["--metadata-ttl", "0.3", *EVERY_TTL])
    tree = m.path / "t1" / "ws1" / "tree"

    def walk() -> list[str]:
        return sorted(os.path.relpath(os.path.join(d, n), tree) for d, ds, fs in os.walk(tree) for n in ds + fs)

    first = walk()
    assert len(first) == 3 + 9 + 9
    time.sleep(0.5)
    before = listings(m)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/tree/top1/sub2/new.txt", Body=b"new")
    assert walk() == sorted(first + ["top1/sub2/new.txt"])
    assert listings(m) - before == 1

def test_large_file_goes_up_as_multipart_and_comes_back(mount_factory, s3_bucket):
    m = mount_factory("big")
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    data = os.urandom(20 * 1024 * 1024 + 123)
    (ws / "big.bin").write_bytes(data)
    m.umount()
    assert hashlib.sha256(body(s3_bucket, "t1/ws1/big.bin")).digest() == hashlib.sha256(data).digest()
    assert "-" in s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="t1/ws1/big.bin")["ETag"]
    again = mount_factory("big-again")
    assert hashlib.sha256((again.path / "t1" / "ws1" / "big.bin").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_sync_shows_progress_on_a_terminal(mount_factory, s3_bucket):
    m = mount_factory("tty", extra=["--write-back-delay", "30"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    for i in range(40):
        (ws / f"f{i}").write_text(str(i))
    leader, follower = os.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "cowfs", "sync", str(m.path)],
                              stdout=follower, stderr=follower, timeout=120)
        output = os.read(leader, 1 << 16)
    finally:
        os.close(leader)
        os.close(follower)
    assert done.returncode == 0
    assert b"syncing" in output
    assert {f"t1/ws1/f{i}" for i in range(40)} <= keys(s3_bucket, "t1/ws1/")


def test_rename_after_fsync_and_chmod_keeps_the_data(mount_factory, s3_bucket):
    """git's pack finalisation: write, fsync, rename, chmod, rename again."""
    m = mount_factory("pack")
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    data = os.urandom(5000)
    fd = os.open(ws / "tmp_idx", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    time.sleep(0.5)  # the kernel's RELEASE is asynchronous: let the uploaded staging file retire
    os.rename(ws / "tmp_idx", ws / ".tmp-pack.idx")
    os.chmod(ws / ".tmp-pack.idx", 0o444)
    os.rename(ws / ".tmp-pack.idx", ws / "pack.idx")
    assert (ws / "pack.idx").read_bytes() == data
    m.umount()
    assert body(s3_bucket, "t1/ws1/pack.idx") == data
    assert int(meta(s3_bucket, "t1/ws1/pack.idx")["mode"]) & 0o777 == 0o444
    assert {"t1/ws1/tmp_idx", "t1/ws1/.tmp-pack.idx"}.isdisjoint(keys(s3_bucket, "t1/ws1/"))


def test_a_file_that_replaces_a_stored_object_takes_it_along_when_removed(mount_factory, s3_bucket):
    """sqlite's journal and git's refs: a new file over a stored key, gone again before its upload."""
    m = mount_factory("shadow", extra=["--write-back-delay", "30"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    for name in ("journal", "ref", "target"):
        (ws / name).write_bytes(b"stored")
    m.sync()
    (ws / "journal").unlink()
    (ws / "journal").write_bytes(b"new, never uploaded")  # takes over the pending delete
    (ws / "journal").unlink()
    (ws / "tmp").write_bytes(b"new")
    os.replace(ws / "tmp", ws / "target")  # renamed over a stored object
    os.rename(ws / "target", ws / "moved")  # and away again before any upload
    (ws / "moved").unlink()
    m.sync()
    assert keys(s3_bucket, "t1/ws1/") == {"t1/ws1/.cowfs/workspace.json", "t1/ws1/ref"}
    (ws / "journal").write_bytes(b"again")  # a plain create: no conflict copy appears
    m.umount()
    assert keys(s3_bucket, "t1/ws1/") == {"t1/ws1/.cowfs/workspace.json", "t1/ws1/journal", "t1/ws1/ref"}
    assert body(s3_bucket, "t1/ws1/journal") == b"again"


def test_shared_writable_mmap_reaches_the_bucket(mnt, ws, s3_bucket):
    path = ws / "mapped.bin"
    path.write_bytes(b"\0" * 8192)
    # In a child process: mmap.flush() keeps the GIL, and this process serves S3 to the daemon.
    subprocess.run([sys.executable, "-c", """if True:
        import mmap, sys
        with open(sys.argv[1], "r+b") as f, mmap.mmap(f.fileno(), 8192) as m:
            m[100:105] = b"hello"
            m.flush()
            m[8000:8003] = b"end"
        """, str(path)], check=True, timeout=60)
    want = b"\0" * 100 + b"hello" + b"\0" * 7895 + b"end" + b"\0" * 189
    assert path.read_bytes() == want
    mnt.sync()
    assert body(s3_bucket, "t1/ws1/mapped.bin") == want


def test_nlink_counts_subfolders_and_drops_to_zero_once_removed(mnt, ws):
    d = ws / "d"
    (d / "a").mkdir(parents=True)
    (d / "b").mkdir()
    (d / "f").write_bytes(b"f")
    assert os.stat(d).st_nlink == 4 and os.stat(d / "a").st_nlink == 2 and os.stat(d / "f").st_nlink == 1
    (d / "b").rename(d / "a" / "b")
    assert os.stat(d).st_nlink == 3 and os.stat(d / "a").st_nlink == 3
    with open(d / "f", "rb") as f:
        os.unlink(d / "f")
        assert os.fstat(f.fileno()).st_nlink == 0
