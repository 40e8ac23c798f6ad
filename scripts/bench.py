#!/usr/bin/env python3
"""Benchmark cowfs against a local directory, rclone mount and s3fs.

Every target with a store gets its own bucket on one moto S3 server started
here, so the peers pay the same (slow, local) S3 as cowfs. memfs
(``scripts/memfs.py``, pyfuse3 with nothing behind it) is the floor of the
stack cowfs is built on, and s3 (moto itself through boto3, no file system)
the floor of the rows that wait on the store, both measured in the same run.
Each workload checks what
it read back, so a fast wrong answer shows up as FAIL instead of a good time.
Run it through ``scripts/bench``, which installs the peers and the venv.
"""

from __future__ import annotations

import argparse
import datetime
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
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3

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
#: cowfs keeps files under TENANT/WORKSPACE; every target uses the same folder so keys match.
WORKDIR = "bench/ws"
ALL_TARGETS = ("local", "memfs", "s3", "cowfs", "rclone", "s3fs")
#: Targets with no bucket behind them.
STORELESS = ("local", "memfs")
PEERS = ("rclone", "s3fs")
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
    seed: int = 20240611


QUICK = {"reps": 1, "small_files": 200, "big_mib": 16, "bucket_files": 200, "tar_entries": 500, "tar_big_files": 4,
         "tar_links": 8}


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
    start = time.perf_counter()
    done = subprocess.run(argv, check=False, capture_output=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise Fail(f"{Path(argv[0]).name} exited {done.returncode}: {error_summary(done.stderr or done.stdout)}",
                   detail=(done.stderr or done.stdout).decode(errors="replace")[:8000])
    return elapsed


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

    def __init__(self, base: Path, env: dict[str, str], moto: Moto | None) -> None:
        self.base = base
        self.env = env
        self.moto = moto
        self.root = base / "mnt"
        self.bucket: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.instance = 0
        self.rss_kib: list[int] = []
        self.restarts: list[float] = []
        base.mkdir(parents=True, exist_ok=True)

    @property
    def workdir(self) -> Path:
        return self.root / WORKDIR

    def key(self, path: Path) -> str:
        """The object key of a path inside the mount (mount root = bucket root)."""
        return path.relative_to(self.root).as_posix()

    def start(self, fresh: bool = True) -> None:
        """Mount (a fresh cache when ``fresh``) and make the work folder."""
        if self.mounted and self.bucket is None and self.moto is not None:
            self.bucket = self.moto.create_bucket(f"bench-{self.name}")
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
        if self.proc is not None and self.proc.poll() is None:
            rss = peak_rss_kib(self.proc.pid)
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

    def workload(self, name: str) -> Callable[[Run, int], float] | None:
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

    def describe(self) -> str:
        return f"a folder under {self.base}"


class MemfsTarget(Target):
    """``scripts/memfs.py``: every request answered from memory, nothing stored."""

    name = "memfs"

    def __init__(self, base: Path, env: dict[str, str], moto: Moto | None) -> None:
        super().__init__(base, env, None)

    def mount(self) -> None:
        logfile = self.base / "memfs.log"
        self.proc = spawn([sys.executable, str(Path(__file__).with_name("memfs.py")), str(self.root)], logfile, self.env)
        wait_mounted(self.root, self.proc, logfile)

    def workload(self, name: str) -> Callable[[Run, int], float] | None:
        """A restart would lose every file: cold reads mean nothing here."""
        if name in ("small_read_cold", "seq_read_cold"):
            return None
        return super().workload(name)

    def describe(self) -> str:
        return ("scripts/memfs.py, a pyfuse3 file system that keeps everything in memory and does nothing else, "
                "with cowfs's mount options, timeouts and read-ahead: the floor for a file system on pyfuse3")


class S3Target(Target):
    """moto itself through boto3: what the store-bound rows would take with no file system in between."""

    name = "s3"
    mounted = False

    def start(self, fresh: bool = True) -> None:
        if self.bucket is None:
            assert self.moto is not None
            self.bucket = self.moto.create_bucket(f"bench-{self.name}")

    def mount(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    def cleanup(self) -> None:
        pass

    def workload(self, name: str) -> Callable[[Run, int], float] | None:
        return S3_WORKLOADS.get(name)

    def describe(self) -> str:
        return ("moto itself through boto3, no file system: small_read_cold GETs the small files one at a time "
                "(the issue's reference for a cold read), stat_walk_warm lists them in one flat listing "
                f"(what a walk past the metadata TTL costs the store), bucket_1000 PUTs the files from {UPLOAD_SLOTS} threads "
                "(cowfs's upload slots) and polls the bucket like the mounts")


class CowfsTarget(Target):
    """``cowfs mount -f`` as a subprocess, stopped with ``cowfs umount``."""

    name = "cowfs"

    def __init__(self, base: Path, env: dict[str, str], moto: Moto | None) -> None:
        super().__init__(base, env, moto)
        self.cache_sizes: list[tuple[int, int]] = []
        self.logs: list[Path] = []
        #: More ``cowfs mount`` options (--cowfs-options), to compare settings.
        self.options: list[str] = []

    @property
    def cache_dir(self) -> Path:
        return self.base / f"cache-{self.instance}"

    def cowfs(self, *args: str, timeout: float = 900) -> float:
        return run_cmd([sys.executable, "-m", "cowfs", *args], timeout=timeout)

    def mount(self) -> None:
        assert self.moto is not None and self.bucket is not None
        logfile = self.base / f"daemon-{self.instance}.log"
        if logfile not in self.logs:
            self.logs.append(logfile)
        self.proc = spawn(
            [sys.executable, "-m", "cowfs", "mount", f"s3://{self.bucket}", str(self.root), "-f",
             "--cache-dir", str(self.cache_dir), "--endpoint-url", self.moto.endpoint, "--path-style", *self.options],
            logfile, self.env)
        wait_mounted(self.root, self.proc, logfile)

    def sync(self) -> float:
        return self.cowfs("sync", str(self.root))

    def stop(self) -> None:
        self._record_rss()
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

    def __init__(self, base: Path, env: dict[str, str], moto: Moto | None) -> None:
        super().__init__(base, env, moto)
        self.rc_port = 0
        self.logfile = base / "rclone.log"

    def mount(self) -> None:
        assert self.moto is not None and self.bucket is not None
        self.rc_port = free_port()
        env = dict(self.env, RCLONE_CONFIG=str(self.base / "rclone.conf"),
                   RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
                   RCLONE_CONFIG_BENCH_ENDPOINT=self.moto.endpoint,
                   RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=self.env["AWS_ACCESS_KEY_ID"],
                   RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=self.env["AWS_SECRET_ACCESS_KEY"],
                   RCLONE_CONFIG_BENCH_REGION="us-east-1", RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true")
        self.proc = spawn(
            ["rclone", "mount", f"bench:{self.bucket}", str(self.root), "--vfs-cache-mode", "full",
             "--cache-dir", str(self.base / f"cache-{self.instance}"), "--rc", "--rc-no-auth",
             "--rc-addr", f"127.0.0.1:{self.rc_port}", "--log-file", str(self.logfile), "--log-level", "NOTICE"],
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
        assert self.moto is not None and self.bucket is not None
        passwd = self.base / "passwd"
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # s3fs refuses a readable one
        with os.fdopen(fd, "w") as out:
            out.write(f"{self.env['AWS_ACCESS_KEY_ID']}:{self.env['AWS_SECRET_ACCESS_KEY']}\n")
        options = f"url={self.moto.endpoint},use_path_request_style,passwd_file={passwd},endpoint=us-east-1"
        self.proc = spawn(["s3fs", self.bucket, str(self.root), "-f", "-o", options], self.base / "s3fs.log", self.env)
        wait_mounted(self.root, self.proc, self.base / "s3fs.log")

    def describe(self) -> str:
        return "s3fs -f, defaults (no use_cache; uploads on close)"


TARGET_TYPES: dict[str, type[Target]] = {
    "local": LocalTarget, "memfs": MemfsTarget, "s3": S3Target, "cowfs": CowfsTarget, "rclone": RcloneTarget, "s3fs": S3fsTarget,
}


def installed(name: str) -> bool:
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


@dataclass
class Tarball:
    """The source-like tarball, built once outside every mount."""

    path: Path
    manifest: dict[str, str]
    entries: int
    bytes: int


def build_tarball(tmp: Path, params: Params) -> Tarball:
    src = tmp / "tarsrc"
    build_source_tree(src / "src", params)
    path = tmp / "src.tar"
    run_cmd(["tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-cf", str(path), "-C", str(src), "src"])
    expected = manifest(src / "src")
    size = tree_size(src / "src")[0]
    log(f"tarball: {len(expected) + 1} entries, {size / MiB:.1f} MiB of content, {path.stat().st_size / MiB:.1f} MiB tar")
    return Tarball(path, expected, len(expected) + 1, size)


# -- workloads ----------------------------------------------------------------------


@dataclass
class Run:
    """One target's pass over the workloads, and what they left for each other."""

    target: Target
    params: Params
    s3: Any
    tarball: Callable[[], Tarball]
    small: dict[int, dict[str, str]] = field(default_factory=dict)
    big: dict[int, str] = field(default_factory=dict)
    trees: dict[int, Path] = field(default_factory=dict)
    extras: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    untar_failed: bool = False

    def fresh_dir(self, workload: str, rep: int) -> Path:
        path = self.target.workdir / workload / f"r{rep}"
        path.mkdir(parents=True)
        return path

    def extra(self, workload: str, name: str, value: Any) -> None:
        self.extras.setdefault(workload, {}).setdefault(name, []).append(value)


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


def wl_stat_walk_warm(run: Run, rep: int) -> float:
    base = small_base(run, rep)
    walk(base)
    start = time.perf_counter()
    found = walk(base)
    elapsed = time.perf_counter() - start
    expected = {rel: run.params.small_size for rel in run.small[rep]}
    expected.update({f"d{i:02d}": -1 for i in range(run.params.small_dirs)})
    if sha(json.dumps(sorted(found.items())).encode()) != sha(json.dumps(sorted(expected.items())).encode()):
        diff = sorted(set(found.items()) ^ set(expected.items()))
        raise Fail(f"walk differs in {len(diff)} entries (e.g. {diff[0][0]})")
    return elapsed


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
    try:
        elapsed = run_cmd(["rm", "-r", str(tree)])
    except Fail as exc:
        exc.detail += "\nleft in the tree after rm -r:\n" + "\n".join(leftovers(tree))
        raise
    if tree.exists():
        raise Fail("tree still there after rm -r", detail="\n".join(leftovers(tree)))
    if run.target.bucket is not None:
        run.extra("rm_r", "sync_after_s", run.target.sync())
        left = list_keys(run.s3, run.target.bucket, run.target.key(tree) + "/")
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
    """moto's own time for the small files read one at a time, as the issue measured it."""
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


WORKLOADS: dict[str, Callable[[Run, int], float]] = {
    "small_create": wl_small_create,
    "small_read_warm": wl_small_read_warm,
    "small_read_cold": wl_small_read_cold,
    "stat_walk_warm": wl_stat_walk_warm,
    "append_jsonl": wl_append_jsonl,
    "atomic_replace": wl_atomic_replace,
    "seq_write": wl_seq_write,
    "seq_read_warm": wl_seq_read_warm,
    "seq_read_cold": wl_seq_read_cold,
    "untar": wl_untar,
    "rm_r": wl_rm_r,
    "bucket_1000": wl_bucket_1000,
}
S3_WORKLOADS: dict[str, Callable[[Run, int], float]] = {
    "small_read_cold": s3_small_read_cold,
    "stat_walk_warm": s3_stat_walk_warm,
    "bucket_1000": s3_bucket_1000,
}


# -- running ------------------------------------------------------------------------


@dataclass
class Cell:
    """One workload on one target: every rep's seconds, or why there are none."""

    times: list[float] = field(default_factory=list)
    status: str = "ok"  # ok | fail | timeout | n/a
    error: str = ""
    detail: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times and self.status == "ok" else None


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
            seconds = workload(run, rep)
        except Timeout as exc:
            cell.status, cell.error = "timeout", short(exc)
        except (Fail, OSError, subprocess.SubprocessError, ValueError, RuntimeError) as exc:
            cell.status, cell.error, cell.detail = "fail", short(exc), getattr(exc, "detail", "")
        else:
            cell.times.append(seconds)
            log(f"{run.target.name} {name} rep {rep + 1}: {seconds:.3f} s")
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
    if cell.status == "fail":
        text = cell.error if len(cell.error) <= 90 else cell.error[:87] + "..."
        return "FAIL: " + text.replace("|", "\\|")
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
        row = [name, *[cell_text(results[t].get(name)) for t in targets],
               *[ratio(results[a].get(name), results[b].get(name)) for a, b in ratio_cols]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


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


def summary_notes(runs: dict[str, Run], params: Params, workloads: list[str], extra_lines: list[str]) -> list[str]:
    notes = [(f"Median of {params.reps} rep(s) in seconds; ratios: peer/cowfs > 1 means cowfs is faster, "
              "cowfs/s3 is cowfs's time over moto's own through boto3, "
              "cowfs/memfs is cowfs's cost over a pyfuse3 file system that does nothing, "
              "cowfs/local its cost over the local disk."),
             ("Before every repetition (untimed) each target settles: cowfs sync, rclone's upload queue empty "
             "(s3fs uploads synchronously), so a workload is not charged for the uploads of the one before; "
             "the settle times are in the JSON (settle_s).")]
    if "bucket_1000" in workloads:
        notes.append(f"bucket_1000 ({params.bucket_files} files × {params.small_size // KiB} KiB): from the first "
                     f"create until list_objects_v2 (polled every {POLL} s) shows them all — the same polling for "
                     "every target, no `cowfs sync`.")
    if {"small_read_cold", "seq_read_cold"} & set(workloads):
        notes.append("Cold reads: unmount (after every upload is done) and mount again with an empty cache; "
                     "local drops the page cache (best effort).")
    for name, run in runs.items():
        if run.target.describe():
            notes.append(f"{name}: {run.target.describe()}.")
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
                        help="comma-separated subset of local,memfs,s3,cowfs,rclone,s3fs (default: all that are installed)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset, run in the usual order")
    parser.add_argument("--reps", type=int, help="repetitions per workload (default 3, --quick 1)")
    parser.add_argument("--big-mib", type=int, help="size of the sequential file in MiB (default 128, --quick 16)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 rep, 200 small files, 16 MiB, small tarball")
    parser.add_argument("--bucket-timeout", type=float, help="cap on the bucket_1000 wait, seconds (default 300)")
    parser.add_argument("--cowfs-options", default="",
                        help='more options for cowfs mount, e.g. "--metadata-ttl 300" (default: none)')
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
    overrides = {k: v for k, v in (("reps", args.reps), ("big_mib", args.big_mib),
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
    return found


class Interrupted(BaseException):
    """SIGINT/SIGTERM: stop at once, but still unmount and stop moto."""


def on_signal(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def cleanup(runs: dict[str, Run], moto: Moto | None) -> None:
    """Unmount every target and stop moto, ignoring further signals until done."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for run in reversed(list(runs.values())):
        try:
            run.target.cleanup()
        except Exception as exc:  # keep going: the others must be unmounted too
            log(f"{run.target.name}: cleanup: {short(exc)}")
    if moto is not None:
        moto.stop()


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
    moto: Moto | None = None
    tarball: list[Tarball] = []
    interrupted = ""

    def get_tarball() -> Tarball:
        if not tarball:
            tarball.append(build_tarball(tmp, params))
        return tarball[0]

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if any(t not in STORELESS for t in targets):
            moto = Moto(tmp / "moto.log", env)
            moto.start()
        if {"untar", "rm_r"} & set(args.workloads):
            get_tarball()
        for name in targets:
            target = TARGET_TYPES[name](tmp / name, env, moto)
            if isinstance(target, CowfsTarget):
                target.options = shlex.split(args.cowfs_options)
            runs[name] = Run(target, params, moto.client if moto else None, get_tarball)
            log(f"== {name}")
            run_target(runs[name], args.workloads, results[name])
    except Interrupted as exc:
        interrupted = f"interrupted by {exc}"
        log(f"{interrupted}: cleaning up")
    except Exception as exc:  # a bug here must still unmount everything and report what ran
        traceback.print_exc()
        interrupted = f"an error in the benchmark ({short(exc)})"
    finally:
        cleanup(runs, moto)
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
        "tarball": {"entries": tarball[0].entries, "bytes": tarball[0].bytes} if tarball else None,
        "results": {t: {w: {"times": c.times, "median": c.median, "status": c.status, "error": c.error,
                            "detail": c.detail}
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
