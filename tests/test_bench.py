"""scripts/bench end to end: every workload verifies its data, so a smoke run checks the floors and the harness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mounting import require_fuse

#: Every test here mounts FUSE (``-m "not mount"`` leaves them out).
pytestmark = pytest.mark.mount

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


def test_quick_bench_runs_the_floors_beside_cowfs_and_leaves_nothing_mounted(tmp_path: Path) -> None:
    require_fuse()
    own = tmp_path / "tmp"  # the bench makes every mount point under its temporary folder
    own.mkdir()
    out = tmp_path / "bench.json"
    workloads = "small_create,small_read_cold,stat_walk_warm,append_jsonl,atomic_replace,seq_read_warm,untar,rm_r,bucket_1000"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--targets", "local,memfs,s3,cowfs", "--workloads", workloads,
         "--big-mib", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, TMPDIR=str(own)),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads(out.read_text())
    memfs, s3, cowfs = data["results"]["memfs"], data["results"]["s3"], data["results"]["cowfs"]
    assert memfs.pop("small_read_cold")["status"] == "n/a"  # memory only: a restart would lose the files
    assert memfs.pop("bucket_1000")["status"] == "n/a"  # no bucket behind it
    assert {name: cell["status"] for name, cell in s3.items()} == {
        name: "ok" if name in ("small_read_cold", "stat_walk_warm", "bucket_1000") else "n/a" for name in s3}
    assert {name: cell["status"] for name, cell in memfs.items()} == {name: "ok" for name in memfs}
    assert {name: cell["status"] for name, cell in cowfs.items()} == {name: "ok" for name in cowfs}
    assert "| cowfs/s3 | cowfs/memfs |" in data["markdown"]
    assert mounts_under(own) == []


def mounts_under(folder: Path) -> list[str]:
    """Mount points under ``folder``: the bench's own, not what others mount meanwhile."""
    with open("/proc/mounts") as table:
        points = [line.split()[1].replace("\\040", " ") for line in table]
    return [p for p in points if p.startswith(f"{folder}/")]


def test_cowfs_options_reach_the_mount(tmp_path: Path) -> None:
    require_fuse()
    results = {}
    for options in ("--metadata-ttl 300", "--metadata-ttl soon"):
        out = tmp_path / "bench.json"
        done = subprocess.run(
            [sys.executable, str(BENCH), "--quick", "--targets", "cowfs", "--workloads", "stat_walk_warm",
             "--cowfs-options", options, "--json", str(out)],
            capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        data = json.loads(out.read_text())
        results[options] = data["results"]["cowfs"]["stat_walk_warm"]
        assert f"cowfs: cowfs mount -f {options}." in data["markdown"]
    assert results["--metadata-ttl 300"]["status"] == "ok"
    assert results["--metadata-ttl soon"]["status"] == "fail"
    assert "cannot mount" in results["--metadata-ttl soon"]["error"]
