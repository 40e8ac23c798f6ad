"""cowfs export / import: workspaces and sessions to tar archives and back, and archives that try to escape."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

import cowfs.archive as archive_module
from conftest import TEST_MULTIPART_THRESHOLD
from cowfs.archive import Limits, export_archive, import_archive
from cowfs.attrs import Attrs, to_metadata
from cowfs.errors import CowfsError, InvalidName, NoSpace, StoreError
from cowfs.store.local import LocalStore
from cowfs.store.s3 import S3Store
from cowfs.workspaces import create_workspace
from test_workspaces import all_keys, cli

#: What these tests check can differ between S3 servers: each runs on moto and on Ceph RGW.
pytestmark = pytest.mark.servers

MiB = 1024 * 1024
MTIME = 1_700_000_000_123_456_789


def s3_store(bucket) -> S3Store:
    return S3Store(bucket.name, endpoint_url=bucket.endpoint, region="us-east-1", path_style=True,
                   multipart_threshold=TEST_MULTIPART_THRESHOLD, part_size=TEST_MULTIPART_THRESHOLD)


def body(bucket, key: str) -> bytes:
    return bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read()


def meta(bucket, key: str) -> dict[str, str]:
    return bucket.client.head_object(Bucket=bucket.name, Key=key)["Metadata"]


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"cowfs[a-z ]*: error: ", lines[0]), done.stderr
    return lines[0]


def tree(root: Path) -> dict[str, tuple]:
    """Everything a mount shows under ``root``: type and mode, mtime, owner, content or target, xattrs."""
    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = None
            xattrs = {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)}
            out[str(path.relative_to(root))] = (stat.filemode(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid,
                                                content, xattrs)
    return out


@pytest.mark.mount
def test_round_trip_through_mounts(mount_factory, s3_bucket, tmp_path):
    first = mount_factory("one")
    src = first.path / "acme" / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "sessions" / "s1").mkdir(parents=True)
    big = os.urandom(9 * MiB)  # over the CLI's 8 MiB multipart threshold as well as the tests' 5 MiB
    (src / "big.bin").write_bytes(big)
    (src / "notes.md").write_text("# notes\n")
    (src / "sessions" / "s1" / "history.jsonl").write_text('{"role":"user"}\n')
    deep = src / "sub" / "deep" / "f.txt"
    deep.write_bytes(b"deep")
    os.chmod(deep, 0o640)
    os.setxattr(deep, "user.task", b"task-42")
    os.setxattr(deep, "user.raw", b"\xff\x00\x01")
    os.symlink("sub/deep/f.txt", src / "link")
    os.symlink("../notes.md", src / "sub" / "up")
    os.chmod(src / "empty", 0o700)
    for i, path in enumerate((deep, src / "empty", src / "sub", src / "notes.md")):
        os.utime(path, ns=(MTIME + i, MTIME + i))
    first.umount()

    out = tmp_path / "src.tar.gz"
    exported = cli(s3_bucket, "export", "acme/src", str(out)).stdout
    assert exported.strip() == f"exported 4 files, 5 folders, 2 symlinks (9.0 MiB) to {out}"
    with tarfile.open(out, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"big.bin", "notes.md", "link", "empty", "sub", "sub/deep", "sub/deep/f.txt", "sub/up",
                                "sessions", "sessions/s1", "sessions/s1/history.jsonl"}
        f = members["sub/deep/f.txt"]
        assert f.isreg() and f.mode == 0o640 and f.pax_headers["mtime"] == "1700000000.123456789"
        assert f.pax_headers["SCHILY.xattr.user.task"] == "task-42"
        assert members["link"].issym() and members["link"].linkname == "sub/deep/f.txt"
        assert members["empty"].isdir() and members["empty"].mode == 0o700
        assert tar.extractfile(members["big.bin"]).read() == big

    imported = cli(s3_bucket, "import", "acme/dst", str(out)).stdout
    assert imported.strip() == "imported 4 files, 5 folders, 2 symlinks (9.0 MiB) into acme/dst"
    record = json.loads(body(s3_bucket, "acme/dst/.cowfs/workspace.json"))
    assert record["workspaceId"] == "dst" and record["workspaceScope"] == "general"

    second = mount_factory("two")
    before, after = tree(second.path / "acme" / "src"), tree(second.path / "acme" / "dst")
    assert after == before
    assert after["sub/deep/f.txt"][:2] == ("-rw-r-----", MTIME)
    assert after["sub/deep/f.txt"][5] == {"user.task": b"task-42", "user.raw": b"\xff\x00\x01"}
    assert after["empty"][:2] == ("drwx------", MTIME + 1)
    assert after["sub/up"][4] == "../notes.md" and after["link"][4] == "sub/deep/f.txt"
    assert (second.path / "acme" / "dst" / "big.bin").read_bytes() == big


def test_session_export_holds_that_session_and_imports_back_in_place(s3_bucket, tmp_path):
    store = s3_store(s3_bucket)
    create_workspace(store, "acme", "u", "general", workspace_id="w")
    dir_meta = to_metadata(Attrs(stat.S_IFDIR | 0o750, 1000, 1000, MTIME))
    store.put("acme/w/sessions/s1/", b"", dir_meta)
    store.put("acme/w/sessions/s1/history.jsonl", b'{"role":"user"}\n', {})
    store.put("acme/w/sessions/s1/artifacts/out.txt", b"tool output", {})
    store.put("acme/w/sessions/s2/history.jsonl", b"other session", {})
    store.put("acme/w/notes.md", b"shared", {})

    out = tmp_path / "s1.tar.gz"
    assert cli(s3_bucket, "export", "acme/w/sessions/s1", str(out)).stdout.strip() == (
        f"exported 2 files, 2 folders, 0 symlinks (27 B) to {out}")
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["sessions/s1", "sessions/s1/artifacts", "sessions/s1/artifacts/out.txt",
                                  "sessions/s1/history.jsonl"]
        assert tar.getmember("sessions/s1").mode == 0o750

    cli(s3_bucket, "import", "acme/fresh", str(out))
    fresh = {k.removeprefix("acme/fresh/") for k in all_keys(s3_bucket) if k.startswith("acme/fresh/")}
    index = {k for k in fresh if k.startswith(".cowfs/sessions/")}
    assert fresh - index == {".cowfs/workspace.json", "sessions/", "sessions/s1/", "sessions/s1/artifacts/",
                             "sessions/s1/artifacts/out.txt", "sessions/s1/history.jsonl"}
    assert ".cowfs/sessions/records/s1.json" in index  # import indexed the session it wrote
    assert body(s3_bucket, "acme/fresh/sessions/s1/artifacts/out.txt") == b"tool output"
    assert meta(s3_bucket, "acme/fresh/sessions/s1/") == dir_meta
    listed = json.loads(cli(s3_bucket, "sessions", "list", "acme/fresh", "--json").stdout)["sessions"]
    assert [(s["sessionId"], s["files"]) for s in listed] == [("s1", 2)]

    # Importing again replaces what is there, but keeps the marker of a folder the archive only implies.
    store.put("acme/fresh/sessions/s1/history.jsonl", b"edited", {})
    kept = to_metadata(Attrs(stat.S_IFDIR | 0o700, 0, 0, MTIME))
    store.put("acme/fresh/sessions/", b"", kept)
    cli(s3_bucket, "import", "acme/fresh", str(out))
    assert body(s3_bucket, "acme/fresh/sessions/s1/history.jsonl") == b'{"role":"user"}\n'
    assert meta(s3_bucket, "acme/fresh/sessions/") == kept

    missing = cli(s3_bucket, "export", "acme/w/sessions/s9", str(tmp_path / "s9.tar.gz"), check=False)
    assert missing.returncode == 1 and "no session s9" in one_error_line(missing)
    assert not (tmp_path / "s9.tar.gz").exists()


def hostile_archive(path: Path) -> dict[str, str]:
    """An archive of entries that must be imported and entries that must not; the second with their reasons."""
    refused = {
        "../escape": "escapes the workspace",
        "/etc/abs": "absolute path",
        "a/../../up": "escapes the workspace",
        "abs-link": "symlink to an absolute path",
        "up-link": "leads out of the workspace",
        "docs/sneaky": "has '..' after a name",
        "null": "device file",
        "disk": "device file",
        "hard-out": "hard link to ../../etc/passwd, which is not imported",
        ".cowfs/workspace.json": "under .cowfs",
        "sessions/bad name/x": "invalid session id",
        "x" * 256: "longer than 255 bytes",
        "'../line\\nbreak'": "escapes the workspace",  # printed escaped: one line per skipped entry
    }
    entries = [
        ("ok.txt", tarfile.REGTYPE, b"ok", ""),
        ("docs", tarfile.DIRTYPE, b"", ""),
        ("docs/readme-link", tarfile.SYMTYPE, b"", "../ok.txt"),
        ("hard", tarfile.LNKTYPE, b"", "ok.txt"),
        ("../escape", tarfile.REGTYPE, b"escaped", ""),
        ("/etc/abs", tarfile.REGTYPE, b"absolute", ""),
        ("a/../../up", tarfile.REGTYPE, b"up", ""),
        ("abs-link", tarfile.SYMTYPE, b"", "/etc/passwd"),
        ("up-link", tarfile.SYMTYPE, b"", "../../.."),
        ("docs/sneaky", tarfile.SYMTYPE, b"", "sub/../../x"),
        ("null", tarfile.CHRTYPE, b"", ""),
        ("disk", tarfile.BLKTYPE, b"", ""),
        ("fifo", tarfile.FIFOTYPE, b"", ""),
        ("hard-out", tarfile.LNKTYPE, b"", "../../etc/passwd"),
        (".cowfs/workspace.json", tarfile.REGTYPE, b'{"workspaceId": "evil"}', ""),
        ("sessions/bad name/x", tarfile.REGTYPE, b"x", ""),
        ("x" * 256, tarfile.REGTYPE, b"long", ""),
        ("../line\nbreak", tarfile.REGTYPE, b"spoof", ""),
    ]
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, target in entries:
            member = tarfile.TarInfo(name)
            member.type, member.linkname, member.size, member.mode = kind, target, len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
    return refused


def test_hostile_archive_imports_only_what_stays_inside(s3_bucket, tmp_path):
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="acme/other/keep.txt", Body=b"keep")
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="etc/passwd", Body=b"root:x:0:0")
    before = all_keys(s3_bucket)
    archive = tmp_path / "hostile.tar.gz"
    refused = hostile_archive(archive)

    lines = cli(s3_bucket, "import", "acme/w", str(archive)).stdout.strip().splitlines()
    reported = dict(line.removeprefix("skipped ").split(": ", 1) for line in lines[:-1])
    assert set(reported) == set(refused)
    assert all(refused[name] in why for name, why in reported.items()), reported
    counts = "2 files, 1 folder, 1 symlink, 1 special file (4 B)"
    assert lines[-1] == f"imported {counts} into acme/w; {len(refused)} skipped"

    added = all_keys(s3_bucket) - before
    assert added == {"acme/w/.cowfs/workspace.json", "acme/w/ok.txt", "acme/w/docs/", "acme/w/docs/readme-link",
                     "acme/w/hard", "acme/w/fifo"}
    assert body(s3_bucket, "etc/passwd") == b"root:x:0:0" and body(s3_bucket, "acme/other/keep.txt") == b"keep"
    assert json.loads(body(s3_bucket, "acme/w/.cowfs/workspace.json"))["workspaceId"] == "w"
    assert body(s3_bucket, "acme/w/hard") == b"ok"
    assert body(s3_bucket, "acme/w/docs/readme-link") == b"../ok.txt"
    assert stat.S_ISLNK(int(meta(s3_bucket, "acme/w/docs/readme-link")["mode"]))
    assert int(meta(s3_bucket, "acme/w/fifo")["mode"]) == stat.S_IFIFO | 0o644 and body(s3_bucket, "acme/w/fifo") == b""


def test_gnu_tar_reads_exports_and_writes_imports(s3_bucket, tmp_path):
    made = tmp_path / "made"
    (made / "dir").mkdir(parents=True)
    (made / "dir" / "a.txt").write_bytes(b"alpha")
    os.chmod(made / "dir" / "a.txt", 0o600)
    os.setxattr(made / "dir" / "a.txt", "user.step", b"7")
    os.symlink("dir/a.txt", made / "link")
    os.utime(made / "dir" / "a.txt", ns=(MTIME, MTIME))
    archive = tmp_path / "made.tar.gz"
    subprocess.run(["tar", "--xattrs", "--format=posix", "-czf", str(archive), "-C", str(made), "."], check=True)

    assert cli(s3_bucket, "import", "acme/g", str(archive)).stdout.strip() == (
        "imported 1 file, 1 folder, 1 symlink (5 B) into acme/g")
    a = meta(s3_bucket, "acme/g/dir/a.txt")
    assert int(a["mode"]) == stat.S_IFREG | 0o600 and a["mtime"] == "1700000000.123456789"
    assert body(s3_bucket, "acme/g/dir/a.txt") == b"alpha" and body(s3_bucket, "acme/g/link") == b"dir/a.txt"

    out = tmp_path / "g.tar.gz"
    cli(s3_bucket, "export", "acme/g", str(out))
    back = tmp_path / "back"
    back.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "-xpzf", str(out), "-C", str(back)], check=True)
    assert (back / "dir" / "a.txt").read_bytes() == b"alpha"
    assert os.getxattr(back / "dir" / "a.txt", "user.step") == b"7"
    st = os.stat(back / "dir" / "a.txt")
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == MTIME
    assert os.readlink(back / "link") == "dir/a.txt"


def test_refusals_write_nothing(s3_bucket, tmp_path):
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        member = tarfile.TarInfo("data.bin")
        data = os.urandom(300_000)
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    for target in ("bad name/w", "acme/-w", "acme/w/x", "acme"):
        done = cli(s3_bucket, "import", target, str(good), check=False)
        assert done.returncode == 2
        one_error_line(done)

    damaged = {"random.tar.gz": os.urandom(4096), "truncated.tar.gz": good.read_bytes()[:150_000], "empty.tar": b""}
    for name, content in damaged.items():
        (tmp_path / name).write_bytes(content)
        done = cli(s3_bucket, "import", "acme/w", str(tmp_path / name), check=False)
        assert done.returncode == 1 and name in one_error_line(done)
    assert all_keys(s3_bucket) == set()

    outdir = tmp_path / "out"
    outdir.mkdir()
    missing = cli(s3_bucket, "export", "acme/w", str(outdir / "w.tar.gz"), check=False)
    assert missing.returncode == 1 and "no workspace acme/w" in one_error_line(missing)
    assert os.listdir(outdir) == []


def test_failed_export_leaves_no_archive(s3_bucket, tmp_path, monkeypatch):
    store = s3_store(s3_bucket)
    create_workspace(store, "acme", "u", "general", workspace_id="w")
    for i in range(20):
        store.put(f"acme/w/f{i:02d}", os.urandom(1000), {})

    def broken(key, out):
        raise StoreError(f"get {key}: connection reset")

    monkeypatch.setattr(store, "get_to_file", broken)
    with pytest.raises(StoreError):
        export_archive(store, "acme", "w", tmp_path / "w.tar.gz")
    assert os.listdir(tmp_path) == []


def _xz_index_start(raw: bytes) -> int:
    """Where an xz stream's index begins: its footer gives the index size; the block's check ends there."""
    return len(raw) - 12 - (int.from_bytes(raw[-8:-4], "little") + 1) * 4


def _damaged(raw: bytes, compression: str, damage: str) -> bytes:
    """``raw`` with one kind of damage where that compression keeps what is damaged."""
    data = bytearray(raw)
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncated":
        del data[len(data) // 2:]
    elif damage == "bad CRC":
        at = {"gz": -8, "bz2": -3, "xz": _xz_index_start(raw) - 1}[compression]
        data[at] ^= 0xFF
    else:
        cut = {"gz": len(data) - 8, "bz2": len(data) - 10, "xz": _xz_index_start(raw)}[compression]
        del data[cut:]
    return bytes(data)


def _archive(path: Path, compression: str, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, f"w:{compression}") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_damaged_compressed_archives_write_nothing(s3_bucket, tmp_path, compression):
    files = {f"f{i:02d}.bin": os.urandom(20_000) for i in range(20)}
    raw = _archive(tmp_path / f"good.tar.{compression}", compression, files).read_bytes()
    for damage in ("flipped byte", "bad CRC", "missing trailer", "truncated"):
        bad = tmp_path / f"{damage.replace(' ', '-')}.tar.{compression}"
        bad.write_bytes(_damaged(raw, compression, damage))
        done = cli(s3_bucket, "import", "acme/w", str(bad), check=False)
        assert done.returncode == 1 and str(bad) in one_error_line(done), (damage, done.stderr)
        assert all_keys(s3_bucket) == set(), damage
    cli(s3_bucket, "import", "acme/w", str(tmp_path / f"good.tar.{compression}"))
    assert all(body(s3_bucket, f"acme/w/{name}") == data for name, data in files.items())


def test_archives_over_the_limits_are_refused_before_anything_is_written(s3_bucket, tmp_path):
    zeros = _archive(tmp_path / "zeros.tar.gz", "gz", {f"z{i}": bytes(MiB) for i in range(3)})
    assert zeros.stat().st_size < 20_000
    for option, value, words in (("--max-bytes", "2M", "--max-bytes"), ("--max-members", "2", "--max-members")):
        done = cli(s3_bucket, "import", "acme/w", str(zeros), option, value, check=False)
        assert done.returncode == 1 and words in one_error_line(done)
        assert all_keys(s3_bucket) == set()
    fits = cli(s3_bucket, "import", "acme/w", str(zeros), "--max-bytes", "3M", "--max-members", "3")
    assert fits.stdout.strip() == "imported 3 files, 0 folders, 0 symlinks (3.0 MiB) into acme/w"


def test_hard_links_count_towards_the_byte_limit(tmp_path):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tar:
        member = tarfile.TarInfo("big")
        member.size = MiB
        tar.addfile(member, io.BytesIO(bytes(MiB)))
        for i in range(3):
            link = tarfile.TarInfo(f"link{i}")
            link.type, link.linkname = tarfile.LNKTYPE, "big"
            tar.addfile(link)
    store = LocalStore(tmp_path / "store")
    with pytest.raises(CowfsError, match="--max-bytes"):
        import_archive(store, "acme", "w", path, Limits(max_bytes=3 * MiB))
    assert store.list_all("", None).objects == []
    assert import_archive(store, "acme", "w", path, Limits(max_bytes=4 * MiB)).files == 4


def test_too_little_temporary_room_is_refused_naming_the_folder(tmp_path, monkeypatch):
    path = _archive(tmp_path / "a.tar.gz", "gz", {"a": b"x" * 5000, "b": b"y" * 3000})
    store = LocalStore(tmp_path / "store")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(archive_module.shutil, "disk_usage", lambda folder: usage._replace(free=7999))
    with pytest.raises(NoSpace) as refused:
        import_archive(store, "acme", "w", path)
    assert tempfile.gettempdir() in str(refused.value)
    assert store.list_all("", None).objects == []

    monkeypatch.setattr(archive_module.shutil, "disk_usage", lambda folder: usage._replace(free=8000))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive_module.tempfile, "TemporaryFile", full)
    with pytest.raises(CowfsError) as failed:
        import_archive(store, "acme", "w", path)
    assert tempfile.gettempdir() in str(failed.value) and "No space left" in str(failed.value)
    assert str(path) not in str(failed.value), "the archive is not to blame"


class StrictNamesStore(LocalStore):
    """A store whose name rules are stricter than S3's (some S3-compatible servers refuse more)."""

    def put(self, key, body, metadata, **conditions):
        if "~" in key:
            raise InvalidName(f"put {key}: the store refuses this name")
        return super().put(key, body, metadata, **conditions)


def test_a_name_the_store_refuses_is_skipped_with_its_own_line(tmp_path):
    path = _archive(tmp_path / "a.tar.gz", "gz", {"ok.txt": b"ok", "odd~name.txt": b"odd", "z.txt": b"z"})
    store = StrictNamesStore(tmp_path / "store")
    summary = import_archive(store, "acme", "w", path)
    lines = summary.lines("imported", "into acme/w")
    assert lines[0].startswith("skipped odd~name.txt: ") and "refuses" in lines[0]
    assert lines[1] == "imported 2 files, 0 folders, 0 symlinks (3 B) into acme/w; 1 skipped"
    assert {o.key for o in store.list_all("acme/w/", None).objects} == {
        "acme/w/.cowfs/workspace.json", "acme/w/ok.txt", "acme/w/z.txt"}
