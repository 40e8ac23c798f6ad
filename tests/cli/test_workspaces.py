"""Workspaces, sessions and purge on the store, through the library and the CLI."""

from __future__ import annotations

import concurrent.futures
import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from cowfs import workspaces
from cowfs.errors import InvalidToken
from cowfs.sessions import Anchor, make_token, read_token
from cowfs.store.local import LocalStore
from cowfs.store.s3 import S3Store
from cowfs.workspaces import create_workspace, touch_workspace
from mounting import cowfs

#: What these tests check can differ between S3 servers: each runs on moto and on Ceph RGW.
pytestmark = pytest.mark.servers

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def cli(bucket, *args: str, check: bool = True):
    return cowfs(*args, "--store", f"s3://{bucket.name}", "--endpoint-url", bucket.endpoint, "--path-style",
                 check=check)


def all_keys(bucket) -> set[str]:
    out: set[str] = set()
    for page in bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name):
        out.update(o["Key"] for o in page.get("Contents", []))
    return out


def test_local_scope_is_idempotent_general_is_always_new(s3_bucket):
    args = ("--tenant", "acme", "--user", "u1", "--scope", "local", "--local-path", "/home/u1/proj")
    first = cli(s3_bucket, "workspace", "create", *args).stdout.strip()
    again = cli(s3_bucket, "workspace", "create", *args).stdout.strip()
    resolved = cli(s3_bucket, "workspace", "resolve", "--tenant", "acme", "--user", "u1",
                   "--local-path", "/home/u1/proj").stdout.strip()
    assert first == again == resolved and first.startswith("ws-")
    other_user = cli(s3_bucket, "workspace", "resolve", "--tenant", "acme", "--user", "u2",
                     "--local-path", "/home/u1/proj").stdout.strip()
    assert other_user != first
    general = {cli(s3_bucket, "workspace", "create", "--tenant", "acme", "--user", "u1").stdout.strip()
               for _ in range(2)}
    assert len(general) == 2 and first not in general
    record = json.loads(s3_bucket.client.get_object(
        Bucket=s3_bucket.name, Key=f"acme/{first}/.cowfs/workspace.json")["Body"].read())
    assert set(record) == {"workspaceId", "workspaceScope", "tenantId", "userId", "localPath", "createdAt",
                           "lastActiveAt"}
    assert record["workspaceScope"] == "local" and record["localPath"] == "/home/u1/proj"
    assert record["createdAt"].endswith("Z")
    shown = json.loads(cli(s3_bucket, "workspace", "show", f"acme/{first}", "--json").stdout)
    assert shown == record


def test_list_show_delete(s3_bucket):
    ids = [cli(s3_bucket, "workspace", "create", "--tenant", t, "--user", "u").stdout.strip()
           for t in ("acme", "acme", "other")]
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"acme/{ids[0]}/sessions/s1/history.jsonl", Body=b"{}")
    listed = json.loads(cli(s3_bucket, "workspace", "list", "--json").stdout)["workspaces"]
    assert sorted(w["workspaceId"] for w in listed) == sorted(ids)
    only_acme = json.loads(cli(s3_bucket, "workspace", "list", "--tenant", "acme", "--json").stdout)["workspaces"]
    assert sorted(w["workspaceId"] for w in only_acme) == sorted(ids[:2])
    assert "deleted" in cli(s3_bucket, "workspace", "delete", f"acme/{ids[0]}", "--yes").stdout
    assert not [k for k in all_keys(s3_bucket) if k.startswith(f"acme/{ids[0]}/")]
    missing = cli(s3_bucket, "workspace", "delete", f"acme/{ids[0]}", "--yes", check=False)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1


def test_sessions_pagination_tokens(s3_bucket):
    ws = cli(s3_bucket, "workspace", "create", "--tenant", "acme", "--user", "u").stdout.strip()
    other = cli(s3_bucket, "workspace", "create", "--tenant", "acme", "--user", "u").stdout.strip()

    def put(i: int) -> None:
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"acme/{ws}/sessions/s{i:02d}/history.jsonl",
                                    Body=b"x" * i)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(45)))
    pages, token = [], None
    while True:
        extra = ("--next-token", token) if token else ()
        doc = json.loads(cli(s3_bucket, "sessions", "list", f"acme/{ws}", "--limit", "20", "--json", *extra).stdout)
        pages.append(doc["sessions"])
        token = doc.get("nextToken")
        if token is None:
            break
    assert [len(p) for p in pages] == [20, 20, 5]
    ids = [s["sessionId"] for p in pages for s in p]
    assert sorted(ids) == [f"s{i:02d}" for i in range(45)]
    flat = [s for p in pages for s in p]
    assert all(s["files"] == 1 and s["bytes"] == int(s["sessionId"][1:]) for s in flat)
    assert all(set(s) == {"sessionId", "createdAt", "lastActiveAt", "files", "bytes"} for s in flat)
    assert [s["lastActiveAt"] for s in flat] == sorted((s["lastActiveAt"] for s in flat), reverse=True)
    first = json.loads(cli(s3_bucket, "sessions", "list", f"acme/{ws}", "--json").stdout)["nextToken"]
    forged = first[:-1] + ("0" if first[-1] != "0" else "1")
    for bad in (forged, "not-a-token", first.upper()):
        done = cli(s3_bucket, "sessions", "list", f"acme/{ws}", "--next-token", bad, check=False)
        assert done.returncode != 0 and "next-token" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    elsewhere = cli(s3_bucket, "sessions", "list", f"acme/{other}", "--next-token", first, check=False)
    assert elsewhere.returncode != 0
    assert cli(s3_bucket, "sessions", "list", f"acme/{ws}", "--limit", "0", check=False).returncode == 2
    assert cli(s3_bucket, "sessions", "list", "acme/nothing-here", check=False).returncode == 1


