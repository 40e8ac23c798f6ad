"""Running under systemd: sd_notify readiness and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from mounting import cowfs, is_mounted


@pytest.mark.mount
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
    for unit in sorted((Path(__file__).resolve().parents[2] / "systemd").iterdir()):
        if unit.suffix not in (".service", ".timer", ".mount"):
            continue
        name = unit.name.replace("@.", "@test.")
        (tmp_path / name).write_text(unit.read_text().replace("/usr/local/bin/cowfs", str(cowfs_bin)))
        units.append(str(tmp_path / name))
    assert len(units) == 4
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stderr.splitlines() if tmp_path.name in line or "cowfs" in line], done.stderr


def _wait_unmounted_and_stored(bucket, key: str, mnt: Path) -> bytes:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            return bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read()
        except bucket.client.exceptions.NoSuchKey:
            time.sleep(0.2)
    raise AssertionError(f"{key} never reached the bucket")


@pytest.mark.mount
def test_mount_t_fuse_cowfs_through_the_helper(s3_bucket, tmp_path):
    sbin = Path("/sbin")
    installed = [sbin / "mount.fuse.cowfs", sbin / "mount.cowfs"]
    if any(p.exists() for p in installed):
        pytest.fail("a mount.cowfs helper is already installed on this machine; refusing to overwrite it")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        cowfs("install-helper")
        assert all(os.access(p, os.X_OK) for p in installed)
        options = f"endpoint_url={s3_bucket.endpoint},path_style,cache_dir={tmp_path / 'cache'},write_back_delay=30"
        done = subprocess.run(["mount", "-t", "fuse.cowfs", f"s3://{s3_bucket.name}", str(mnt), "-o", options],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert is_mounted(mnt)
        (mnt / "t1" / "ws1").mkdir(parents=True)
        (mnt / "t1" / "ws1" / "via-helper.txt").write_text("mounted by mount(8)")
        assert subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0
        assert _wait_unmounted_and_stored(s3_bucket, "t1/ws1/via-helper.txt", mnt) == b"mounted by mount(8)"
        assert not is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
        for path in installed:
            path.unlink(missing_ok=True)


@pytest.fixture
def two_users():
    """Two unprivileged users, each in a group of its own; removed afterwards."""
    suffix = uuid.uuid4().hex[:6]
    names = [f"cowfs-a-{suffix}", f"cowfs-b-{suffix}"]
    try:
        for name in names:
            subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", name], check=True)
        yield [(name, pwd.getpwnam(name).pw_uid, pwd.getpwnam(name).pw_gid) for name in names]
    finally:
        for name in names:
            subprocess.run(["userdel", name], capture_output=True)
            subprocess.run(["groupdel", name], capture_output=True)


def as_user(user: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *command], capture_output=True, text=True, timeout=60)


def tenants_config(bucket, two_users) -> tuple[Path, Path, Path]:
    """A multi-user mount's config in a new folder every user can enter: (config, mount point, cache dir)."""
    (_, uid_a, gid_a), (_, uid_b, gid_b) = two_users
    top = Path(tempfile.mkdtemp(prefix="cowfs-mu-"))
    top.chmod(0o755)
    mnt = top / "mnt"
    mnt.mkdir()
    config = top / "cowfs.toml"
    config.write_text(
        f'store = "s3://{bucket.name}"\nmountpoint = "{mnt}"\nendpoint_url = "{bucket.endpoint}"\n'
        f'path_style = true\ncache_dir = "{top / "cache"}"\noptions = ["allow_other"]\n'
        f"[tenants.ta]\nuid = {uid_a}\ngid = {gid_a}\n[tenants.tb]\nuid = {uid_b}\ngid = {gid_b}\nmode = \"0770\"\n"
    )
    return config, mnt, top / "cache"


