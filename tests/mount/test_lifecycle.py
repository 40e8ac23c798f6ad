"""Starting and stopping safely: mount points, cache directories, fsck, hang-ups and dead mounts."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from cowfs import cachedir
from cowfs.errors import CacheInUse, UsageError
from cowfs.mounts import parse_mountinfo
from cowfs.recovery import journal_store
from mounting import READY_TIMEOUT, Mount, cowfs, is_mounted, require_fuse, tmpfs

USAGE, FAILED = 2, 1


def body(bucket, key: str) -> bytes | None:
    try:
        return bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read()
    except bucket.client.exceptions.NoSuchKey:
        return None


def s3_args(bucket) -> list[str]:
    return ["--endpoint-url", bucket.endpoint, "--path-style"]


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def refused_mount(*args: str) -> subprocess.CompletedProcess[str]:
    """``cowfs mount -f ARGS``, which must exit at once; one that mounts is stopped and fails the test."""
    proc = subprocess.Popen([sys.executable, "-m", "cowfs", "mount", *args, "-f"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.communicate(timeout=60)
        raise AssertionError(f"cowfs mount {' '.join(args)} mounted instead of refusing") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- in process: mountinfo, the cache directory's owner and lock -----------------------------------


def test_mountinfo_lines_give_the_mount_point_type_and_source_unescaped():
    text = (
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:35 / /tmp/with\\040space rw,nosuid - tmpfs tmpfs rw,size=6144k\n"
        "41 40 0:36 / /tmp/with\\040space rw - fuse.cowfs s3://bucket/p rw,user_id=0\n"
        "truncated line\n"
    )
    entries = parse_mountinfo(text)
    assert [(e.target, e.fstype, e.source) for e in entries] == [
        ("/", "ext4", "/dev/sda1"),
        ("/tmp/with space", "tmpfs", "tmpfs"),
        ("/tmp/with space", "fuse.cowfs", "s3://bucket/p"),
    ]


def test_a_cache_directory_is_held_by_one_process_which_the_refusal_names(tmp_path):
    with cachedir.hold(tmp_path, Path("/mnt/agents")):
        with pytest.raises(CacheInUse, match=rf"cowfs daemon of /mnt/agents \(PID {os.getpid()}\)"):
            with cachedir.hold(tmp_path, None):
                pass
    with cachedir.hold(tmp_path, None):
        with pytest.raises(CacheInUse, match=rf"cowfs fsck \(PID {os.getpid()}\)"):
            with cachedir.hold(tmp_path, Path("/mnt/agents")):
                pass
    assert (tmp_path / cachedir.LOCK).stat().st_mode & 0o777 == 0o600


def test_a_cache_directory_belongs_to_one_store_and_tenant(tmp_path):
    owner = cachedir.Owner("s3://bucket/p", "acme", "http://127.0.0.1:9000", None, True)
    cachedir.record_owner(tmp_path, owner)
    assert cachedir.recorded_owner(tmp_path) == owner
    assert (tmp_path / cachedir.OWNER).stat().st_mode & 0o777 == 0o600
    for other in (cachedir.Owner("s3://bucket/q", "acme"), cachedir.Owner("s3://bucket/p", "other")):
        with pytest.raises(UsageError, match="belongs to s3://bucket/p"):
            cachedir.record_owner(tmp_path, other)
    cachedir.record_owner(tmp_path, cachedir.Owner("s3://bucket/p", "acme", "http://127.0.0.1:9001"))
    assert cachedir.recorded_owner(tmp_path).endpoint_url == "http://127.0.0.1:9001", "reached anew: recorded"


def test_fsck_takes_the_recorded_store_and_refuses_another_one(tmp_path, fake_aws_env):
    store_dir = tmp_path / "store"
    cachedir.record_owner(tmp_path, cachedir.Owner(store_dir.as_uri()))
    store, url = journal_store(tmp_path, None)
    assert store.url == url == store_dir.as_uri()
    assert journal_store(tmp_path, store_dir.as_uri())[0].url == store_dir.as_uri()
    with pytest.raises(UsageError, match=f"belongs to {store_dir.as_uri()}, not to s3://bucket"):
        journal_store(tmp_path, "s3://bucket")
    old = tmp_path / "old"
    old.mkdir()
    with pytest.raises(UsageError, match="does not record its store"):
        journal_store(old, None)
    assert journal_store(old, "s3://bucket")[0].url == "s3://bucket"


# -- fsck on real cache directories -------------------------------------------------------------


def with_pending(mount_factory, name: str, files: dict[str, str]) -> Mount:
    """A mount whose new ``t1/ws1`` files wait in its journal (a write-back delay of 60 s)."""
    m = mount_factory(name, extra=["--write-back-delay", "60"])
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    for file, text in files.items():
        (ws / file).write_text(text)
    return m


@pytest.mark.mount
def test_fsck_replays_into_the_recorded_store_and_refuses_another(mount_factory, s3_bucket, tmp_path):
    m = with_pending(mount_factory, "fsck", {"pending.txt": "only in the journal"})
    m.kill()
    s3_bucket.client.create_bucket(Bucket=f"{s3_bucket.name}-other")
    done = cowfs("fsck", f"s3://{s3_bucket.name}-other", "--cache-dir", str(m.cache_dir), *s3_args(s3_bucket),
                 check=False)
    assert done.returncode == USAGE
    assert f"belongs to s3://{s3_bucket.name}, not to s3://{s3_bucket.name}-other" in one_line(done)
    assert body(s3_bucket, "t1/ws1/pending.txt") is None
    env_store = tmp_path / "embedded"
    done = subprocess.run([sys.executable, "-m", "cowfs", "fsck", "--cache-dir", str(m.cache_dir)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, XDG_DATA_HOME=str(env_store)))
    assert done.returncode == 0, done.stderr
    assert "uploaded t1/ws1/pending.txt" in done.stdout
    assert body(s3_bucket, "t1/ws1/pending.txt") == b"only in the journal"
    assert not env_store.exists(), "nothing went to the embedded store"


@pytest.mark.mount
def test_fsck_of_a_cache_directory_without_a_record_needs_the_store(mount_factory, s3_bucket):
    m = with_pending(mount_factory, "old", {"pending.txt": "from an older cowfs"})
    m.kill()
    (m.cache_dir / cachedir.OWNER).unlink()
    done = cowfs("fsck", "--cache-dir", str(m.cache_dir), check=False)
    assert done.returncode == USAGE and "name the STORE" in one_line(done)
    done = cowfs("fsck", f"s3://{s3_bucket.name}", "--cache-dir", str(m.cache_dir), *s3_args(s3_bucket))
    assert "uploaded t1/ws1/pending.txt" in done.stdout
    assert body(s3_bucket, "t1/ws1/pending.txt") == b"from an older cowfs"


@pytest.mark.mount
def test_fsck_refuses_a_cache_directory_a_daemon_holds(mount_factory, s3_bucket):
    m = with_pending(mount_factory, "live", {"pending.txt": "the daemon's to upload"})
    done = cowfs("fsck", f"s3://{s3_bucket.name}", "--cache-dir", str(m.cache_dir), *s3_args(s3_bucket), check=False)
    assert done.returncode == FAILED
    line = one_line(done)
    assert str(m.path) in line and f"PID {m.proc.pid}" in line
    assert body(s3_bucket, "t1/ws1/pending.txt") is None, "fsck uploaded nothing under the daemon"
    assert (m.path / "t1" / "ws1" / "pending.txt").read_text() == "the daemon's to upload"
    cowfs("umount", str(m.path), "--timeout", "60")
    assert m.proc.wait(timeout=60) == 0
    assert body(s3_bucket, "t1/ws1/pending.txt") == b"the daemon's to upload"


@pytest.mark.mount
def test_a_second_mount_of_a_cache_directory_names_the_first_ones_mount_point_and_pid(mount_factory, s3_bucket,
                                                                                      tmp_path):
    m = mount_factory("first")
    (tmp_path / "second").mkdir()
    done = refused_mount(f"s3://{s3_bucket.name}", str(tmp_path / "second"), "--cache-dir", str(m.cache_dir),
                         *s3_args(s3_bucket))
    assert done.returncode == FAILED
    line = one_line(done)
    assert f"in use by the cowfs daemon of {m.path} (PID {m.proc.pid})" in line


@pytest.mark.mount
def test_a_cache_directory_of_another_store_is_refused(mount_factory, s3_bucket, tmp_path):
    m = mount_factory("first")
    m.umount()
    (tmp_path / "other").mkdir()
    done = refused_mount(f"file://{tmp_path}/store", str(tmp_path / "other"), "--cache-dir", str(m.cache_dir))
    assert done.returncode == USAGE
    assert f"belongs to s3://{s3_bucket.name}, not to file://{tmp_path}/store" in one_line(done)


# -- mount points ------------------------------------------------------------------------------


@pytest.mark.mount
def test_a_mount_over_a_mount_is_refused_naming_what_is_there(mount_factory, s3_bucket, tmp_path):
    m = mount_factory("first")
    done = refused_mount(f"s3://{s3_bucket.name}", str(m.path), "--cache-dir", str(tmp_path / "other-cache"),
                         *s3_args(s3_bucket))
    assert done.returncode == USAGE
    assert f"already a mount (fuse.cowfs from s3://{s3_bucket.name})" in one_line(done)
    assert json.loads(cowfs("status", "--json", str(m.path)).stdout)["pid"] == m.proc.pid, \
        "the first mount keeps its socket"
    with tmpfs(tmp_path / "tmpfs", "1m") as other:
        done = refused_mount(f"s3://{s3_bucket.name}", str(other), "--cache-dir", str(tmp_path / "other-cache"),
                             *s3_args(s3_bucket))
        assert done.returncode == USAGE and "already a mount (tmpfs from tmpfs)" in one_line(done)


@pytest.mark.mount
def test_a_non_empty_mount_point_is_refused_unless_allowed(mount_factory, s3_bucket, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt", "e.txt"):
        (full / name).write_text(name)
    done = refused_mount(f"s3://{s3_bucket.name}", str(full), "--cache-dir", str(tmp_path / "cache"),
                         *s3_args(s3_bucket))
    assert done.returncode == USAGE
    line = one_line(done)
    assert "not empty (a.txt, b.txt, c.txt and 2 more)" in line and "-o nonempty" in line
    m = mount_factory("full", extra=["-o", "nonempty"])
    assert not (m.path / "a.txt").exists(), "mounted over the files"
    m.umount()
    assert (full / "a.txt").read_text() == "a.txt"


@pytest.mark.mount
def test_umount_of_a_dead_mount_unmounts_it_and_reports_the_journal(mount_factory, s3_bucket):
    m = with_pending(mount_factory, "dead", {f"pending{i}.txt": f"pending {i}" for i in range(3)})
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(timeout=30)
    with pytest.raises(OSError):
        os.statvfs(m.path)
    assert is_mounted(m.path)
    done = cowfs("umount", str(m.path), check=False)
    assert done.returncode == 0, done.stderr
    assert not is_mounted(m.path)
    held = re.search(r"holds (\d+) change\(s\) not yet in the store", done.stdout)
    assert held and int(held.group(1)) >= 3 and str(m.cache_dir) in done.stdout, done.stdout
    again = mount_factory("dead", cache=m.cache_dir)
    again.sync()
    assert body(s3_bucket, "t1/ws1/pending2.txt") == b"pending 2"


# -- signals -----------------------------------------------------------------------------------


@pytest.mark.mount
def test_closing_the_terminal_of_a_foreground_mount_flushes_and_unmounts(s3_bucket, tmp_path):
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    master, slave = pty.openpty()

    def take_the_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "cowfs", "mount", f"s3://{s3_bucket.name}", str(mnt), "-f",
         "--cache-dir", str(tmp_path / "cache"), "--write-back-delay", "30", *s3_args(s3_bucket)],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=take_the_terminal,
    )
    os.close(slave)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not is_mounted(mnt):
            assert proc.poll() is None and time.monotonic() < deadline, "cowfs mount -f did not mount"
            time.sleep(0.02)
        ws = mnt / "t1" / "ws1"
        ws.mkdir(parents=True)
        (ws / "before-hangup").write_bytes(b"flushed on SIGHUP")
        os.close(master)
        master = -1
        assert proc.wait(timeout=60) == 0
        assert not is_mounted(mnt)
        assert body(s3_bucket, "t1/ws1/before-hangup") == b"flushed on SIGHUP"
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
