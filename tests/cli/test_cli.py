"""The command line as people and programs use it: --json everywhere, text for people, progress, confirmations."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cowfs import doctor, output
from cowfs.progress import Meter
from cowfs.store.local import LocalStore
from cowfs.store.s3 import S3Store
from cowfs.workspaces import create_workspace
from mounting import cowfs

RECORD = {"workspaceId", "workspaceScope", "tenantId", "userId", "localPath", "createdAt", "lastActiveAt"}


@pytest.fixture
def store(tmp_path) -> LocalStore:
    """An embedded-kind store on disk, addressed by file:// URL."""
    store = LocalStore(tmp_path / "store")
    store.check()
    return store


def run_json(*args: str) -> dict:
    return json.loads(cowfs(*args, "--json").stdout)


def test_units_durations_plurals_tables():
    assert [output.size(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**40)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 TiB"]
    assert [output.duration(s) for s in (0.42, 12, 73.38, 3600, 7500, 3 * 86400 + 4 * 3600 + 5)] == [
        "0.4 s", "12 s", "1 min 13 s", "1 h", "2 h 5 min", "3 d 4 h"]
    assert [output.plural(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]
    assert output.plural(1, "entry", "entries") == "1 entry" and output.plural(3, "retry", "retries") == "3 retries"
    assert output.shown(None) == "none" and output.shown([]) == "none" and output.shown("a\nb") == "'a\\nb'"
    assert output.table(("A", "LONG HEADER"), [("x", None), ("yyyy", 2)], "nothing") == [
        "A     LONG HEADER", "x     none", "yyyy  2"]
    assert output.table(("A",), [], "no rows") == ["no rows"]


def test_a_meter_shows_rate_eta_and_bytes():
    now = [100.0]
    stream = io.StringIO()
    meter = Meter("syncing", "change", shown=True, stream=stream, clock=lambda: now[0])
    meter.plan(10, 4 * 2**20)
    now[0] += 2
    meter.set(3, 2**20)
    assert meter.line() == "syncing [#####...............] 3/10 changes, 1.0 MiB/4.0 MiB, 512.0 KiB/s, ETA 6.0 s"
    now[0] += 6
    meter.set(10, 4 * 2**20)
    assert meter.line().endswith("10/10 changes, 4.0 MiB/4.0 MiB, 512.0 KiB/s, in 8.0 s")
    meter.close()
    assert stream.getvalue().endswith("in 8.0 s\n")
    items = Meter("deleting", "object", shown=False, clock=lambda: now[0])
    items.plan(4, None)
    now[0] += 1
    items.advance(1)
    assert items.line() == "deleting [#####...............] 1/4 objects, 1.0 objects/s, ETA 3.0 s"


def test_every_store_command_prints_json_of_its_own_shape(store, tmp_path):
    at = ("--store", store.url)
    ws = run_json("workspace", "create", "--tenant", "acme", "--user", "u", *at)
    assert set(ws) == RECORD
    assert set(run_json("workspace", "resolve", "--tenant", "acme", "--user", "u", "--local-path", "/p", *at)) == RECORD
    assert [set(w) for w in run_json("workspace", "list", *at)["workspaces"]] == [RECORD, RECORD]
    assert set(run_json("workspace", "show", f"acme/{ws['workspaceId']}", *at)) == RECORD
    store.put(f"acme/{ws['workspaceId']}/sessions/s1/history.jsonl", b"{}\n", {})
    sessions = run_json("sessions", "list", f"acme/{ws['workspaceId']}", *at)
    assert list(sessions) == ["sessions"]
    assert set(sessions["sessions"][0]) == {"sessionId", "createdAt", "lastActiveAt", "files", "bytes"}
    assert run_json("sessions", "reindex", f"acme/{ws['workspaceId']}", *at) == {
        "sessions": 1, "recordsWritten": 0, "staleEntriesDropped": 0}

    archive = tmp_path / "ws.tar.gz"
    exported = run_json("export", f"acme/{ws['workspaceId']}", str(archive), *at)
    assert exported == {"archive": str(archive), "files": 1, "folders": 2, "symlinks": 0, "bytes": 3, "skipped": []}
    imported = run_json("import", "acme/copy", str(archive), *at)
    assert imported == {"workspace": "acme/copy", "files": 1, "folders": 2, "symlinks": 0, "bytes": 3, "skipped": []}

    store.put(".Trash-0/files/a.txt", b"abc", {})
    store.put(".Trash-0/info/a.txt.trashinfo", b"[Trash Info]\nPath=acme/x/a.txt\nDeletionDate=2026-01-01T00:00:00\n",
              {})
    listed = run_json("trash", "list", *at)["trash"]
    assert [set(e) for e in listed] == [{"trash", "name", "originalPath", "deletedAt", "files", "bytes"}]
    purged = run_json("purge", "--inactive-days", "9999", "--dry-run", *at)
    assert purged == {"dryRun": True, "workspaces": [], "trash": []}
    assert run_json("trash", "empty", "--yes", *at)["deleted"] == listed

    copied = store.list_all("acme/copy/", None).objects
    deleted = run_json("workspace", "delete", "acme/copy", "--yes", *at)
    assert deleted == {"deleted": "acme/copy", "objects": len(copied), "bytes": sum(o.size for o in copied)}
    helpers = tmp_path / "sbin"
    helpers.mkdir()
    assert run_json("install-helper", "--dir", str(helpers)) == {
        "installed": [str(helpers / "mount.fuse.cowfs"), str(helpers / "mount.cowfs")]}
    (tmp_path / "cache" / "journal").mkdir(parents=True)
    assert run_json("fsck", store.url, "--cache-dir", str(tmp_path / "cache")) == {
        "moved": [], "uploaded": [], "deleted": [], "lost": [], "refused": {}, "reindexed": []}
    checked = run_json("doctor", store.url, "--cache-dir", str(tmp_path / "cache"))
    assert checked["ok"] is True and [c["check"] for c in checked["checks"]] == ["fuse", "store", "cache dir"]
    assert all(set(c) == {"check", "ok", "detail"} for c in checked["checks"])


def test_people_get_headers_units_and_a_line_for_nothing(store, tmp_path):
    at = ("--store", store.url)
    assert cowfs("workspace", "list", *at).stdout == "no workspaces\n"
    assert cowfs("workspace", "list", "--tenant", "acme", *at).stdout == "no workspaces in tenant acme\n"
    assert cowfs("trash", "list", *at).stdout == "the trash is empty\n"
    assert cowfs("trash", "empty", "--yes", *at).stdout == "nothing in the trash\n"
    assert cowfs("purge", "--inactive-days", "1", "--yes", *at).stdout == "nothing to purge\n"
    create_workspace(store, "acme", "alice", "local", "/home/alice/proj", workspace_id="w1")
    assert cowfs("sessions", "list", "acme/w1", *at).stdout == "no sessions in acme/w1\n"
    lines = cowfs("workspace", "list", *at).stdout.splitlines()
    assert lines[0].split() == ["WORKSPACE", "SCOPE", "USER", "LOCAL", "PATH", "LAST", "ACTIVE"]
    assert lines[1].split()[:4] == ["acme/w1", "local", "alice", "/home/alice/proj"]
    shown = cowfs("workspace", "show", "acme/w1", *at).stdout
    assert "user         alice" in shown and "local path   /home/alice/proj" in shown
    store.put("acme/w1/notes.md", b"x" * 1536, {})
    exported = cowfs("export", "acme/w1", str(tmp_path / "w1.tar.gz"), *at).stdout
    assert exported == f"exported 1 file, 0 folders, 0 symlinks (1.5 KiB) to {tmp_path / 'w1.tar.gz'}\n"
    deleted = cowfs("workspace", "delete", "acme/w1", "--yes", *at).stdout
    # the record, notes.md and the session index's marker that the first sessions list wrote
    assert deleted.startswith("deleted acme/w1 (3 objects, ") and deleted.endswith(" KiB)\n")


def test_deleting_is_refused_without_yes_off_a_terminal(store):  # purge: even with nothing idle yet
    at = ("--store", store.url)
    create_workspace(store, "acme", "u", "general", workspace_id="w1")
    store.put("acme/w1/keep.txt", b"x", {})
    store.put(".Trash-0/files/t.txt", b"x", {})
    before = {o.key for o in store.list_all("", None).objects}
    for args in (("workspace", "delete", "acme/w1"), ("trash", "empty"), ("purge", "--inactive-days", "1")):
        done = subprocess.run([sys.executable, "-m", "cowfs", *args, *at],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("cowfs: error: not deleting without --yes") and done.stderr.count("\n") == 1
    assert {o.key for o in store.list_all("", None).objects} == before


def in_pty(args: list[str], answer: bytes | None = None, timeout: float = 60) -> tuple[int, str]:
    """Run the CLI with a terminal for stdin, stdout and stderr, as a person would; (exit status, what it showed)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-m", "cowfs", *args])
    seen = b""
    deadline = time.monotonic() + timeout
    answered = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if answer is not None and not answered and b"[y/N]" in seen:
                os.write(fd, answer)
                answered = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_a_terminal_is_asked_before_deleting(store):
    create_workspace(store, "acme", "u", "general", workspace_id="w1")
    code, shown = in_pty(["workspace", "delete", "acme/w1", "--store", store.url], answer=b"n\n")
    assert code == 1 and "delete workspace acme/w1 (1 object, " in shown and "nothing deleted" in shown
    assert store.list_all("acme/w1/", None).objects
    code, shown = in_pty(["workspace", "delete", "acme/w1", "--store", store.url], answer=b"y\n")
    assert code == 0 and "deleted acme/w1" in shown and "deleting acme/w1 [####" in shown
    assert not store.list_all("acme/w1/", None).objects


@pytest.mark.mount
def test_sync_on_a_terminal_shows_rate_eta_and_bytes(mount_factory):
    mount = mount_factory(extra=["--write-back-delay", "60"])
    ws = mount.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    for i in range(30):
        (ws / f"f{i}.bin").write_bytes(os.urandom(64 * 1024))
    status = run_json("status", str(mount.path))
    assert status["pendingUploads"] >= 30 and status["dirtyBytes"] >= 30 * 64 * 1024
    code, shown = in_pty(["sync", str(mount.path)])
    assert code == 0, shown
    assert "syncing [" in shown and "changes" in shown and "MiB" in shown and "/s" in shown, shown
    assert "ETA" in shown and ", in " in shown.strip().rsplit("\r", 1)[-1], shown
    assert run_json("status", str(mount.path))["pendingUploads"] == 0
    human = cowfs("status", str(mount.path)).stdout
    assert "pending       nothing" in human and "last error    none" in human and "None" not in human


@pytest.mark.mount
def test_status_and_mounts_speak_json(mount_factory):
    mount = mount_factory("m", extra=["--tenant", "t1"])
    status = run_json("status", str(mount.path))
    assert {"pid", "mountpoint", "store", "tenant", "cacheDir", "pendingUploads", "pendingDeletes", "dirtyBytes",
            "uploads", "deletes", "retries", "listings", "storeUnreachableSince", "lastError", "refusedKeys",
            "activityPending", "activityFailures", "activityLastError", "markChecks", "markFailures", "entriesTakenBack",
            "markLastError", "summaryFailures", "summaryLastError", "cacheBytes", "storeQuirks", "uptime"
            } == set(status)
    found = [m for m in run_json("mounts")["mounts"] if m["mountpoint"] == str(mount.path)]
    assert found == [{"mountpoint": str(mount.path), "store": status["store"], "tenant": "t1",
                      "cacheDir": str(mount.cache_dir), "pid": mount.proc.pid}]
    table = cowfs("mounts").stdout.splitlines()
    assert table[0].split() == ["MOUNT", "POINT", "STORE", "TENANT", "CACHE", "DIR", "PID"]
    assert any(line.split()[0] == str(mount.path) and line.split()[-1] == str(mount.proc.pid) for line in table)


@pytest.mark.mount
def test_the_log_goes_to_the_cache_dir_and_to_log_file(mount_factory, tmp_path):
    log_file = tmp_path / "extra.log"
    mount = mount_factory("logged", extra=["--log-file", str(log_file), "--log-level", "debug"])
    mount.umount()
    for path in (mount.cache_dir / "cowfs.log", log_file):
        text = path.read_text()
        assert f"mounted at {mount.path}" in text and "unmounted" in text, path
    assert " DEBUG " in log_file.read_text()
    assert (mount.cache_dir / "cowfs.log").read_text().count(f"mounted at {mount.path}") == 1


def test_every_option_and_argument_says_what_it_is():
    import argparse

    from cowfs.cli import build_parser

    def undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += undocumented(sub, f"{path} {name}")
            elif not action.help:
                found.append(f"{path} {'/'.join(action.option_strings) or action.metavar or action.dest}")
        return found

    assert undocumented(build_parser(), "cowfs") == []


def test_completion_scripts_and_man_page_come_from_the_parser(tmp_path):
    bash = cowfs("completion", "bash").stdout
    script = tmp_path / "cowfs.bash"
    script.write_text(bash)
    probe = (f"source {script}; COMP_WORDS=(cowfs work); COMP_CWORD=1; COMP_LINE='cowfs work'; COMP_POINT=10; "
             "_shtab_cowfs cowfs work cowfs; echo \"${COMPREPLY[@]}\"; "
             "COMP_WORDS=(cowfs trash empty --ol); COMP_CWORD=3; _shtab_cowfs cowfs --ol empty; echo \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines() == ["workspace", "--older-than"], done.stderr
    zsh = cowfs("completion", "zsh").stdout
    assert zsh.startswith("#compdef cowfs") and "--create-bucket" in zsh
    fish = cowfs("completion", "fish").stdout
    assert "complete -c cowfs -n 'not __fish_seen_subcommand_from mount umount" in fish
    assert ("complete -c cowfs -n '__fish_seen_subcommand_from workspace; and __fish_seen_subcommand_from create' "
            "-l scope -x -a 'local general cloud'") in fish
    if shutil.which("fish"):
        assert subprocess.run(["fish", "--no-execute"], input=fish, text=True).returncode == 0
    man = cowfs("man").stdout
    assert man.startswith(".TH COWFS")
    for command in ("mount", "umount", "sync", "status", "mounts", "doctor", "workspace", "trash", "purge", "man"):
        assert f"\\fI\\,'cowfs {command}'\\/\\fR" in man, command
    if shutil.which("man"):
        page = subprocess.run(["man", "-l", "-"], input=man, capture_output=True, text=True,
                              env=dict(os.environ, MANPAGER="cat", MANWIDTH="100"))
        assert "--create-bucket" in page.stdout.replace("‐", "-")


def test_a_missing_mount_point_is_named(tmp_path):
    done = cowfs("mount", str(tmp_path / "nope"), check=False)
    assert done.returncode == 2 and done.stderr == f"cowfs: error: mount point {tmp_path / 'nope'} does not exist (mkdir -p it first)\n"


def test_a_missing_bucket_is_made_by_create_bucket_and_named_without_it(s3_server, tmp_path):
    name = f"cowfs-new-{os.urandom(4).hex()}"
    args = ["--endpoint-url", s3_server.endpoint, "--path-style"]
    (tmp_path / "m").mkdir()
    done = cowfs("mount", f"s3://{name}", str(tmp_path / "m"), *args, check=False)
    assert done.returncode == 1
    assert done.stderr == (f"cowfs: error: bucket {name} at {s3_server.endpoint}: no such bucket "
                           "(cowfs mount --create-bucket makes it)\n")
    checked = json.loads(cowfs("doctor", f"s3://{name}", *args, "--json", check=False).stdout)
    assert checked["ok"] is False and [c["check"] for c in checked["checks"] if not c["ok"]] == ["bucket", "clock"]
    store = S3Store(name, endpoint_url=s3_server.endpoint, path_style=True)
    assert store.create_bucket() is True and store.create_bucket() is False
    checked = json.loads(cowfs("doctor", f"s3://{name}", *args, "--json").stdout)
    assert [c["check"] for c in checked["checks"]] == ["fuse", "endpoint", "credentials", "bucket", "clock",
                                                       "cache dir"]
    assert checked["ok"] is True


def test_doctor_finds_a_clock_far_from_the_servers(s3_bucket):
    store = S3Store(s3_bucket.name, endpoint_url=s3_bucket.endpoint, path_style=True)
    near = {c.name: c for c in doctor.store_checks(store, True)}
    assert near["clock"].ok and near["credentials"].detail == "found (env)"
    far = {c.name: c for c in doctor.store_checks(store, True, clock=lambda: time.time() + 3600)}
    assert not far["clock"].ok and far["clock"].detail.startswith("1 h ahead of the server")


@pytest.mark.servers("rgw")
def test_refused_credentials_name_the_bucket_and_endpoint(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    done = cowfs("workspace", "list", "--store", f"s3://{s3_bucket.name}", "--endpoint-url", s3_bucket.endpoint,
                 "--path-style", check=False)
    assert done.returncode == 1
    assert done.stderr.startswith(f"cowfs: error: credentials refused for bucket {s3_bucket.name} at "
                                  f"{s3_bucket.endpoint} ("), done.stderr


@pytest.mark.mount
def test_workspace_folders_show_the_records_last_activity(mount_factory, s3_bucket):
    store = S3Store(s3_bucket.name, endpoint_url=s3_bucket.endpoint, path_style=True)
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    create_workspace(store, "acme", "u", "general", workspace_id="made-by-cli", now=when)
    mount = mount_factory()
    assert os.stat(mount.path / "acme" / "made-by-cli").st_mtime == when.timestamp()


def _tar_of(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_import_on_a_terminal_shows_progress(store, tmp_path):
    archive = tmp_path / "in.tar.gz"
    _tar_of(archive, {f"f{i}.txt": b"x" * 2048 for i in range(5)})
    code, shown = in_pty(["import", "acme/w", str(archive), "--store", store.url])
    assert code == 0, shown
    assert "importing into acme/w [" in shown and "5/5 files" in shown and "10.0 KiB/10.0 KiB" in shown, shown
    code, quiet = in_pty(["import", "acme/w", str(archive), "--store", store.url, "--quiet"])
    assert code == 0 and "importing" not in quiet and "imported 5 files" in quiet
