"""``cowfs doctor``: what a mount needs from this machine and from the store, one check at a time."""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import CowfsError
from .output import duration
from .store import ObjectStore
from .store.local import LocalStore
from .store.s3 import S3Store

#: More than this between our clock and the server's and S3 refuses signed requests (it allows 15 min).
MAX_SKEW_SECONDS = 300.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


def fuse(device: Path = Path("/dev/fuse")) -> Check:
    if not device.exists():
        return Check("fuse", False, f"{device} is missing (load the fuse module: modprobe fuse)")
    if not os.access(device, os.R_OK | os.W_OK):
        return Check("fuse", False, f"{device} is not readable and writable by this user")
    helper = shutil.which("fusermount3")
    if helper is None:
        return Check("fuse", False, "fusermount3 is not installed (apt-get install fuse3)")
    return Check("fuse", True, f"{device} and {helper}")


def store_checks(store: ObjectStore, endpoint_given: bool, clock: Callable[[], float] = time.time) -> list[Check]:
    """Endpoint, credentials, the store answering (bucket), and how far our clock is from the server's."""
    if isinstance(store, LocalStore):
        try:
            store.check()
        except CowfsError as exc:
            return [Check("store", False, str(exc))]
        return [Check("store", True, f"{store.url} is on this machine: no endpoint, credentials or clock to check")]
    assert isinstance(store, S3Store)
    source = ("--endpoint-url or the config" if endpoint_given
              else "AWS_ENDPOINT_URL" if os.environ.get("AWS_ENDPOINT_URL") else "the AWS default")
    checks = [Check("endpoint", True, f"{store.endpoint} (from {source})")]
    method = store.credentials_method()
    checks.append(Check("credentials", True, f"found ({method})") if method else Check(
        "credentials", False, "none found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"))
    try:
        server = store.server_time()
    except CowfsError as exc:
        return checks + [Check("bucket", False, str(exc)), Check("clock", False, "not checked: no answer")]
    checks.append(Check("bucket", True, f"{store.url} answers"))
    if server is None:
        return checks + [Check("clock", False, "not checked: the server sent no Date header")]
    skew = clock() - server
    detail = f"{duration(abs(skew))} {'ahead of' if skew > 0 else 'behind'} the server"
    ok = abs(skew) <= MAX_SKEW_SECONDS
    return checks + [Check("clock", ok, detail if ok else f"{detail}: S3 refuses requests signed more than 15 min off")]


def cache_dir(path: Path) -> Check:
    """The cache dir (or the folder it would be made in) is ours, and only ours."""
    where = path
    while not where.exists():
        if where.parent == where:
            break
        where = where.parent
    try:
        st = where.stat()
    except OSError as exc:
        return Check("cache dir", False, f"{where}: {exc.strerror}")
    if not stat.S_ISDIR(st.st_mode):
        return Check("cache dir", False, f"{where} is not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        return Check("cache dir", False, f"{where} is not writable by this user")
    if where != path:
        return Check("cache dir", True, f"{path} will be made in {where}")
    if st.st_uid != os.geteuid():
        return Check("cache dir", False, f"{path} belongs to uid {st.st_uid}, not to this user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        return Check("cache dir", True, f"{path} is {stat.S_IMODE(st.st_mode):04o}: a mount makes it 0700")
    return Check("cache dir", True, f"{path} (0700)")
