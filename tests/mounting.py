"""Real cowfs mounts for tests: a daemon subprocess per mount, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

READY_TIMEOUT = 60.0


def cowfs(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the cowfs command line as a user would."""
    done = subprocess.run([sys.executable, "-m", "cowfs", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"cowfs {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(problem: str | None) -> None:
    """Skip for ``problem``, but fail under CI=true: CI must not pass by skipping."""
    if problem:
        if in_ci():
            pytest.fail(f"cannot run under CI: {problem}")
        pytest.skip(problem)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only; skipped otherwise, failed under CI=true)."""
    require_root("mounting a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
    assert not is_mounted(path)


def require_fuse() -> None:
    """Skip without FUSE, but fail under CI=true."""
    if not os.path.exists("/dev/fuse"):
        unavailable("/dev/fuse is missing")
    elif shutil.which("fusermount3") is None:
        unavailable("fusermount3 is not installed (apt-get install fuse3)")


def require_root(why: str) -> None:
    """Skip unless root (device files, other users' requests), but fail under CI=true."""
    unavailable(None if os.geteuid() == 0 else f"needs root: {why}")


def require_programs(*names: str) -> None:
    """Skip unless every program is on PATH (scripts/setup installs them), but fail under CI=true."""
    missing = [name for name in names if shutil.which(name) is None]
    unavailable(f"not installed: {', '.join(missing)} (scripts/setup installs them)" if missing else None)


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


class Mount:
    """One ``cowfs mount -f`` daemon; ``path`` is the mount point."""

    def __init__(self, store_url: str, path: Path, cache_dir: Path, extra: list[str]) -> None:
        self.store_url = store_url
        self.path = path
        self.cache_dir = cache_dir
        self.extra = extra
        self.log = cache_dir.parent / f"{cache_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Mount":
        self.path.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cowfs", "mount", self.store_url, str(self.path), "-f",
                 "--cache-dir", str(self.cache_dir), *self.extra],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while not is_mounted(self.path):
            if self.proc.poll() is not None:
                raise AssertionError(f"cowfs mount exited {self.proc.returncode}: {self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"cowfs mount not ready after {READY_TIMEOUT} s: {self.log_text()[-2000:]}")
            time.sleep(0.02)
        os.stat(self.path)
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def sync(self) -> None:
        cowfs("sync", str(self.path))

    def umount(self) -> None:
        """The user's way out: flush, unmount, daemon exits."""
        cowfs("umount", str(self.path))
        assert self.proc is not None
        assert self.proc.wait(timeout=60) == 0, self.log_text()[-2000:]
        assert not is_mounted(self.path)

    def kill(self) -> None:
        """kill -9 the daemon and drop the dead mount."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)

    def cleanup(self) -> None:
        """Leave nothing behind, whatever state the test left the mount in."""
        if self.proc is not None and self.proc.poll() is None and is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
