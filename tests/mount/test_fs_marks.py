"""Change marks through real mounts: a second look at a workspace costs one LIST of its marks,
another mount's change still shows within a TTL of its mark, another tool's within --foreign-ttl."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.mount

FOLDERS = 12


def status(mount) -> dict:
    return json.loads((mount.path / ".cowfs" / "status.json").read_text())


def walk(root: Path) -> set[str]:
    return {os.path.relpath(os.path.join(top, name), root)
            for top, dirs, files in os.walk(root) for name in dirs + files}


def wait_for(check, seconds: float) -> float:
    """Seconds until ``check()`` holds; fails after ``seconds``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_second_walk_lists_no_folder_and_another_mounts_change_shows(mount_factory, s3_bucket):
    a = mount_factory("a")
    b = mount_factory("b", extra=["--foreign-ttl", "4"])
    src = a.path / "t1" / "ws1" / "src"
    for i in range(FOLDERS):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "f.txt").write_text(f"file {i}")
    a.sync()
    seen = b.path / "t1" / "ws1" / "src"
    tree = walk(seen)
    assert len(tree) == 2 * FOLDERS
    before = status(b)
    time.sleep(1.5)
    assert walk(seen) == tree
    after = status(b)
    assert after["listings"] == before["listings"], "a folder was listed again although no mark names it"
    assert after["markChecks"] > before["markChecks"]

    (src / "d3" / "new.txt").write_text("from a")
    (src / "d5" / "f.txt").write_text("file 5, rewritten by a")
    a.sync()
    wait_for(lambda: (seen / "d3" / "new.txt").exists(), 3)
    assert (seen / "d3" / "new.txt").read_text() == "from a"
    wait_for(lambda: (seen / "d5" / "f.txt").read_text() == "file 5, rewritten by a", 3)

    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="t1/ws1/src/d7/foreign.txt", Body=b"from boto3")
    wait_for(lambda: (seen / "d7" / "foreign.txt").exists(), 4 + 2)


def test_what_the_kernel_holds_shows_another_mounts_change_within_a_ttl_of_its_mark(mount_factory, s3_bucket):
    """The kernel keeps entries of a folder the marks vouch for up to half a minute: a mark
    naming the folder takes them back, or b would show the old file for that long."""
    a = mount_factory("a")
    b = mount_factory("b", extra=["--foreign-ttl", "120"])
    folder = a.path / "t1" / "ws1" / "src" / "d"
    folder.mkdir(parents=True)
    for name in ("same.txt", "gone.txt", "moved.txt"):
        (folder / name).write_text(f"{name} v1")
    a.sync()
    seen = b.path / "t1" / "ws1" / "src" / "d"
    assert sorted(os.listdir(seen)) == ["gone.txt", "moved.txt", "same.txt"]
    assert (seen / "same.txt").read_text() == "same.txt v1"
    time.sleep(1.5)
    assert (seen / "gone.txt").stat().st_size == len("gone.txt v1")
    (folder / "same.txt").write_text("same.txt v2")
    (folder / "gone.txt").unlink()
    (folder / "moved.txt").rename(folder / "renamed.txt")
    a.sync()
    wait_for(lambda: (seen / "same.txt").read_text() == "same.txt v2", 3)
    wait_for(lambda: not (seen / "gone.txt").exists() and not (seen / "moved.txt").exists(), 3)
    assert (seen / "renamed.txt").read_text() == "moved.txt v1"
    assert status(b)["entriesTakenBack"] >= 3
