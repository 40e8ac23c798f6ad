"""Workspaces, sessions and purge on the store, through the library and the CLI."""

from __future__ import annotations

import concurrent.futures
import json
from datetime import datetime, timedelta, timezone

import pytest

from cowfs.errors import InvalidToken
from cowfs.sessions import Anchor, make_token, read_token
from mounting import cowfs

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
    assert "deleted" in cli(s3_bucket, "workspace", "delete", f"acme/{ids[0]}").stdout
    assert not [k for k in all_keys(s3_bucket) if k.startswith(f"acme/{ids[0]}/")]
    missing = cli(s3_bucket, "workspace", "delete", f"acme/{ids[0]}", check=False)
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
    anchor = Anchor(T0, "s1", 12)
    token = make_token(anchor, b"k" * 32, "a/w")
    assert read_token(token, b"k" * 32, "a/w") == anchor
    for secret, scope, text in ((b"other-secret", "a/w", token), (b"k" * 32, "a/other", token),
                                (b"k" * 32, "a/w", token[:-1] + ("0" if token[-1] != "0" else "1")),
                                (b"k" * 32, "a/w", "garbage")):
        with pytest.raises(InvalidToken):
            read_token(text, secret, scope)


def test_purge_deletes_only_idle_workspaces(s3_bucket):
    idle = cli(s3_bucket, "workspace", "create", "--tenant", "acme", "--user", "u").stdout.strip()
    busy = cli(s3_bucket, "workspace", "create", "--tenant", "acme", "--user", "u").stdout.strip()
    key = f"acme/{idle}/.cowfs/workspace.json"
    record = json.loads(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read())
    old = (datetime.now(timezone.utc) - timedelta(days=100)).strftime("%Y-%m-%dT%H:%M:%SZ")
    record["lastActiveAt"] = record["createdAt"] = old
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=json.dumps(record).encode())
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"acme/{idle}/notes.md", Body=b"x")
    dry = cli(s3_bucket, "purge", "--inactive-days", "90", "--dry-run").stdout
    assert f"would delete acme/{idle}" in dry and busy not in dry
    assert key in all_keys(s3_bucket)
    done = cli(s3_bucket, "purge", "--inactive-days", "90").stdout
    assert f"deleted acme/{idle}" in done and busy not in done
    remaining = all_keys(s3_bucket)
    assert not [k for k in remaining if k.startswith(f"acme/{idle}/")]
    assert f"acme/{busy}/.cowfs/workspace.json" in remaining


def test_invalid_names_refused_and_nothing_written(s3_bucket):
    for tenant in ("bad name", "../x", "-dash", "a" * 129):
        done = cli(s3_bucket, "workspace", "create", f"--tenant={tenant}", "--user", "u", check=False)
        assert done.returncode in (1, 2) and len(done.stderr.strip().splitlines()) == 1
    assert cli(s3_bucket, "workspace", "show", "acme", check=False).returncode == 2
    assert all_keys(s3_bucket) == set()
