"""The README's quick start, run verbatim as a new user would: on the embedded store and on an S3 server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mounting import is_mounted, require_fuse

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start_blocks() -> list[str]:
    """The ``sh`` blocks of the README's "Quick start" section, in order."""
    section = README.read_text().split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def run_as_new_user(block: str, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run ``block`` with bash -e in a checkout-like folder (``.venv`` is this interpreter's) and a fresh home."""
    top = tmp_path / "checkout"
    top.mkdir()
    (top / ".venv").symlink_to(sys.prefix)
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    home.chmod(0o700)
    environ = dict(os.environ, HOME=str(home), XDG_DATA_HOME="", XDG_CACHE_HOME="", XDG_CONFIG_HOME="",
                   XDG_RUNTIME_DIR=str(home / "run"), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                   **env)
    environ.pop("COWFS_STORE", None)
    try:
        done = subprocess.run(["bash", "-e", "-c", block], cwd=top, env=environ, capture_output=True, text=True,
                              timeout=300)
    finally:
        if is_mounted(home / "agents"):
            subprocess.run(["fusermount3", "-u", "-z", str(home / "agents")])
    return done, home


def test_the_readme_has_both_quick_starts():
    embedded, s3 = quick_start_blocks()
    assert ".venv/bin/cowfs mount ~/agents" in embedded and "--create-bucket" in s3 and "--endpoint-url" not in s3


@pytest.mark.mount
def test_quick_start_on_the_embedded_store(tmp_path):
    require_fuse()
    done, home = run_as_new_user(quick_start_blocks()[0], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"sessionId": "s1"' in done.stdout
    assert re.search(r"^acme/proj\s+general\s+\S+\s+none\s+\d{4}-", done.stdout, re.M), done.stdout
    assert not is_mounted(home / "agents")
    stored = home / ".local" / "share" / "cowfs" / "store"
    assert stored.is_dir() and (home / ".cache" / "cowfs").is_dir()


@pytest.mark.mount
def test_quick_start_on_an_s3_server_through_aws_endpoint_url(tmp_path, moto_server, moto_client):
    require_fuse()
    done, home = run_as_new_user(quick_start_blocks()[1], tmp_path, AWS_ENDPOINT_URL=moto_server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pending" in done.stdout and not is_mounted(home / "agents")
    body = moto_client.get_object(Bucket="agents", Key="prod/acme/proj/notes.md")["Body"].read()
    assert body == b"hello\n"
    moto_client.delete_objects(Bucket="agents", Delete={"Objects": [
        {"Key": o["Key"]} for o in moto_client.list_objects_v2(Bucket="agents")["Contents"]]})
    moto_client.delete_bucket(Bucket="agents")
