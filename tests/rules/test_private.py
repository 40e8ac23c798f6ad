"""Owner-only folders: the cache directory and the control socket's, and clients that trust only their own socket."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import threading
import uuid
from pathlib import Path

import pytest

from cowfs import control
from cowfs.errors import CowfsError, UsageError
from cowfs.private import private_dir

#: A uid no process here runs as: a folder chowned to it belongs to "another user".
OTHER_UID = 3_900_000_000 + int(uuid.uuid4().hex[:6], 16)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_dir_creates_tightens_and_refuses(tmp_path):
    old = os.umask(0o022)
    try:
        made = private_dir(tmp_path / "a" / "cache", "cache directory")
    finally:
        os.umask(old)
    assert mode(made) == 0o700
    open_one = tmp_path / "open"
    open_one.mkdir(mode=0o777)
    open_one.chmod(0o777)
    assert mode(private_dir(open_one, "cache directory")) == 0o700

    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, OTHER_UID, -1)
    (tmp_path / "file").write_text("x")
    os.symlink(made, tmp_path / "link")
    for path, words in ((theirs, f"uid {OTHER_UID}"), (tmp_path / "file", "not a directory"),
                        (Path("/proc/cowfs-x"), "/proc/cowfs-x")):
        with pytest.raises(UsageError, match=words):
            private_dir(path, "cache directory")
    assert private_dir(tmp_path / "link", "cache directory") == tmp_path / "link"
    with pytest.raises(UsageError, match="symlink"):
        private_dir(tmp_path / "link", "control socket folder", follow_symlinks=False)


@pytest.fixture
def as_other_user(monkeypatch):
    """This process as a non-root user without $XDG_RUNTIME_DIR: its sockets go to /tmp/cowfs-UID."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: OTHER_UID)
    folder = Path(f"/tmp/cowfs-{OTHER_UID}")
    yield folder
    if folder.is_symlink():
        folder.unlink()
    else:
        shutil.rmtree(folder, ignore_errors=True)


def serve_once(path: Path) -> threading.Thread:
    """A daemon's control socket at ``path`` that answers one request."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(json.dumps({"ok": True, "pid": 1}).encode() + b"\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def test_a_socket_folder_made_by_someone_else_is_refused_by_daemon_and_client(as_other_user, tmp_path):
    folder = as_other_user
    assert control.runtime_dir() == folder
    folder.mkdir(mode=0o777)  # made first by root, i.e. not by this user
    folder.chmod(0o777)
    with pytest.raises(UsageError, match=f"belongs to uid 0, not to uid {OTHER_UID}"):
        control.private_runtime_dir()
    socket_path = control.socket_path(tmp_path)
    serve_once(socket_path)
    with pytest.raises(CowfsError, match="not trusting it"):
        control.request(tmp_path, {"cmd": "status"}, timeout=10)

    os.chown(folder, OTHER_UID, -1)
    assert control.private_runtime_dir() == folder and mode(folder) == 0o700
    with pytest.raises(CowfsError, match=f"{socket_path} belongs to uid 0"):
        control.request(tmp_path, {"cmd": "status"}, timeout=10)
    os.chown(socket_path, OTHER_UID, -1)
    assert control.request(tmp_path, {"cmd": "status"}, timeout=10)["pid"] == 1


def test_a_symlinked_socket_folder_is_refused(as_other_user, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    os.chown(target, OTHER_UID, -1)
    os.symlink(target, as_other_user)
    os.lchown(as_other_user, OTHER_UID, -1)
    with pytest.raises(UsageError, match="symlink"):
        control.private_runtime_dir()
    with pytest.raises(CowfsError, match="symlink"):
        control.request(tmp_path, {"cmd": "status"}, timeout=10)
