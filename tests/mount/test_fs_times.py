"""Times through a real mount: a folder's mtime and ctime follow its entries, a file's
ctime follows its changes, atime is set only by utimensat (noatime), and all of them
come back after a remount with an empty cache."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Callable

import pytest

from test_fs_posix import keys, meta

pytestmark = [pytest.mark.servers, pytest.mark.mount]

A_TIME = 1_400_000_000_111_111_111
M_TIME = 1_500_000_000_222_222_222


def times(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_mtime_ns, st.st_ctime_ns


def seconds(ns: int) -> str:
    """A time as ``x-amz-meta-mtime`` holds it."""
    return "{}.{:09d}".format(*divmod(ns, 10**9))


def uploads(mnt) -> int:
    return json.loads((mnt.path / ".cowfs" / "status.json").read_text())["uploads"]


def settled(mnt) -> None:
    """Until the write-back has nothing pending (no sync: that would store folder times)."""
    deadline = time.monotonic() + 30
    while json.loads((mnt.path / ".cowfs" / "status.json").read_text())["pendingUploads"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def bind(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))


#: Operation on a folder ``d`` (holding a file ``old``, a folder ``sub`` and a folder ``other``).
FOLDER_CHANGES: dict[str, Callable[[Path], None]] = {
    "create": lambda d: (d / "new").write_bytes(b"x"),
    "mkdir": lambda d: (d / "newdir").mkdir(),
    "rmdir": lambda d: (d / "sub").rmdir(),
    "unlink": lambda d: (d / "old").unlink(),
    "symlink": lambda d: os.symlink("old", d / "link"),
    "mkfifo": lambda d: os.mkfifo(d / "fifo"),
    "bind": lambda d: bind(d / "sock"),
    "rename": lambda d: (d / "old").rename(d / "renamed"),
    "rename across": lambda d: (d / "old").rename(d / "other" / "old"),
}


@pytest.mark.parametrize("change", FOLDER_CHANGES)
def test_a_folders_mtime_and_ctime_follow_each_change_of_its_entries(mnt, ws, change):
    d = ws / "d"
    (d / "sub").mkdir(parents=True)
    (d / "other").mkdir()
    (d / "old").write_bytes(b"old")
    os.utime(d, ns=(M_TIME, M_TIME))
    os.utime(d / "other", ns=(M_TIME, M_TIME))
    before = times(d)
    assert before[0] == M_TIME
    FOLDER_CHANGES[change](d)
    mtime, ctime = times(d)
    assert mtime > M_TIME and ctime > before[1] and mtime <= ctime
    if change == "rename across":
        assert times(d / "other")[0] > M_TIME


def test_a_files_ctime_follows_chmod_chown_rename_truncate_and_write(mnt, ws):
    f = ws / "f"
    f.write_bytes(b"data")
    os.utime(f, ns=(M_TIME, M_TIME))
    steps = {
        "chmod": lambda: os.chmod(f, 0o600),
        "chown": lambda: os.chown(f, os.getuid(), os.getgid()),
        "rename": lambda: os.rename(f, ws / "g") or os.rename(ws / "g", f),
        "truncate": lambda: os.truncate(f, 2),
        "write": lambda: f.write_bytes(b"new"),
    }
    for name, step in steps.items():
        mtime, ctime = times(f)
        step()
        after = times(f)
        assert after[1] > ctime, name
        if name in ("chmod", "chown", "rename"):
            assert after[0] == mtime == M_TIME, name
        else:
            assert after[0] > M_TIME, name


def test_folder_times_add_no_upload_per_change_and_reach_the_marker_at_sync(mount_factory, s3_bucket):
    first = mount_factory("one")
    d = first.path / "t1" / "ws1" / "d"
    d.mkdir(parents=True)
    first.sync()
    stored = meta(s3_bucket, "t1/ws1/d/")["mtime"]
    before = uploads(first)
    for i in range(5):
        (d / f"f{i}").write_bytes(b"x")
    settled(first)
    assert uploads(first) - before == 5  # the files alone
    assert meta(s3_bucket, "t1/ws1/d/")["mtime"] == stored
    shown = times(d)
    first.sync()
    assert uploads(first) - before == 6
    assert meta(s3_bucket, "t1/ws1/d/")["mtime"] == seconds(shown[0])
    first.umount()

    second = mount_factory("two")
    assert times(second.path / "t1" / "ws1" / "d") == shown


def test_atime_is_kept_when_set_never_moved_by_reads_and_survives_a_remount(mount_factory, s3_bucket):
    first = mount_factory("one")
    ws = first.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    f, plain = ws / "f", ws / "plain"
    f.write_bytes(b"read me")
    plain.write_bytes(b"never touched")
    os.utime(f, ns=(A_TIME, M_TIME))
    assert f.read_bytes() == b"read me" and plain.read_bytes() == b"never touched"
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (A_TIME, M_TIME)
    assert os.stat(plain).st_atime_ns == os.stat(plain).st_mtime_ns
    ctime = st.st_ctime_ns
    first.sync()
    stored = meta(s3_bucket, "t1/ws1/f")
    assert (stored["atime"], stored["mtime"]) == (seconds(A_TIME), seconds(M_TIME))
    assert "atime" not in meta(s3_bucket, "t1/ws1/plain")
    first.umount()

    second = mount_factory("two")
    again = os.stat(second.path / "t1" / "ws1" / "f")
    assert (again.st_atime_ns, again.st_mtime_ns, again.st_ctime_ns) == (A_TIME, M_TIME, ctime)


def test_ctime_of_a_renamed_file_and_folder_is_stored(mount_factory):
    first = mount_factory("one")
    ws = first.path / "t1" / "ws1"
    (ws / "d").mkdir(parents=True)
    (ws / "f").write_bytes(b"f")
    os.utime(ws / "d", ns=(M_TIME, M_TIME))
    os.utime(ws / "f", ns=(M_TIME, M_TIME))
    first.sync()
    (ws / "d").rename(ws / "e")
    (ws / "f").rename(ws / "g")
    shown = {name: times(ws / name) for name in ("e", "g")}
    assert all(mtime == M_TIME < ctime for mtime, ctime in shown.values())
    first.umount()

    second = mount_factory("two")
    assert {name: times(second.path / "t1" / "ws1" / name) for name in ("e", "g")} == shown


def test_a_folder_marker_removed_by_another_client_comes_back_with_the_times_not_a_conflict_copy(mnt, ws, s3_bucket):
    d = ws / "d"
    d.mkdir()
    mnt.sync()
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key="t1/ws1/d/")
    (d / "f").write_bytes(b"f")
    mnt.sync()
    assert keys(s3_bucket, "t1/ws1/d/") == {"t1/ws1/d/", "t1/ws1/d/f"}
    assert meta(s3_bucket, "t1/ws1/d/")["mtime"] == seconds(times(d)[0])
