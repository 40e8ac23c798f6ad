"""The trash of file managers: ``gio trash`` on a mount, restoring per the .trashinfo, emptying it from the store."""

from __future__ import annotations

import configparser
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import urllib.parse
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cowfs import trash
from cowfs.store.local import LocalStore
from mounting import cowfs, in_ci
from test_servers import as_user, tenants_config, two_users, unmount_and_remove  # noqa: F401 - a fixture

UID = os.getuid()


def gio_trash(*paths: Path, user: str | None = None, home: Path | None = None) -> None:
    """Move to Trash as a file manager does: GIO's own trash code (which needs a home folder)."""
    if shutil.which("gio") is None:
        (pytest.fail if in_ci() else pytest.skip)("gio is not installed (apt-get install libglib2.0-bin)")
    command = ["gio", "trash", *map(str, paths)]
    if user:
        done = as_user(user, "env", f"HOME={home}", *command)
    else:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def restore(mount: Path, folder: Path, name: str) -> Path:
    """Restore as the XDG trash spec has it: back to the info's Path (relative to the mount), info removed."""
    info = configparser.ConfigParser(interpolation=None)
    info.read_string((folder / "info" / f"{name}.trashinfo").read_text())
    original = mount / urllib.parse.unquote(info["Trash Info"]["Path"])
    os.rename(folder / "files" / name, original)
    (folder / "info" / f"{name}.trashinfo").unlink()
    return original


def keys(bucket) -> set[str]:
    pages = bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


@pytest.mark.mount
def test_gio_trash_and_restore_survive_a_remount_from_an_empty_cache(mount_factory, s3_bucket):
    first = mount_factory("first")
    ws = first.path / "t1" / "ws1"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "notes.txt").write_text("keep me")
    (ws / "sessions" / "s1").mkdir(parents=True)
    (ws / "sessions" / "s1" / "history.jsonl").write_text('{"role":"user"}\n')
    first.sync()
    assert json.loads((ws / ".cowfs" / "workspace.json").read_text())["files"] == 2

    gio_trash(ws / "sub" / "notes.txt", ws / "sessions" / "s1")
    folder = first.path / f".Trash-{UID}"
    st = os.stat(folder)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, UID)
    assert sorted(os.listdir(folder / "files")) == ["notes.txt", "s1"]
    assert not (ws / "sub" / "notes.txt").exists()
    first.sync()
    stored = keys(s3_bucket)
    assert {f".Trash-{UID}/files/notes.txt", f".Trash-{UID}/files/s1/history.jsonl",
            f".Trash-{UID}/info/notes.txt.trashinfo"} <= stored
    assert "t1/ws1/sub/notes.txt" not in stored and "t1/ws1/sessions/s1/history.jsonl" not in stored
    # the trash is no workspace's content
    assert json.loads((ws / ".cowfs" / "workspace.json").read_text())["files"] == 0
    assert json.loads((ws / ".cowfs" / "sessions.json").read_text())["sessions"] == []
    assert json.loads(cowfs("workspace", "list", "--json", *store_args(s3_bucket)).stdout)["workspaces"][0][
        "workspaceId"] == "ws1"
    first.umount()

    second = mount_factory("second")  # another cache dir: everything comes from the store
    folder = second.path / f".Trash-{UID}"
    assert (folder / "files" / "notes.txt").read_text() == "keep me"
    assert restore(second.path, folder, "notes.txt") == second.path / "t1" / "ws1" / "sub" / "notes.txt"
    assert restore(second.path, folder, "s1") == second.path / "t1" / "ws1" / "sessions" / "s1"
    ws = second.path / "t1" / "ws1"
    assert (ws / "sub" / "notes.txt").read_text() == "keep me"
    assert (ws / "sessions" / "s1" / "history.jsonl").read_text() == '{"role":"user"}\n'
    second.sync()
    stored = keys(s3_bucket)
    assert {"t1/ws1/sub/notes.txt", "t1/ws1/sessions/s1/history.jsonl"} <= stored
    assert not {k for k in stored if k.startswith(f".Trash-{UID}/files/") and k != f".Trash-{UID}/files/"}
    assert not {k for k in stored if k.startswith(f".Trash-{UID}/info/") and k != f".Trash-{UID}/info/"}


