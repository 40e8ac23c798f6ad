"""A real S3 server for the tests: a single-node Ceph with its RADOS Gateway on 127.0.0.1.

One monitor, one OSD keeping its objects in memory (``memstore``), auth
``none``, pools of size 1 and radosgw's beast frontend: about 15 s to start.
The frontend sends without Nagle's delay (``tcp_nodelay``), as RGW is run in
production: with it, every answer with a body (a GET, a LIST) waited 40 ms
for the client's delayed acknowledgement of its headers, 44 ms instead of
1–2 ms, which no S3 service costs.
Every daemon is started here and stopped here, by its PID; the cluster lives
in a temporary folder removed at the end. The Debian packages ``radosgw
ceph-mon ceph-osd ceph-common`` provide the programs (``scripts/test``
installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

PROGRAMS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool", "ceph-authtool")
START_TIMEOUT = 120.0
#: Ceph 16's OSD sometimes sends its first command to the monitor before it has
#: the monitor map, and is refused ("wrong fsid") and exits: it is started again.
OSD_STARTS = 4
#: Bytes of object data the OSD's memory store takes: the suite's needs with room
#: to spare, and 200,000 objects of a few hundred bytes (about 50 MB) too.
MEMSTORE_BYTES = 4 * 2**30


class RgwUnavailable(Exception):
    """The programs are missing or the cluster did not come up."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CephRgw:
    """A throw-away Ceph cluster serving S3 at ``endpoint`` for the key ``access_key``/``secret_key``."""

    #: What the OSD's memory store may hold (``used_bytes`` says what it holds).
    memstore_bytes = MEMSTORE_BYTES

    def __init__(self, access_key: str, secret_key: str) -> None:
        missing = [p for p in PROGRAMS if shutil.which(p) is None]
        if missing:
            raise RgwUnavailable(f"not installed: {' '.join(missing)} (apt-get install radosgw ceph-mon ceph-osd ceph-common)")
        self.access_key = access_key
        self.secret_key = secret_key
        self.root = Path(tempfile.mkdtemp(prefix="cowfs-rgw-"))
        self.conf = self.root / "ceph.conf"
        self.mon_port = _free_port()
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.osd = ""
        self._pids: list[tuple[int, str]] = []

    # -- life cycle ---------------------------------------------------------

    def start(self) -> "CephRgw":
        try:
            self._write_conf()
            self._start_mon()
            self._start_osd()
            self._start_rgw()
            self._ceph("radosgw-admin", "user", "create", "--uid=cowfs-test", "--display-name=cowfs tests",
                       f"--access-key={self.access_key}", f"--secret={self.secret_key}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the daemons this object started, newest first, then remove the cluster."""
        for pid, program in reversed(self._pids):
            self._end(pid, program)
        self._pids.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def used_bytes(self) -> int:
        """What the OSD's memory store holds now (the bytes it counts against ``memstore_bytes``).

        Asked of the OSD's admin socket: ``ceph df`` needs a manager, which this cluster has not.
        """
        asok = self.root / "run" / f"{self.osd}.asok"
        return int(json.loads(self._ceph("ceph", "--admin-daemon", str(asok), "perf", "dump"))["osd"]["stat_bytes_used"])

    def log_tail(self, lines: int = 20) -> str:
        log = self.root / "log" / "rgw.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    # -- steps --------------------------------------------------------------

    def _write_conf(self) -> None:
        for sub in ("mon", "osd", "log", "run", "rgw"):
            (self.root / sub).mkdir()
        r = self.root
        self.conf.write_text(f"""[global]
fsid = {uuid.uuid4()}
mon host = v1:127.0.0.1:{self.mon_port}
mon initial members = a
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
log file = {r}/log/$name.log
admin socket = {r}/run/$name.asok
pid file = {r}/run/$name.pid
run dir = {r}/run
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
mon max pg per osd = 1000
ms bind ipv4 = true
ms bind ipv6 = false
[mon]
mon data = {r}/mon/$name
[osd]
osd data = {r}/osd/$name
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{self.port} tcp_nodelay=1
rgw data = {r}/rgw
log file = {r}/log/rgw.log
rgw thread pool size = 64
""")

    def _start_mon(self) -> None:
        keyring, monmap = self.root / "keyring", self.root / "monmap"
        self._ceph("ceph-authtool", "--create-keyring", str(keyring), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        fsid = next(line.split(" = ")[1] for line in self.conf.read_text().splitlines() if line.startswith("fsid"))
        self._ceph("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v1:127.0.0.1:{self.mon_port}]", str(monmap))
        self._ceph("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap), "--keyring", str(keyring))
        self._daemon("mon.a", "ceph-mon", "-i", "a")
        self._wait("the monitor", lambda: self._ok("ceph", "-s", "--connect-timeout", "5"))

    def _start_osd(self) -> None:
        osd_uuid = str(uuid.uuid4())
        osd_id = self._ceph("ceph", "osd", "new", osd_uuid).strip()
        self.osd = f"osd.{osd_id}"
        (self.root / "osd" / f"osd.{osd_id}").mkdir()
        self._ceph("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        for attempt in range(1, OSD_STARTS + 1):
            try:
                self._daemon(self.osd, "ceph-osd", "-i", osd_id)
                break
            except RgwUnavailable:
                if attempt == OSD_STARTS:
                    raise
        self._wait("the OSD", lambda: " 1 up" in self._ceph("ceph", "osd", "stat", check=False))

    def _start_rgw(self) -> None:
        self._daemon("client.rgw.a", "radosgw", "-n", "client.rgw.a")

        def answers() -> bool:
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False
            return True

        self._wait("radosgw", answers)

    # -- plumbing -----------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {**os.environ, "CEPH_CONF": str(self.conf)}

    def _ceph(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(args, capture_output=True, text=True, env=self._env(), timeout=60)
        if check and done.returncode != 0:
            raise RgwUnavailable(f"{' '.join(args[:3])} exited {done.returncode}: {done.stderr.strip()[-500:]}")
        return done.stdout

    def _ok(self, *args: str) -> bool:
        return subprocess.run(args, capture_output=True, env=self._env(), timeout=30).returncode == 0

    def _daemon(self, name: str, *args: str) -> None:
        """Start a daemon (it forks) and record its PID from its pid file."""
        self._ceph(*args)
        pid_file = self.root / "run" / f"{name}.pid"
        self._wait(f"{name}'s pid file", lambda: pid_file.exists() and pid_file.read_text().strip() != "")
        self._pids.append((int(pid_file.read_text().strip()), args[0]))

    def _wait(self, what: str, ready) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if time.monotonic() > deadline:
                raise RgwUnavailable(f"{what} did not come up within {START_TIMEOUT:.0f} s: {self.log_tail()}")
            time.sleep(0.2)

    @staticmethod
    def _end(pid: int, program: str) -> None:
        """SIGTERM, then SIGKILL after 10 s, to ``pid`` if it still runs ``program``."""
        try:
            if program.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, FileNotFoundError):
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
