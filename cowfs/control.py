"""The daemon's control socket: how ``cowfs sync/status/umount`` reach a mount.

One JSON request line in, one JSON reply line out. The socket's path follows
from the mount point alone, so the CLI needs nothing but the mount point.
It lives in a folder only its user can enter (``/run/cowfs`` for root,
``$XDG_RUNTIME_DIR/cowfs``, else ``/tmp/cowfs-UID`` made 0700 and checked
to be ours), and a client trusts only a socket of its own user: no one
else can answer ``sync`` or ``umount`` in the daemon's place.

Beside the socket the daemon leaves a record of its PID and cache
directory, kept when it dies: ``cowfs umount`` of a dead mount reads there
what the journal still holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from .errors import CowfsError, TimedOut
from .private import open_private, private_dir

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def runtime_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/cowfs")
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "cowfs" if base else Path(f"/tmp/cowfs-{os.geteuid()}")


def private_runtime_dir() -> Path:
    """The sockets' folder, created 0700 if missing, after checking it is ours and no symlink."""
    return private_dir(runtime_dir(), "control socket folder", follow_symlinks=False)


def socket_path(mountpoint: str | os.PathLike[str]) -> Path:
    return runtime_dir() / f"{_digest(mountpoint)}.sock"


def record_path(mountpoint: str | os.PathLike[str]) -> Path:
    return runtime_dir() / f"{_digest(mountpoint)}.json"


def _digest(mountpoint: str | os.PathLike[str]) -> str:
    return hashlib.sha1(os.path.realpath(mountpoint).encode()).hexdigest()[:20]


def write_record(mountpoint: str | os.PathLike[str], cache_dir: Path) -> None:
    """Leave this daemon's PID and cache directory beside its socket (in ``private_runtime_dir()``)."""
    with os.fdopen(open_private(record_path(mountpoint), os.O_WRONLY | os.O_TRUNC), "w") as f:
        json.dump({"pid": os.getpid(), "cacheDir": str(cache_dir)}, f)


def read_record(mountpoint: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the daemon of ``mountpoint`` left beside its socket, if anything (and if it is ours)."""
    path = record_path(mountpoint)
    try:
        _check_owner(path, mountpoint)
        return json.loads(path.read_text())
    except (CowfsError, OSError, ValueError):
        return None


def forget(mountpoint: str | os.PathLike[str]) -> None:
    """Remove what a daemon that is gone left for ``mountpoint``: its record and socket."""
    record_path(mountpoint).unlink(missing_ok=True)
    socket_path(mountpoint).unlink(missing_ok=True)


async def serve(path: Path, handler: Handler) -> None:
    """Answer requests on ``path`` (in ``private_runtime_dir()``) until cancelled; removes the socket after."""
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    try:
        await trio.serve_listeners(partial_handler(handler), [listener])
    finally:
        path.unlink(missing_ok=True)


def partial_handler(handler: Handler) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def on_connection(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while not data.endswith(b"\n"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            try:
                reply = await handler(json.loads(data))
            except CowfsError as exc:
                reply = {"ok": False, "error": str(exc)}
            except Exception as exc:
                log.exception("control request %r failed", data[:200])
                reply = {"ok": False, "error": f"internal error: {exc}"}
            try:
                await stream.send_all(json.dumps(reply).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.info("control client left before the reply (it timed out)")

    return on_connection


def request(mountpoint: str | os.PathLike[str], command: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Send one command to the daemon serving ``mountpoint``; blocks for the reply."""
    path = socket_path(mountpoint)
    _check_owner(path, mountpoint)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise CowfsError(f"{mountpoint} is not a cowfs mount served by a running daemon") from None
        data = b""
        try:
            sock.sendall(json.dumps(command).encode() + b"\n")
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise CowfsError("the daemon closed the control connection")
                data += chunk
        except socket.timeout:
            raise TimedOut(f"timed out after {timeout} s waiting for {command.get('cmd')}") from None
        except (BrokenPipeError, ConnectionResetError):
            raise CowfsError("the daemon closed the control connection") from None
    reply = json.loads(data)
    if not reply.get("ok", False):
        raise CowfsError(reply.get("error", "failed"))
    return reply


def _check_owner(path: Path, mountpoint: str | os.PathLike[str]) -> None:
    """Refuse a socket (or a folder holding it) that is not this user's: another user could have put it there."""
    for where in (path.parent, path):
        try:
            st = os.lstat(where)
        except FileNotFoundError:
            raise CowfsError(f"{mountpoint} is not a cowfs mount served by a running daemon") from None
        if stat.S_ISLNK(st.st_mode):
            raise CowfsError(f"{where} is a symlink: not trusting it")
        if st.st_uid != os.geteuid():
            raise CowfsError(f"{where} belongs to uid {st.st_uid}, not to uid {os.geteuid()}: not trusting it")