def store_args(bucket) -> list[str]:
    return ["--store", f"s3://{bucket.name}", "--endpoint-url", bucket.endpoint, "--path-style"]


@pytest.mark.mount
def test_a_trash_folder_is_its_users_alone_and_only_at_the_root(mnt):
    with pytest.raises(PermissionError):
        (mnt.path / ".Trash-4242").mkdir()  # another uid's
    (mnt.path / f".Trash-{UID}").mkdir(mode=0o755)
    assert stat.S_IMODE(os.stat(mnt.path / f".Trash-{UID}").st_mode) == 0o700
    with pytest.raises(OSError) as raised:
        (mnt.path / ".Trash-x").mkdir()
    assert raised.value.errno == errno.EINVAL
    (mnt.path / "t1" / "ws1").mkdir(parents=True)
    (mnt.path / "t1" / "ws1" / ".Trash-0").mkdir()  # inside a workspace: an ordinary folder
    with pytest.raises(OSError) as raised:
        (mnt.path / "t1" / f".Trash-{UID}").mkdir()  # not at the mount's root
    assert raised.value.errno == errno.EINVAL
    with pytest.raises(PermissionError):
        (mnt.path / f".Trash-{UID}").rename(mnt.path / "t1" / "ws1" / "x")


@pytest.mark.mount
def test_trash_of_a_tenant_mount_lies_in_the_tenant(mount_factory, s3_bucket):
    mount = mount_factory("tenant", extra=["--tenant", "t1"])
    (mount.path / "ws1").mkdir()
    (mount.path / "ws1" / "f.txt").write_text("x")
    gio_trash(mount.path / "ws1" / "f.txt")
    mount.sync()
    assert f"t1/.Trash-{UID}/files/f.txt" in keys(s3_bucket)
    info = (mount.path / f".Trash-{UID}" / "info" / "f.txt.trashinfo").read_text()
    assert "Path=ws1/f.txt" in info