@pytest.mark.mount
def test_two_users_in_two_tenants_are_kept_apart(s3_bucket, two_users):
    (a, uid_a, gid_a), (b, uid_b, gid_b) = two_users
    config, mnt, _ = tenants_config(s3_bucket, two_users)
    top = config.parent
    proc = subprocess.Popen([sys.executable, "-m", "cowfs", "--config", str(config), "mount", "-f"],
                            stderr=open(top / "log", "w"))
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            assert proc.poll() is None and time.monotonic() < deadline, (top / "log").read_text()
            time.sleep(0.05)
        assert sorted(os.listdir(mnt)) == sorted(["ta", "tb", f".Trash-{uid_a}", f".Trash-{uid_b}"])
        assert (os.stat(mnt / "ta").st_uid, os.stat(mnt / "ta").st_gid) == (uid_a, gid_a)
        for user, own, other in ((a, "ta", "tb"), (b, "tb", "ta")):
            assert as_user(user, "mkdir", str(mnt / own / "ws")).returncode == 0
            assert as_user(user, "sh", "-c", f"echo mine > {mnt / own / 'ws' / 'f.txt'}").returncode == 0
            assert as_user(user, "cat", str(mnt / own / "ws" / "f.txt")).stdout == "mine\n"
            denied = as_user(user, "ls", str(mnt / other))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
            denied = as_user(user, "sh", "-c", f"echo x > {mnt / other / 'ws' / 'g.txt'}")
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert os.stat(mnt / "ta" / "ws" / "f.txt").st_gid == gid_a
        assert os.stat(mnt / "tb" / "ws" / "f.txt").st_gid == gid_b
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)])
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.mount
def test_another_user_reads_nothing_in_the_cache_of_a_multi_user_mount(s3_bucket, two_users):
    (a, _, _), (b, _, _) = two_users
    config, mnt, cache = tenants_config(s3_bucket, two_users)
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)  # a given cache dir others could enter: tightened
    secret = mnt / "ta" / "ws" / "secret.txt"
    try:
        done = subprocess.run([sys.executable, "-m", "cowfs", "--config", str(config), "mount"],
                              capture_output=True, text=True, timeout=60, umask=0o022)
        assert done.returncode == 0, done.stderr
        assert as_user(a, "mkdir", str(secret.parent)).returncode == 0
        wrote = as_user(a, "sh", "-c", f"yes tenant-a-secret | head -c 3000000 > {secret}")
        assert wrote.returncode == 0, wrote.stderr
        cowfs("sync", str(mnt))
        assert as_user(a, "head", "-c", "16", str(secret)).stdout == "tenant-a-secret\n"

        status = as_user(b, "cat", str(mnt / ".cowfs" / "status.json")).stdout
        assert "pendingUploads" in json.loads(status)
        assert not {"cacheDir", "mountpoint", "store", "lastError"} & set(json.loads(status))
        assert str(config.parent) not in status and s3_bucket.name not in status
        assert json.loads(cowfs("status", str(mnt), "--json").stdout)["cacheDir"] == str(cache)

        paths = [cache] + sorted(cache.rglob("*"))
        assert cache / "cowfs.log" in paths and cache / "cache" / "cache.db" in paths
        assert any(b"tenant-a-secret" in p.read_bytes() for p in paths if p.is_file()), "nothing cached to protect"
        modes = {p: stat.S_IMODE(os.lstat(p).st_mode) for p in paths}
        assert {p: m for p, m in modes.items() if m != (0o700 if p.is_dir() else 0o600)} == {}
        script = ('for p in "$@"; do if [ -d "$p" ]; then ls "$p" > /dev/null 2>&1 && echo "listed $p"; '
                  'else cat "$p" > /dev/null 2>&1 && echo "read $p"; fi; done; echo checked')
        leaked = as_user(b, "sh", "-c", script, "sh", *map(str, paths))
        assert leaked.stdout == "checked\n"
    finally:
        unmount_and_remove(mnt, config.parent)


def unmount_and_remove(mnt: Path, top: Path) -> None:
    """Leave nothing of a multi-user mount behind: the mount (flushed if it can be), then its folder."""
    if is_mounted(mnt):
        cowfs("umount", str(mnt), check=False)
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
    shutil.rmtree(top, ignore_errors=True)


def test_broken_config_is_refused_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, key in (('stroe = "x"', "stroe"), ("cache_size = true", "cache_size"),
                      ("[tenants.t]\nuid = 3999999999\ngid = 0", "uid")):
        bad.write_text(text)
        done = cowfs("--config", str(bad), "mount", str(tmp_path), check=False)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1 and key in done.stderr and str(bad) in done.stderr
