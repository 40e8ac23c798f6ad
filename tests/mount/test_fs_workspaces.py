"""Tenants, workspaces and sessions through a real mount, checked in the bucket."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time

import pytest
import trio

import cowfs.activity
from cowfs.activity import Activity
from cowfs.gateway import StoreCalls
from cowfs.store.local import LocalStore
from cowfs.summaries import summary_key
from mounting import cowfs as run_cli

#: What these tests check can differ between S3 servers: each runs on moto and on Ceph RGW.
pytestmark = pytest.mark.servers


def keys(bucket, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for page in bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=prefix):
        out.update(o["Key"] for o in page.get("Contents", []))
    return out


def record(bucket, tenant: str, ws: str) -> dict:
    key = f"{tenant}/{ws}/.cowfs/workspace.json"
    return json.loads(bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read())


def refused(fn, *args) -> int:
    with pytest.raises(OSError) as exc:
        fn(*args)
    return exc.value.errno


@pytest.mark.mount
def test_mkdir_creates_workspace_record_and_rm_r_deletes_everything(mnt, s3_bucket):
    ws = mnt.path / "acme" / "proj"
    ws.mkdir(parents=True)
    rec = record(s3_bucket, "acme", "proj")
    assert rec["workspaceId"] == "proj" and rec["tenantId"] == "acme" and rec["workspaceScope"] == "general"
    assert set(rec) >= {"workspaceId", "workspaceScope", "tenantId", "userId", "localPath", "createdAt", "lastActiveAt"}
    (ws / "sessions" / "s1" / "artifacts").mkdir(parents=True)
    (ws / "sessions" / "s1" / "history.jsonl").write_text('{"role":"user"}\n')
    (ws / "sessions" / "s1" / "artifacts" / "out.txt").write_text("out")
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="acme/proj/hidden//odd", Body=b"x")
    mnt.sync()
    time.sleep(1.2)
    assert sorted(os.listdir(ws)) == ["hidden", "sessions"]
    subprocess.run(["rm", "-r", str(ws)], check=True)
    assert not ws.exists()
    mnt.sync()
    assert keys(s3_bucket, "acme/proj/") == set()
    assert os.listdir(mnt.path / "acme") == []


@pytest.mark.mount
def test_generated_files_are_read_only_and_hidden_from_listings(mnt, s3_bucket):
    ws = mnt.path / "acme" / "proj"
    ws.mkdir(parents=True)
    (ws / "sessions" / "s1").mkdir(parents=True)
    (ws / "sessions" / "s1" / "history.jsonl").write_text("{}\n")
    (ws / "notes.md").write_text("12345")
    mnt.sync()
    assert ".cowfs" not in os.listdir(ws)
    assert sorted(os.listdir(ws / ".cowfs")) == ["sessions.json", "workspace.json"]
    info = json.loads((ws / ".cowfs" / "workspace.json").read_text())
    assert info["workspaceId"] == "proj" and info["files"] == 2 and info["bytes"] == 3 + 5
    sessions = json.loads((ws / ".cowfs" / "sessions.json").read_text())
    assert [s["sessionId"] for s in sessions["sessions"]] == ["s1"]
    for path in (ws / ".cowfs" / "workspace.json", ws / ".cowfs" / "sessions.json"):
        assert refused(path.write_text, "x") in (errno.EROFS, errno.EACCES)
        assert refused(os.unlink, path) in (errno.EROFS, errno.EACCES)
        assert refused(os.truncate, path, 0) in (errno.EROFS, errno.EACCES)
    assert refused((ws / ".cowfs" / "new").write_text, "x") in (errno.EROFS, errno.EACCES)
    status = json.loads((mnt.path / ".cowfs" / "status.json").read_text())
    assert status["pendingUploads"] == 0 and status["pid"] == mnt.proc.pid


@pytest.mark.mount
def test_invalid_names_and_files_outside_workspaces_refused(mnt, s3_bucket):
    (mnt.path / "acme" / "proj" / "sessions").mkdir(parents=True)
    mnt.sync()
    before = keys(s3_bucket)
    assert refused(os.mkdir, mnt.path / "bad name") == errno.EINVAL
    assert refused(os.mkdir, mnt.path / ".hidden") == errno.EINVAL
    assert refused(os.mkdir, mnt.path / "acme" / "-leading-dash") == errno.EINVAL
    assert refused(os.mkdir, mnt.path / "acme" / ("w" * 129)) == errno.EINVAL
    assert refused(os.mkdir, mnt.path / "acme" / "proj" / "sessions" / "bad id") == errno.EINVAL
    assert refused((mnt.path / "file.txt").write_text, "x") == errno.EPERM
    assert refused((mnt.path / "acme" / "file.txt").write_text, "x") == errno.EPERM
    assert refused(os.symlink, "x", mnt.path / "acme" / "link") == errno.EPERM
    sessions = mnt.path / "acme" / "proj" / "sessions"
    assert refused((sessions / "stray.txt").write_text, "x") == errno.EPERM
    assert refused(os.symlink, "s1", sessions / "latest") == errno.EPERM
    (mnt.path / "acme" / "proj" / "notes.txt").write_text("x")
    assert refused(os.rename, mnt.path / "acme" / "proj" / "notes.txt", sessions / "notes.txt") == errno.EPERM
    assert refused(os.rename, mnt.path / "acme" / "proj", mnt.path / "acme" / "other") == errno.EPERM
    mnt.sync()
    assert keys(s3_bucket) == before | {"acme/proj/notes.txt", summary_key(("acme", "proj"), "")}


@pytest.mark.mount
def test_tenant_mount_cannot_reach_other_tenants(mount_factory, s3_bucket, tmp_path):
    for tenant in ("t1", "t2"):
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"{tenant}/ws/secret.txt", Body=tenant.encode())
    m = mount_factory("tenant", extra=["--tenant", "t1"])
    assert os.listdir(m.path) == ["ws"]
    assert (m.path / "ws" / "secret.txt").read_text() == "t1"
    os.symlink("../../t2/ws/secret.txt", m.path / "ws" / "escape")
    os.symlink("/t2/ws/secret.txt", m.path / "ws" / "absolute")
    for attempt in (m.path / "ws" / "escape", m.path / "ws" / "absolute", m.path / ".." / "t2" / "ws" / "secret.txt"):
        assert refused(attempt.read_text) == errno.ENOENT
    (m.path / "ws" / "new.txt").write_text("mine")
    os.rename(m.path / "ws" / "new.txt", m.path / "ws" / "moved.txt")
    m.sync()
    assert {k for k in keys(s3_bucket) if not k.startswith("t1/")} == {"t2/ws/secret.txt"}
    assert s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="t2/ws/secret.txt")["Body"].read() == b"t2"


@pytest.mark.mount
def test_session_files_carry_derived_and_stored_xattrs(mount_factory, s3_bucket):
    m = mount_factory("x1")
    s = m.path / "acme" / "proj" / "sessions" / "sess_1"
    (s / "artifacts").mkdir(parents=True)
    (s / "diffs").mkdir()
    files = {
        s / "history.jsonl": b"session_history",
        s / "artifacts" / "pytest.txt": b"tool_output",
        s / "diffs" / "a.diff": b"file_diff",
        s / "scratch.txt": b"file",
        m.path / "acme" / "proj" / "README.md": b"file",
    }
    for path, kind in files.items():
        path.write_bytes(b"x")
        assert os.getxattr(path, "user.cowfs.type") == kind
    assert os.getxattr(s / "history.jsonl", "user.cowfs.session") == b"sess_1"
    assert refused(os.getxattr, m.path / "acme" / "proj" / "README.md", "user.cowfs.session") == errno.ENODATA
    assert refused(os.setxattr, s / "history.jsonl", "user.cowfs.type", b"file") == errno.EPERM
    os.setxattr(s / "artifacts" / "pytest.txt", "user.tool", b"RunCommand")
    os.setxattr(s / "artifacts" / "pytest.txt", "user.task", b"task_001")
    # Derived names are read by name only, so cp -a / rsync -X / tar --xattrs never try to set them.
    assert set(os.listxattr(s / "artifacts" / "pytest.txt")) == {"user.tool", "user.task"}
    m.umount()
    again = mount_factory("x2")
    path = again.path / "acme" / "proj" / "sessions" / "sess_1" / "artifacts" / "pytest.txt"
    assert os.getxattr(path, "user.tool") == b"RunCommand"
    assert os.getxattr(path, "user.task") == b"task_001"
    assert os.getxattr(path, "user.cowfs.type") == b"tool_output"


@pytest.mark.mount
def test_history_replaced_whole_or_appended(mnt, s3_bucket):
    s = mnt.path / "acme" / "proj" / "sessions" / "s1"
    s.mkdir(parents=True)
    history = s / "history.jsonl"
    history.write_text('{"n":1}\n')
    with open(history, "a") as f:
        f.write('{"n":2}\n')
    tmp = s / ".history.tmp"
    tmp.write_text('{"snapshot":true}\n')
    os.replace(tmp, history)
    with open(history, "a") as f:
        f.write('{"n":3}\n')
    mnt.sync()
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="acme/proj/sessions/s1/history.jsonl")["Body"].read()
    assert body == b'{"snapshot":true}\n{"n":3}\n'
    assert "acme/proj/sessions/s1/.history.tmp" not in keys(s3_bucket)


@pytest.mark.mount
def test_last_active_advances_on_write(mnt, s3_bucket):
    ws = mnt.path / "acme" / "proj"
    ws.mkdir(parents=True)
    created = record(s3_bucket, "acme", "proj")["lastActiveAt"]
    time.sleep(1.1)
    (ws / "f.txt").write_text("x")
    mnt.sync()
    assert record(s3_bucket, "acme", "proj")["lastActiveAt"] > created


def test_activity_writes_one_record_per_workspace_per_flush(tmp_path, monkeypatch):
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(cowfs.activity, "touch_workspace", lambda store, t, w, when: calls.append((t, w)))

    async def scenario() -> None:
        activity = Activity(LocalStore(tmp_path / "store"), StoreCalls(trio.CapacityLimiter(2)))
        for i in range(200):
            activity.mark(f"acme/proj/sessions/s1/line{i}")
        activity.mark("acme/other/f")
        activity.mark("acme/proj/.cowfs/workspace.json")
        activity.mark("acme/")
        await activity.flush()
        await activity.flush()

    trio.run(scenario)
    assert sorted(calls) == [("acme", "other"), ("acme", "proj")]


@pytest.mark.mount
def test_transcript_appended_line_by_line_goes_up_at_most_twice_per_write_back_window(mount_factory, s3_bucket):
    m = mount_factory("transcript", extra=["--write-back-delay", "0.5"])
    s = m.path / "acme" / "proj" / "sessions" / "s1"
    s.mkdir(parents=True)
    m.sync()
    before = json.loads((m.path / ".cowfs" / "status.json").read_text())["uploads"]
    lines = [json.dumps({"turn": i, "text": "x" * 200}) + "\n" for i in range(150)]
    start = time.monotonic()
    for line in lines:
        with open(s / "history.jsonl", "a") as f:
            f.write(line)
        time.sleep(0.02)
    m.sync()
    windows = (time.monotonic() - start) / 0.5 + 1
    uploads = json.loads((m.path / ".cowfs" / "status.json").read_text())["uploads"] - before
    assert 1 <= uploads <= 2 * windows, f"{uploads} uploads of a transcript appended {len(lines)} times"
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="acme/proj/sessions/s1/history.jsonl")["Body"].read()
    assert body.decode() == "".join(lines)


def generated(ws, name: str) -> dict:
    return json.loads((ws / ".cowfs" / name).read_text())


@pytest.mark.mount
def test_generated_files_show_a_session_right_after_its_first_write(mount_factory, s3_bucket):
    m = mount_factory("ryw", extra=["--write-back-delay", "60"])
    ws = m.path / "acme" / "proj"
    (ws / "sessions" / "old").mkdir(parents=True)
    (ws / "sessions" / "old" / "h.jsonl").write_text("12345")
    m.sync()
    before = generated(ws, "workspace.json")
    assert (before["files"], before["bytes"]) == (1, 5)
    started = time.time()
    (ws / "sessions" / "new").mkdir()
    (ws / "sessions" / "new" / "history.jsonl").write_text("x" * 100)
    (ws / "sessions" / "old" / "h.jsonl").write_text("1234567")
    (ws / "notes.md").write_text("abc")
    time.sleep(1.1)
    (ws / "sessions" / "new" / "out.txt").write_text("yy")
    assert not keys(s3_bucket, "acme/proj/sessions/new/")  # nothing uploaded yet
    shown = {s["sessionId"]: s for s in generated(ws, "sessions.json")["sessions"]}
    assert (shown["new"]["files"], shown["new"]["bytes"]) == (2, 102)
    assert (shown["old"]["files"], shown["old"]["bytes"]) == (1, 7)
    assert [s for s in shown] == ["new", "old"]
    created = shown["new"]["createdAt"]
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(started))) <= created < shown["new"]["lastActiveAt"]
    now = generated(ws, "workspace.json")
    assert (now["files"], now["bytes"]) == (4, 7 + 100 + 2 + 3)
    os.unlink(ws / "sessions" / "old" / "h.jsonl")
    shown = {s["sessionId"]: s for s in generated(ws, "sessions.json")["sessions"]}
    assert (shown["old"]["files"], shown["old"]["bytes"]) == (0, 0)  # its folder is left
    os.rmdir(ws / "sessions" / "old")
    assert "old" not in {s["sessionId"] for s in generated(ws, "sessions.json")["sessions"]}
    m.sync()
    listed = json.loads(run_cli("sessions", "list", "acme/proj", "--json", "--store", f"s3://{s3_bucket.name}",
                              "--endpoint-url", s3_bucket.endpoint, "--path-style").stdout)["sessions"]
    assert [(s["sessionId"], s["files"], s["bytes"], s["createdAt"]) for s in listed] == [("new", 2, 102, created)]


@pytest.mark.mount
def test_two_mounts_writing_sessions_of_one_workspace_give_exact_counts(mount_factory, s3_bucket):
    a, b = mount_factory("a"), mount_factory("b")
    (a.path / "acme" / "proj").mkdir(parents=True)
    store = ["--store", f"s3://{s3_bucket.name}", "--endpoint-url", s3_bucket.endpoint, "--path-style"]
    run_cli("sessions", "reindex", "acme/proj", *store)  # the index is complete: from now on writers keep it

    def write(m, who: str) -> None:
        for i in range(30):
            session = m.path / "acme" / "proj" / "sessions" / ("shared", f"only-{who}")[i % 2]
            session.mkdir(parents=True, exist_ok=True)
            (session / f"{who}-{i}.txt").write_text(who * (i + 1))
            time.sleep(0.01)

    writers = [threading.Thread(target=write, args=(m, who)) for m, who in ((a, "a"), (b, "b"))]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    a.sync()
    b.sync()
    listed = json.loads(run_cli("sessions", "list", "acme/proj", "--json", *store).stdout)["sessions"]
    odd, even = range(1, 31, 2), range(0, 30, 2)
    assert {s["sessionId"]: (s["files"], s["bytes"]) for s in listed} == {
        "shared": (30, 2 * sum(i + 1 for i in even)),
        "only-a": (15, sum(i + 1 for i in odd)),
        "only-b": (15, sum(i + 1 for i in odd)),
    }
    status = json.loads((a.path / ".cowfs" / "status.json").read_text())
    assert status["activityFailures"] == 0 and status["activityLastError"] is None