@pytest.mark.mount
def test_each_user_of_a_multi_user_mount_trashes_into_a_folder_only_they_can_enter(s3_bucket, two_users):  # noqa: F811
    (a, uid_a, _), (b, uid_b, _) = two_users
    config, mnt, _ = tenants_config(s3_bucket, two_users)
    try:
        done = subprocess.run([sys.executable, "-m", "cowfs", "--config", str(config), "mount"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert sorted(os.listdir(mnt)) == sorted(["ta", "tb", f".Trash-{uid_a}", f".Trash-{uid_b}"])
        for user, uid, tenant in ((a, uid_a, "ta"), (b, uid_b, "tb")):
            home = config.parent / f"home-{user}"
            home.mkdir()
            os.chown(home, uid, -1)
            assert as_user(user, "mkdir", str(mnt / tenant / "ws")).returncode == 0
            assert as_user(user, "sh", "-c", f"echo secret-{tenant} > {mnt / tenant / 'ws' / 'f.txt'}").returncode == 0
            gio_trash(mnt / tenant / "ws" / "f.txt", user=user, home=home)
        cowfs("sync", str(mnt))
        mine = as_user(a, "cat", str(mnt / f".Trash-{uid_a}" / "files" / "f.txt"))
        assert mine.stdout == "secret-ta\n"
        for path in (mnt / f".Trash-{uid_a}", mnt / f".Trash-{uid_a}" / "files" / "f.txt",
                     mnt / f".Trash-{uid_a}" / "info" / "f.txt.trashinfo"):
            denied = as_user(b, "cat" if path.suffix else "ls", str(path))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, (path, denied)
        assert as_user(b, "mkdir", str(mnt / f".Trash-{uid_a}" / "x")).returncode != 0
    finally:
        unmount_and_remove(mnt, config.parent)


def _trashed(store: LocalStore, folder: str, name: str, path: str, when: datetime, body: bytes = b"x") -> None:
    info = f"[Trash Info]\nPath={urllib.parse.quote(path)}\nDeletionDate={when.astimezone().strftime('%Y-%m-%dT%H:%M:%S')}\n"
    store.put(f"{folder}info/{name}.trashinfo", info.encode(), {})
    store.put(f"{folder}files/{name}", body, {})


def test_trash_is_listed_and_emptied_by_age_from_the_store(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.check()
    now = datetime.now(timezone.utc)
    _trashed(store, ".Trash-1000/", "old.txt", "acme/ws/old.txt", now - timedelta(days=10), b"12345")
    _trashed(store, "acme/.Trash-1000/", "new.txt", "ws/new ü.txt", now + timedelta(days=20))
    store.put(".Trash/7/files/dir/inner.txt", b"abc", {})  # files without an info: trashed by a tool that died
    store.put("acme/ws/kept.txt", b"not trash", {})
    store.put("acme/ws/.Trash-1000/files/x", b"inside a workspace: not a trash", {})

    found = {(e.trash, e.name): e for e in trash.list_trash(store)}
    assert set(found) == {(".Trash-1000/", "old.txt"), ("acme/.Trash-1000/", "new.txt"), (".Trash/7/", "dir")}
    assert found[("acme/.Trash-1000/", "new.txt")].originalPath == "ws/new ü.txt"
    assert found[(".Trash-1000/", "old.txt")].to_json() == {
        "trash": ".Trash-1000", "name": "old.txt", "originalPath": "acme/ws/old.txt",
        "deletedAt": found[(".Trash-1000/", "old.txt")].to_json()["deletedAt"], "files": 1, "bytes": 5}

    later = now + timedelta(days=5)
    emptied = trash.select(store, older_than_days=1, now=later)
    assert sorted(e.name for e in emptied) == ["dir", "old.txt"]
    trash.delete(store, emptied)
    left = {o.key for o in store.list_all("", None).objects}
    assert left == {"acme/.Trash-1000/info/new.txt.trashinfo", "acme/.Trash-1000/files/new.txt",
                    "acme/ws/kept.txt", "acme/ws/.Trash-1000/files/x"}
    assert [e.name for e in trash.select(store)] == ["new.txt"]
    trash.delete(store, trash.select(store))
    assert {o.key for o in store.list_all("", None).objects} == {"acme/ws/kept.txt", "acme/ws/.Trash-1000/files/x"}


def test_parse_info_takes_what_it_can():
    assert trash.parse_info("[Trash Info]\nPath=a%20b/c%25d\nDeletionDate=garbage\n") == ("a b/c%d", None)
    assert trash.parse_info("not an info") == (None, None)
    path, when = trash.parse_info("[Trash Info]\nPath=/abs\nDeletionDate=2026-01-02T03:04:05\n")
    assert path == "/abs" and when == datetime(2026, 1, 2, 3, 4, 5).astimezone().astimezone(timezone.utc)


def test_purge_empties_trash_older_than_its_days_and_trash_empty_asks_for_nothing_else(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    store.check()
    old = datetime.now(timezone.utc) - timedelta(days=100)
    with monkeypatch.context() as m:  # trashed 100 days ago
        m.setattr("time.time", old.timestamp)
        _trashed(store, ".Trash-1000/", "old.txt", "acme/ws/old.txt", old)
    _trashed(store, ".Trash-1000/", "new.txt", "acme/ws/new.txt", datetime.now(timezone.utc))
    dry = cowfs("purge", "--inactive-days", "90", "--dry-run", "--store", store.url).stdout
    assert dry == "would delete trash .Trash-1000/old.txt (from acme/ws/old.txt, 1 file, 1 B)\n"
    done = cowfs("purge", "--inactive-days", "90", "--yes", "--store", store.url).stdout
    assert done == "deleted trash .Trash-1000/old.txt (from acme/ws/old.txt, 1 file, 1 B)\n"
    assert [e.name for e in trash.list_trash(store)] == ["new.txt"]
    assert cowfs("trash", "empty", "--older-than", "1", "--yes", "--store", store.url).stdout == (
        "nothing in the trash older than 1 day\n")
    assert cowfs("trash", "empty", "--yes", "--store", store.url).stdout.startswith("deleted .Trash-1000/new.txt")
    assert trash.list_trash(store) == []
