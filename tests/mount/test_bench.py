"""scripts/bench end to end: every workload verifies its data, so a smoke run checks the floors and the harness."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mounting import require_fuse, require_programs

#: Every test here mounts FUSE (``-m "not mount"`` leaves them out).
pytestmark = pytest.mark.mount

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"


def test_quick_bench_runs_the_floors_beside_cowfs_and_leaves_nothing_mounted(tmp_path: Path) -> None:
    require_fuse()
    own = tmp_path / "tmp"  # the bench makes every mount point under its temporary folder
    own.mkdir()
    out = tmp_path / "bench.json"
    workloads = ("small_create,small_read_cold,stat_walk_warm,stat_walk_cold,append_jsonl,atomic_replace,seq_read_warm,"
                 "untar,rm_r,bucket_1000")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--targets", "local,memfs,s3,cowfs", "--workloads", workloads,
         "--big-mib", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, TMPDIR=str(own)),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads(out.read_text())
    memfs, s3, cowfs = data["results"]["memfs"], data["results"]["s3"], data["results"]["cowfs"]
    assert memfs.pop("small_read_cold")["status"] == "n/a"  # memory only: a restart would lose the files
    assert memfs.pop("stat_walk_cold")["status"] == "n/a"
    assert memfs.pop("bucket_1000")["status"] == "n/a"  # no bucket behind it
    assert {name: cell["status"] for name, cell in s3.items()} == {
        name: "ok" if name in ("small_read_cold", "stat_walk_warm", "stat_walk_cold", "bucket_1000") else "n/a"
        for name in s3}
    assert {name: cell["status"] for name, cell in memfs.items()} == {name: "ok" for name in memfs}
    assert {name: cell["status"] for name, cell in cowfs.items()} == {name: "ok" for name in cowfs}
    assert "| cowfs/s3 | cowfs/memfs |" in data["markdown"]
    assert mounts_under(own) == []


def test_quick_bench_runs_on_ceph_rgw_and_stops_it(tmp_path: Path) -> None:
    """``--rgw``: the same workloads on a real S3 server, its daemons stopped at the end."""
    require_fuse()
    require_programs("radosgw", "ceph-mon", "ceph-osd")
    own = tmp_path / "tmp"
    own.mkdir()
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--rgw", "--quick", "--targets", "s3,cowfs", "--workloads",
         "small_create,big_folder_cold", "--folder-objects", "40", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, TMPDIR=str(own)),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Ceph RGW at http://127.0.0.1:" in done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["results"]["cowfs"]["small_create"]["status"] == "ok"
    assert data["results"]["cowfs"]["big_folder_cold"]["status"] == "ok"
    assert data["results"]["s3"]["big_folder_cold"]["status"] == "ok"
    assert "over Ceph RGW's own through boto3" in data["markdown"]
    assert mounts_under(own) == []
    assert not [p for p in own.iterdir() if p.name.startswith("cowfs-rgw-")], "the Ceph cluster's folder is left"


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


NEW_WORKLOADS = ("walk_after_write", "agent_session", "freshness", "big_folder_cold", "large_file_small_cache")


def test_quick_bench_of_walks_and_what_users_feel_checks_every_step(tmp_path: Path) -> None:
    require_fuse()
    own = tmp_path / "tmp"  # the bench makes every mount point under its temporary folder
    own.mkdir()
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--targets", "local,s3,cowfs", "--workloads", ",".join(NEW_WORKLOADS),
         "--json", str(out)],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, TMPDIR=str(own)),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads(out.read_text())
    local, s3, cowfs = data["results"]["local"], data["results"]["s3"], data["results"]["cowfs"]
    assert {name: cell["status"] for name, cell in local.items()} == {name: "ok" for name in NEW_WORKLOADS}
    assert {name: cell["status"] for name, cell in cowfs.items()} == {name: "ok" for name in NEW_WORKLOADS}, cowfs
    assert {name: cell["status"] for name, cell in s3.items()} == {
        name: "ok" if name in ("big_folder_cold", "large_file_small_cache") else "n/a" for name in NEW_WORKLOADS}
    assert set(cowfs["walk_after_write"]["steps"]) == {"untar", "find", "grep -r", "du -s", "rm -r"}
    assert not any(cell["step_errors"] for cell in [*local.values(), *cowfs.values()])
    assert {"git clone", "venv", "pip install", "compileall", "grep -rn", "edit + commit", "transcript",
            "artifacts + diffs", "sync", "total"} == set(cowfs["agent_session"]["steps"])
    assert {"p50", "p95", "max", "p95 new", "p95 overwrite", "p95 rename", "p95 delete"} == set(cowfs["freshness"]["steps"])
    assert set(cowfs["big_folder_cold"]["steps"]) == {"ls -f", "ls -l", "find", "peak RSS MiB"}
    assert set(cowfs["large_file_small_cache"]["steps"]) == {"read", "MiB/s", "cache peak MiB"}
    assert set(s3["big_folder_cold"]["steps"]) == {"ls -f"}
    # What the store was asked for, step by step, is kept for the mounts with a bucket.
    listing = data["extras"]["cowfs"]["big_folder_cold"]["step_requests"][0]["ls -f"]
    assert listing.get("LIST", 0) >= 1
    for row in ("| walk_after_write: find |", "| agent_session: total |", "| freshness: p95 |",
                "| big_folder_cold: ls -l |", "| large_file_small_cache: read |"):
        assert row in data["markdown"]
    assert mounts_under(own) == []  # the second mount of freshness and every remount too


def test_moto_requests_are_counted_by_kind_for_one_bucket(tmp_path: Path) -> None:
    bench = load_bench()
    log = tmp_path / "moto.log"
    log.write_text('127.0.0.1 - - [x] "PUT /other/k HTTP/1.1" 200 -\n')
    moto = bench.Moto(log, {})
    mark = moto.mark()
    with open(log, "a") as out:
        for line in ('"GET /b?list-type=2&prefix=a%2F HTTP/1.1"', '"GET /b/a/k HTTP/1.1"', '"HEAD /b/a/k HTTP/1.1"',
                     '"PUT /b/a/k HTTP/1.1"', '"POST /b?delete HTTP/1.1"', '"GET /bb/a HTTP/1.1"', '"GET /b HTTP/1.1"',
                     '"\x1b[33mHEAD /b/a/gone HTTP/1.1"'):
            out.write(f"127.0.0.1 - - [04/Dec/2026 21:56:57] {line} 200 -\n")
    assert moto.requests_since(mark, "b") == {"GET": 1, "HEAD": 2, "LIST": 2, "POST": 1, "PUT": 1}
    assert moto.requests_since(0, "other") == {"PUT": 1}


def test_a_stepped_workload_is_one_table_row_per_step() -> None:
    bench = load_bench()
    local, cowfs, failed = bench.Cell(), bench.Cell(), bench.Cell(status="fail", error="tree differs")
    local.add({"untar": 0.5, "find": 0.01})
    cowfs.add({"untar": 2.0, "find": 0.04})
    table = bench.markdown({"local": {"walk": local}, "cowfs": {"walk": cowfs}, "memfs": {"walk": failed}},
                           ["local", "memfs", "cowfs"], ["walk"])
    assert "| walk: untar | 0.500 | FAIL: tree differs | 2.000 |  | 4.00 |" in table
    assert "| walk: find | 0.010 | FAIL: tree differs | 0.040 |  | 4.00 |" in table


def load_bench() -> Any:
    """scripts/bench.py as a module (its folder on the path for bench_data)."""
    if "bench" in sys.modules:
        return sys.modules["bench"]
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench", BENCH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH.parent))
