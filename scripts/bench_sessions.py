#!/usr/bin/env python3
"""Benchmark ``cowfs sessions list --limit 20`` and ``workspace list`` as workspaces grow.

For each size a bucket on a moto S3 server (a process of its own) gets that
many sessions of ``--files`` files each, put straight from boto3 as other
tools would, then ``cowfs sessions reindex`` builds the index once. Timed:
the command line for the first page, the second, and pages a quarter, half
and all the way down (their tokens signed with the bucket's secret), each the
median of ``--reps`` runs; the same pages in-process with the requests they
sent; and one full listing of ``sessions/``, what every page cost before the
index. ``--workspaces N`` times ``workspace list`` and ``purge --dry-run`` over
N workspace records of one tenant. moto's LIST walks every key of the
bucket, whatever the prefix; ``--rgw`` runs the same on Ceph's RADOS Gateway
(a real S3 server, started and stopped here as the test suite does, from
``tests/rgw.py``), ``--local`` on a local store (``file://``): their LIST
costs what it returns, as S3's does. Run it with the venv's Python, with the
test extras (``COWFS_EXTRAS=test scripts/setup`` makes it, moto included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]
from bench import FAKE_AWS_ENV, Moto, Rgw, log, s3_client  # noqa: E402

from cowfs.sessionindex import all_sessions, session_prefix  # noqa: E402
from cowfs.sessions import Anchor, list_page, make_token, pagination_secret  # noqa: E402
from cowfs.store.local import LocalStore  # noqa: E402
from cowfs.store.s3 import S3Store  # noqa: E402

TENANT, WORKSPACE = "bench", "ws"
PUT_THREADS = 16


class Counting:
    """Counts the requests one page sends (mixed into a store class)."""

    lists = gets = 0

    def list_pages(self, prefix: str, delimiter: str | None = "/", start_after: str | None = None
                   ):  # type: ignore[no-untyped-def]
        for page in super().list_pages(prefix, delimiter, start_after):  # type: ignore[misc]
            self.lists += 1
            yield page

    def get(self, key: str, start: int | None = None, end: int | None = None):  # type: ignore[no-untyped-def]
        self.gets += 1
        return super().get(key, start, end)  # type: ignore[misc]


class CountingS3Store(Counting, S3Store):
    pass


class CountingLocalStore(Counting, LocalStore):
    pass


class Place:
    """Where one size lives: a bucket on an S3 server (moto or RGW), or a local store (``file://``)."""

    def __init__(self, server: Moto | Rgw | None, name: str, root: Path) -> None:
        self.server = server
        if server is not None:
            self.bucket = server.create_bucket(name)
            self.args = ["--store", f"s3://{self.bucket}", "--endpoint-url", server.endpoint, "--path-style"]
            self.store: Counting = CountingS3Store(self.bucket, endpoint_url=server.endpoint, region="us-east-1",
                                                   path_style=True)
        else:
            self.args = ["--store", f"file://{root / name}"]
            self.store = CountingLocalStore(root / name)
            self.store.check()  # makes it, as a mount would

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "cowfs", *args, *self.args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"cowfs {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def put_all(self, objects: list[tuple[str, bytes]]) -> None:
        """Put straight from boto3, as other tools do (or into the local store), from threads."""
        if self.server is None:
            put = lambda item: self.store.put(item[0], item[1], {})  # type: ignore[attr-defined]  # noqa: E731
        else:
            s3 = s3_client(self.server.endpoint)
            put = lambda item: s3.put_object(Bucket=self.bucket, Key=item[0], Body=item[1])  # noqa: E731
        with ThreadPoolExecutor(PUT_THREADS) as pool:
            list(pool.map(put, objects))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages (a shared machine's load moves the figures)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def sessions_size(place: Place, sessions: int, files: int, reps: int) -> dict[str, Any]:
    place.cli("workspace", "create", "--tenant", TENANT, "--user", "bench", "--scope", "local", "--local-path", "/b")
    workspace = place.cli("workspace", "resolve", "--tenant", TENANT, "--user", "bench", "--local-path", "/b").strip()
    keys = [f"{TENANT}/{workspace}/sessions/s{i:05d}/{'history.jsonl' if f == 0 else f'artifacts/out{f}.txt'}"
            for i in range(sessions) for f in range(files)]
    log(f"{sessions} sessions x {files} files: putting {len(keys)} objects")
    put_time, _ = timed(lambda: place.put_all([(key, b"x" * 200) for key in keys]))
    index_time, _ = timed(lambda: place.cli("sessions", "reindex", f"{TENANT}/{workspace}"))
    log(f"  put in {put_time:.0f} s, index built in {index_time:.1f} s")
    store = place.store
    scope = f"{TENANT}/{workspace}"
    ordered = sorted(all_sessions(store, TENANT, workspace).values(),
                     key=lambda s: (-s.lastActiveAt.timestamp(), s.sessionId))
    _, token = list_page(store, TENANT, workspace, 20, None)
    secret = pagination_secret(store)
    tokens: dict[str, str | None] = {"first": None}
    if token:
        tokens["second"] = token
    for name, fraction in (("quarter", 0.25), ("half", 0.5), ("last", 1.0)):
        start = int((len(ordered) - 1) * fraction) // 20 * 20  # where the page starts
        if start >= 40:
            anchor = ordered[start - 1]
            tokens[name] = make_token(Anchor(anchor.lastActiveAt, anchor.sessionId), secret, scope)
    row: dict[str, Any] = {"sessions": sessions, "files": files, "objects": len(keys),
                           "put_s": round(put_time, 1), "reindex_s": round(index_time, 2), "pages": {}}
    empty = f"{TENANT}/{workspace}/nothing/"
    for name, page_token in tokens.items():
        extra = ["--next-token", page_token] if page_token else []
        args = ["sessions", "list", f"{TENANT}/{workspace}", "--limit", "20", "--json", *extra]
        runs = [timed(lambda: place.cli(*args))[0] for _ in range(reps)]
        floor = statistics.median(timed(lambda: store.list_all(empty, None))[0] for _ in range(reps))
        store.lists = store.gets = 0
        inner, (page, _) = timed(lambda: list_page(store, TENANT, workspace, 20, page_token))
        assert len(page) == 20 or name == "last", (name, len(page))
        row["pages"][name] = {"cli_s": round(statistics.median(runs), 3), "in_process_s": round(inner, 3),
                              "lists": store.lists, "gets": store.gets, "empty_list_s": round(floor, 3)}
        log(f"  {name} page: command {statistics.median(runs):.3f} s, in-process {inner:.3f} s "
            f"({store.lists} LIST, {store.gets} GET); the store's LIST of an empty prefix {floor:.3f} s")
    prefix = session_prefix(TENANT, workspace)
    full, _ = timed(lambda: store.list_all(prefix, None))
    row["full_listing_s"] = round(full, 3)
    row["loadavg"] = load_average()
    log(f"  one full listing of sessions/ (what each page cost before the index) {full:.2f} s; "
        f"load average {row['loadavg']}")
    return row


def workspaces_size(place: Place, count: int) -> dict[str, Any]:
    old = "2020-01-01T00:00:00Z"
    record = {"workspaceScope": "general", "tenantId": TENANT, "userId": "bench", "localPath": None,
              "createdAt": old, "lastActiveAt": old}
    log(f"{count} workspace records")
    place.put_all([(f"{TENANT}/w{i:05d}/.cowfs/workspace.json",
                    json.dumps({**record, "workspaceId": f"w{i:05d}"}).encode()) for i in range(count)])
    listed, out = timed(lambda: place.cli("workspace", "list", "--tenant", TENANT, "--json"))
    assert len(json.loads(out)["workspaces"]) == count
    purge, out = timed(lambda: place.cli("purge", "--inactive-days", "90", "--dry-run"))
    assert out.count("would delete") == count
    log(f"  workspace list {listed:.2f} s, purge --dry-run {purge:.2f} s; load average {load_average()}")
    return {"workspaces": count, "list_s": round(listed, 2), "purge_dry_run_s": round(purge, 2),
            "loadavg": load_average()}


def markdown(rows: list[dict[str, Any]], spaces: list[dict[str, Any]]) -> str:
    pages = ["first", "second", "quarter", "half", "last"]
    lines = ["| sessions x files | objects | index built once | " + " | ".join(f"{p} page" for p in pages)
             + " | empty LIST | full listing (before) |", "|---" * (len(pages) + 5) + "|"]
    for row in rows:
        cells = []
        for name in pages:
            page = row["pages"].get(name)
            cells.append(f"{page['cli_s']:.2f} s ({page['in_process_s']:.3f} s; {page['lists']} LIST, "
                         f"{page['gets']} GET)" if page else "-")
        floors = [page["empty_list_s"] for page in row["pages"].values()]
        lines.append(f"| {row['sessions']} x {row['files']} | {row['objects']} | {row['reindex_s']:.1f} s | "
                     + " | ".join(cells) + f" | {statistics.median(floors):.3f} s | {row['full_listing_s']:.3f} s |")
    for space in spaces:
        lines.append(f"\n`workspace list --tenant` of {space['workspaces']} workspaces {space['list_s']:.2f} s, "
                     f"`purge --dry-run` {space['purge_dry_run_s']:.2f} s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,2000,10000", help="sessions per workspace, comma separated")
    parser.add_argument("--files", type=int, default=20, help="files per session")
    parser.add_argument("--reps", type=int, default=3, help="command-line runs per page (the median counts)")
    parser.add_argument("--workspaces", type=int, default=10000, help="workspace records for workspace list (0: skip)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rgw", action="store_true",
                       help="Ceph's RADOS Gateway instead of moto: a real S3 server, whose LIST costs what it returns")
    where.add_argument("--local", action="store_true",
                       help="a local store (file://) instead of moto: its LIST costs what it returns, as S3's")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    os.environ.update(FAKE_AWS_ENV)
    with tempfile.TemporaryDirectory(prefix="cowfs-bench-sessions-") as tmp:
        server: Moto | Rgw | None = (None if args.local else Rgw() if args.rgw
                                     else Moto(Path(tmp) / "moto.log", dict(os.environ)))
        if server is not None:
            server.start()
        try:
            rows = [sessions_size(Place(server, f"bench-sessions-{n}", Path(tmp)), int(n), args.files, args.reps)
                    for n in args.sizes.split(",") if n]
            spaces = ([workspaces_size(Place(server, f"bench-workspaces-{args.workspaces}", Path(tmp)),
                                       args.workspaces)] if args.workspaces else [])
        finally:
            if server is not None:
                server.stop()
    table = markdown(rows, spaces)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"sessions": rows, "workspaces": spaces, "markdown": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