def test_tokens_are_signed_for_one_workspace():
    anchor = Anchor(T0, "s1")
    token = make_token(anchor, b"k" * 32, "a/w")
    assert read_token(token, b"k" * 32, "a/w") == anchor
    for secret, scope, text in ((b"other-secret", "a/w", token), (b"k" * 32, "a/other", token),
                                (b"k" * 32, "a/w", token[:-1] + ("0" if token[-1] != "0" else "1")),
                                (b"k" * 32, "a/w", "garbage")):
        with pytest.raises(InvalidToken):
            read_token(text, secret, scope)


def test_purge_deletes_only_workspaces_idle_by_record_and_by_objects(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    old = datetime.now(timezone.utc) - timedelta(days=100)
    with monkeypatch.context() as m:  # a store last written 100 days ago
        m.setattr(time, "time", old.timestamp)
        for name in ("idle", "written", "touched"):
            create_workspace(store, "acme", "u", "general", workspace_id=name, now=old)
            store.put(f"acme/{name}/notes.md", b"x", {})
        store.put("acme/stray/old.txt", b"no record: not a workspace", {})
        store.put("acme/copied/.cowfs/workspace.json", store.get("acme/idle/.cowfs/workspace.json")[0], {})
        store.put("acme/broken/.cowfs/workspace.json", b"{not json", {})
        store.put("acme/broken/old.txt", b"x", {})
    store.put("acme/written/notes.md", b"written today; the record could not be updated", {})
    touch_workspace(store, "acme", "touched", datetime.now(timezone.utc))
    before = {o.key for o in store.list_all("", None).objects}
    last_active = old.strftime("%Y-%m-%dT%H:%M:%SZ")

    dry = cowfs("purge", "--inactive-days", "90", "--dry-run", "--store", store.url).stdout
    assert dry == f"would delete acme/idle (last active {last_active})\n"
    assert {o.key for o in store.list_all("", None).objects} == before
    done = cowfs("purge", "--inactive-days", "90", "--yes", "--store", store.url).stdout
    assert done == f"deleted acme/idle (last active {last_active})\n"
    assert {o.key for o in store.list_all("", None).objects} == {k for k in before if not k.startswith("acme/idle/")}
    assert cowfs("purge", "--inactive-days", "90", "--yes", "--store", store.url).stdout == "nothing to purge\n"


def test_purge_never_touches_data_outside_the_store_prefix(s3_bucket):
    root = S3Store(s3_bucket.name, endpoint_url=s3_bucket.endpoint, region="us-east-1", path_style=True)
    inner = S3Store(s3_bucket.name, "pfx", endpoint_url=s3_bucket.endpoint, region="us-east-1", path_style=True)
    create_workspace(inner, "t", "u", "general", workspace_id="w", now=T0)
    inner.put("t/w/notes.md", b"inside", {})
    root.put("t/w/outside.txt", b"same names, outside the prefix", {})
    later = datetime.now(timezone.utc) + timedelta(days=100)
    assert workspaces.purge(root, 90, now=later) == []
    assert all_keys(s3_bucket) == {"pfx/t/w/.cowfs/workspace.json", "pfx/t/w/notes.md", "t/w/outside.txt"}
    assert [r.workspaceId for r in workspaces.purge(inner, 90, now=later)] == ["w"]
    assert all_keys(s3_bucket) == {"t/w/outside.txt"}


def test_invalid_names_refused_and_nothing_written(s3_bucket):
    for tenant in ("bad name", "../x", "-dash", "a" * 129):
        done = cli(s3_bucket, "workspace", "create", f"--tenant={tenant}", "--user", "u", check=False)
        assert done.returncode in (1, 2) and len(done.stderr.strip().splitlines()) == 1
    assert cli(s3_bucket, "workspace", "show", "acme", check=False).returncode == 2
    assert all_keys(s3_bucket) == set()
