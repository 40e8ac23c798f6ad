"""Bad input on the command line, in the configuration file and to the mount helper: one line, the right exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cowfs.store.local import LocalStore
from cowfs.workspaces import create_workspace

USAGE, FAILED = 2, 1
HELPER = str(Path(sys.prefix) / "bin" / "mount.cowfs")

#: (command line, exit code, words the one stderr line must hold); {tmp} is a scratch folder
#: holding ``mnt/``, ``file``, ``store/`` (an empty embedded store) and the config files below.
CASES = [
    (["purge", "--inactive-days", "nan"], USAGE, "--inactive-days"),
    (["purge", "--inactive-days", "inf"], USAGE, "--inactive-days"),
    (["purge", "--inactive-days", "-1"], USAGE, ">= 1"),
    (["purge", "--inactive-days", "0"], USAGE, ">= 1"),
    (["purge", "--inactive-days", "0.5"], USAGE, ">= 1"),
    (["workspace", "list", "--log-level", "loud"], USAGE, "--log-level"),
    (["workspace", "list", "--log-file", "{tmp}/file/x.log"], USAGE, "log file"),
    (["trash", "empty", "--older-than", "0"], USAGE, ">= 1"),
    (["mount", "{tmp}/missing"], USAGE, "does not exist"),
    (["mount", "{tmp}/mnt", "--tenant", "../x"], USAGE, "tenant"),
    (["mount", "{tmp}/mnt", "--tenant", "a/b"], USAGE, "tenant"),
    (["mount", "{tmp}/mnt", "--tenant", ".cowfs"], USAGE, "tenant"),
    (["mount", "{tmp}/mnt", "--tenant", ".."], USAGE, "tenant"),
    (["mount", "{tmp}/mnt", "--metadata-ttl", "nan"], USAGE, "--metadata-ttl"),
    (["mount", "{tmp}/mnt", "--metadata-ttl", "-1"], USAGE, "--metadata-ttl"),
    (["mount", "{tmp}/mnt", "--write-back-delay", "-1"], USAGE, "--write-back-delay"),
    (["mount", "{tmp}/mnt", "--store-timeout", "0"], USAGE, "--store-timeout"),
    (["mount", "{tmp}/mnt", "--store-timeout", "inf"], USAGE, "--store-timeout"),
    (["mount", "{tmp}/mnt", "--cache-size", "1.5"], USAGE, "whole number of bytes"),
    (["mount", "{tmp}/mnt", "--cache-size", "-5"], USAGE, "--cache-size"),
    (["mount", "{tmp}/mnt", "--endpoint-url", "notaurl"], USAGE, "--endpoint-url"),
    (["mount", "file://{tmp}/store", "{tmp}/mnt", "--cache-dir", "{tmp}/file"], USAGE, "not a directory"),
    (["mount", "file://{tmp}/store", "{tmp}/mnt", "--cache-dir", "/proc/x"], USAGE, "/proc/x"),
    (["workspace", "list", "--endpoint-url", "notaurl"], USAGE, "--endpoint-url"),
    (["workspace", "list", "--endpoint-url", "http://host:99999"], USAGE, "--endpoint-url"),
    (["workspace", "list", "--region", "bad region"], USAGE, "--region"),
    (["workspace", "list", "--tenant", "../x"], USAGE, "tenant"),
    (["workspace", "create", "--tenant", "a/b", "--user", "u"], USAGE, "tenant"),
    (["workspace", "create", "--tenant", "..", "--user", "u"], USAGE, "tenant"),
    (["workspace", "create", "--tenant", "acme", "--user", ""], USAGE, "--user"),
    (["workspace", "show", "acme"], USAGE, "TENANT/WORKSPACE"),
    (["workspace", "show", "../x"], USAGE, "tenant"),
    (["workspace", "delete", "a/b/c"], USAGE, "TENANT/WORKSPACE"),
    (["sessions", "list", "a/b", "--next-token", ""], USAGE, "--next-token"),
    (["sessions", "list", "a/b", "--limit", "0"], USAGE, "--limit"),
    (["sessions", "list", "a/b", "--limit", "101"], USAGE, "--limit"),
    (["sessions", "list", "a/b", "--limit", "ten"], USAGE, "--limit"),
    (["export", "../w", "{tmp}/out.tar.gz"], USAGE, "tenant"),
    (["export", "a/w/sessions/bad id", "{tmp}/out.tar.gz"], USAGE, "session"),
    (["import", "a/w", "{tmp}/file", "--max-members", "0"], USAGE, "--max-members"),
    (["import", "a/w", "{tmp}/file", "--max-bytes", "1.5"], USAGE, "--max-bytes"),
    (["sync", "{tmp}/mnt", "--timeout", "nan"], USAGE, "--timeout"),
    (["umount", "{tmp}/mnt", "--timeout", "-1"], USAGE, "--timeout"),
    (["--config", "{tmp}", "mount", "{tmp}/mnt"], USAGE, "Is a directory"),
    (["--config", "{tmp}/missing.toml", "mount", "{tmp}/mnt"], USAGE, "missing.toml"),
    (["--config", "{tmp}/latin1.toml", "mount", "{tmp}/mnt"], USAGE, "UTF-8"),
    (["--config", "{tmp}/mode.toml", "mount", "{tmp}/mnt"], USAGE, "'mode'"),
    (["--config", "{tmp}/size.toml", "mount", "{tmp}/mnt"], USAGE, "'cache_size'"),
    (["--config", "{tmp}/ttl.toml", "mount", "{tmp}/mnt"], USAGE, "'metadata_ttl'"),
    (["--config", "{tmp}/timeout.toml", "mount", "{tmp}/mnt"], USAGE, "'store_timeout'"),
    (["--config", "{tmp}/tenant.toml", "mount", "{tmp}/mnt"], USAGE, "'tenant'"),
    (["--config", "{tmp}/endpoint.toml", "mount", "{tmp}/mnt"], USAGE, "'endpoint_url'"),
    (["workspace", "list", "--store", "ftp://host/x"], USAGE, "store URL"),
    (["install-helper", "--dir", "{tmp}/missing"], FAILED, "missing/mount.fuse.cowfs"),
    (["workspace", "list", "--store", "file://{tmp}/missing"], FAILED, "does not exist"),
    (["workspace", "create", "--tenant", "acme", "--user", "u", "--store", "file://{tmp}/missing"], FAILED,
     "does not exist"),
    (["import", "a/w", "{tmp}/file", "--store", "file://{tmp}/missing"], FAILED, "does not exist"),
    (["fsck", "file://{tmp}/missing", "--cache-dir", "{tmp}"], FAILED, "does not exist"),
    ([HELPER, "file://{tmp}/store", "{tmp}/mnt", "-o", "cache_size"], USAGE, "cache_size"),
    ([HELPER, "file://{tmp}/store", "{tmp}/mnt", "-o", "path_style=yes"], USAGE, "path_style"),
    ([HELPER, "file://{tmp}/store", "{tmp}/mnt", "-o", "metadata_ttl=nan"], USAGE, "--metadata-ttl"),
    ([HELPER, "file://{tmp}/store", "{tmp}/mnt", "-o", "tenant=../x"], USAGE, "tenant"),
]
CONFIGS = {
    "mode.toml": "[tenants.acme]\nuid = 0\ngid = 0\nmode = 1.5\n",
    "size.toml": "cache_size = 1.5\n",
    "ttl.toml": "metadata_ttl = nan\n",
    "timeout.toml": "store_timeout = inf\n",
    "tenant.toml": 'tenant = "../x"\n',
    "endpoint.toml": 'endpoint_url = "notaurl"\n',
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "mnt").mkdir()
    (tmp / "file").write_text("not a folder, not an archive")
    LocalStore(tmp / "store").check()
    (tmp / "latin1.toml").write_bytes('store = "caf\xe9"\n'.encode("latin-1"))
    for name, text in CONFIGS.items():
        (tmp / name).write_text(text)
    return tmp


@pytest.mark.parametrize(("argv", "code", "words"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_and_its_exit_code(scratch, argv, code, words):
    args = [a.replace("{tmp}", str(scratch)) for a in argv]
    command = args if args[0] == HELPER else [sys.executable, "-m", "cowfs", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], done.stderr
    assert words in lines[0]
    assert done.returncode == code, done.stderr
    assert not (scratch / "missing").exists(), "a missing file:// store was created"


def test_a_closed_stdout_ends_quietly(tmp_path):
    store = LocalStore(tmp_path / "store")
    for _ in range(3):
        create_workspace(store, "acme", "u", "general")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "cowfs", "workspace", "list", "--store", store.url],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 1

