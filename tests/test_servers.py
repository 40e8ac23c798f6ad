"""Running under systemd: sd_notify readiness and a clean stop on SIGTERM."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mounting import is_mounted


def test_notify_ready_after_mount_answers_and_stopping_on_sigterm(s3_bucket, tmp_path):
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cowfs", "mount", f"s3://{s3_bucket.name}", str(mnt), "-f",
         "--cache-dir", str(tmp_path / "cache"), "--endpoint-url", s3_bucket.endpoint, "--path-style",
         "--write-back-delay", "60"],
        env=dict(os.environ, NOTIFY_SOCKET=str(notify_path)),
        stderr=subprocess.PIPE,
    )
    try:
        message = listener.recv(4096).decode()
        assert message == "READY=1"
        assert is_mounted(mnt)
        assert os.listdir(mnt) == []
        ws = mnt / "t1" / "ws1"
        ws.mkdir(parents=True)
        (ws / "before-stop.txt").write_text("flushed by systemctl stop")
        proc.terminate()
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(timeout=60) == 0
        assert not is_mounted(mnt)
        body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="t1/ws1/before-stop.txt")["Body"].read()
        assert body == b"flushed by systemctl stop"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
        listener.close()


def test_systemd_units_verify(tmp_path):
    """``systemd-analyze verify`` on every unit, the cowfs path pointed at this install."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
    cowfs_bin = Path(sys.prefix) / "bin" / "cowfs"
    units = []
    for unit in sorted((Path(__file__).parent.parent / "systemd").iterdir()):
        if unit.suffix not in (".service", ".timer", ".mount"):
            continue
        name = unit.name.replace("@.", "@test.")
        (tmp_path / name).write_text(unit.read_text().replace("/usr/local/bin/cowfs", str(cowfs_bin)))
        units.append(str(tmp_path / name))
    assert len(units) == 4
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stderr.splitlines() if tmp_path.name in line or "cowfs" in line], done.stderr
