"""FIFOs, UNIX sockets and device files through a real mount: stored as empty objects
whose metadata holds the type and device number, back after a remount with an empty
cache, carried by rsync, tar and export/import; and ``nodev``/``nosuid`` by default."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from mounting import require_root
from test_fs_posix import meta
from test_workspaces import cli

pytestmark = [pytest.mark.servers, pytest.mark.mount]

MTIME = 1_650_000_000_123_456_789
#: name -> (type bits, permission bits, device number)
SPECIALS = {
    "fifo": (stat.S_IFIFO, 0o640, 0),
    "sock": (stat.S_IFSOCK, 0o755, 0),
    "null": (stat.S_IFCHR, 0o620, os.makedev(1, 3)),
    "loop": (stat.S_IFBLK, 0o600, os.makedev(7, 300)),
}


def make_specials(folder: Path) -> None:
    """One special file of each type, with an owner and an exact mtime."""
    require_root("device files need CAP_MKNOD")
    folder.mkdir(parents=True, exist_ok=True)
    for name, (kind, mode, rdev) in SPECIALS.items():
        path = folder / name
        if kind == stat.S_IFSOCK:
            with socket.socket(socket.AF_UNIX) as server:
                server.bind(str(path))
        else:
            os.mknod(path, kind | 0o600, rdev)
        os.chmod(path, mode)
        os.chown(path, 1234, 5678)
        os.utime(path, ns=(MTIME, MTIME))


def specials(folder: Path) -> dict[str, tuple[int, int, int, int, int, int]]:
    """What a listing shows of the special files in ``folder``: type, mode, rdev, owner, size, mtime."""
    out = {}
    for name in sorted(os.listdir(folder)):
        st = os.lstat(folder / name)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            out[name] = (st.st_mode, st.st_rdev, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
    return out


def wanted(names=tuple(SPECIALS)) -> dict[str, tuple[int, int, int, int, int, int]]:
    return {name: (SPECIALS[name][0] | SPECIALS[name][1], SPECIALS[name][2], 1234, 5678, 0, MTIME) for name in names}


def assert_fifo_carries_bytes(path: Path) -> None:
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(path.read_bytes()))
    reader.start()
    path.write_bytes(b"through the pipe")
    reader.join(timeout=10)
    assert received == [b"through the pipe"]


def assert_socket_answers(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        path.unlink()
        server.bind(str(path))
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            conn, _ = server.accept()
            with conn:
                client.sendall(b"hello")
                assert conn.recv(5) == b"hello"


def test_each_special_file_type_survives_rename_chmod_and_a_remount_with_an_empty_cache(mount_factory, s3_bucket):
    first = mount_factory("one")
    ws = first.path / "t1" / "ws1"
    make_specials(ws / "made")
    assert specials(ws / "made") == wanted()
    assert_fifo_carries_bytes(ws / "made" / "fifo")
    assert_socket_answers(ws / "made" / "sock")
    os.chown(ws / "made" / "sock", 1234, 5678)
    os.utime(ws / "made" / "sock", ns=(MTIME, MTIME))
    first.sync()
    for name, (kind, mode, rdev) in SPECIALS.items():
        stored = meta(s3_bucket, f"t1/ws1/made/{name}")
        assert int(stored["mode"]) == kind | mode and int(stored.get("rdev", 0)) == rdev
        assert s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=f"t1/ws1/made/{name}")["ContentLength"] == 0
    (ws / "made").rename(ws / "moved")
    (ws / "moved" / "null").rename(ws / "moved" / "null2")
    os.chmod(ws / "moved" / "fifo", 0o604)
    first.umount()

    second = mount_factory("two")
    moved = second.path / "t1" / "ws1" / "moved"
    want = wanted()
    want["null2"] = want.pop("null")
    want["fifo"] = (stat.S_IFIFO | 0o604,) + want["fifo"][1:]
    assert specials(moved) == want
    assert_fifo_carries_bytes(moved / "fifo")
    assert_socket_answers(moved / "sock")
    for name in want:
        (moved / name).unlink()
    assert os.listdir(moved) == []


def test_mounts_are_nodev_and_nosuid_unless_asked(mount_factory):
    plain = mount_factory("plain")
    make_specials(plain.path / "t1" / "ws1")
    options = mount_options(plain.path)
    assert {"nodev", "nosuid"} <= options
    with pytest.raises(PermissionError):
        (plain.path / "t1" / "ws1" / "null").read_bytes()
    plain.umount()

    trusted = mount_factory("trusted", extra=["-o", "dev,suid"])
    assert not {"nodev", "nosuid"} & mount_options(trusted.path)
    assert (trusted.path / "t1" / "ws1" / "null").read_bytes() == b""  # it is /dev/null's number


def mount_options(path: Path) -> set[str]:
    with open("/proc/mounts") as f:
        line = next(line for line in f if line.split()[1] == os.path.realpath(path))
    return set(line.split()[3].split(","))


def test_rsync_and_tar_carry_special_files_in_and_out(mount_factory, tmp_path):
    src = tmp_path / "src"
    make_specials(src)
    m = mount_factory()
    ws = m.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    subprocess.run(["rsync", "-a", f"{src}/", ws / "rsynced"], check=True, capture_output=True)
    assert specials(ws / "rsynced") == wanted()
    subprocess.run(["tar", "--format=posix", "-C", src, "-cf", tmp_path / "specials.tar", "."], check=True,
                   capture_output=True)
    (ws / "untarred").mkdir()
    subprocess.run(["tar", "-C", ws / "untarred", "-xpf", tmp_path / "specials.tar"], check=True, capture_output=True)
    assert specials(ws / "untarred") == wanted(("fifo", "null", "loop"))  # tar leaves sockets out
    m.umount()

    again = mount_factory("again")
    ws = again.path / "t1" / "ws1"
    out = tmp_path / "out"
    subprocess.run(["rsync", "-a", f"{ws / 'rsynced'}/", out], check=True, capture_output=True)
    assert specials(out) == wanted()
    assert subprocess.run(["rsync", "-a", "-i", f"{src}/", ws / "rsynced"], check=True, capture_output=True,
                          text=True).stdout == ""
    subprocess.run(["tar", "-C", ws / "untarred", "-cf", tmp_path / "back.tar", "."], check=True, capture_output=True)
    with tarfile.open(tmp_path / "back.tar") as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    assert members["fifo"].isfifo() and members["null"].ischr() and members["loop"].isblk()
    assert (members["loop"].devmajor, members["loop"].devminor) == (7, 300)


def test_export_and_import_keep_fifos_and_devices_only_when_asked(mount_factory, s3_bucket, tmp_path):
    m = mount_factory()
    make_specials(m.path / "acme" / "src")
    m.umount()
    out = tmp_path / "src.tar.gz"
    lines = cli(s3_bucket, "export", "acme/src", str(out)).stdout.strip().splitlines()
    assert lines == ["skipped sock: socket (tar cannot hold one)",
                     f"exported 0 files, 0 folders, 0 symlinks, 3 special files (0 B) to {out}; 1 skipped"]
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["fifo"].isfifo() and members["fifo"].mode == 0o640 and members["fifo"].uid == 1234
    assert members["null"].ischr() and (members["null"].devmajor, members["null"].devminor) == (1, 3)
    assert members["loop"].isblk() and (members["loop"].devmajor, members["loop"].devminor) == (7, 300)

    lines = cli(s3_bucket, "import", "acme/safe", str(out)).stdout.strip().splitlines()
    assert sorted(lines[:-1]) == [f"skipped {name}: device file (import with --allow-devices to keep it)"
                                  for name in ("loop", "null")]
    assert lines[-1] == "imported 0 files, 0 folders, 0 symlinks, 1 special file (0 B) into acme/safe; 2 skipped"
    assert cli(s3_bucket, "import", "acme/all", str(out), "--allow-devices").stdout.strip() == (
        "imported 0 files, 0 folders, 0 symlinks, 3 special files (0 B) into acme/all")

    again = mount_factory("again")
    assert specials(again.path / "acme" / "safe") == wanted(("fifo",))
    assert specials(again.path / "acme" / "all") == wanted(("fifo", "null", "loop"))
