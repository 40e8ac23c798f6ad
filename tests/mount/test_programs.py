"""Real programs on a real mount: git, editors, sed, sqlite, venv + pip, rsync, tar, coreutils.

Each test checks the program's own verdict (exit status, ``git fsck``,
``PRAGMA integrity_check``, an empty ``rsync -i``) and, when it writes data,
checks it again through a second mount that starts from an empty cache, so
what is compared is what reached the bucket.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import fcntl
import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from mounting import Mount

#: What these tests check can differ between S3 servers: each runs on moto and on Ceph RGW;
#: every one mounts FUSE.
pytestmark = [pytest.mark.servers, pytest.mark.mount]


def run(*cmd: object, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 180) -> str:
    """Run a program; its exit status is the verdict. Returns its stdout."""
    args = [str(c) for c in cmd]
    done = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(args)} exited {done.returncode}\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
    )
    return done.stdout


def workspace(m: Mount) -> Path:
    path = m.path / "t1" / "ws1"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256(path: Path | str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: type, mode, size, content hash, link target, file mtime."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(stat.S_IMODE(st.st_mode)))
            else:
                assert stat.S_ISREG(st.st_mode), rel
                out[rel] = ("file", oct(stat.S_IMODE(st.st_mode)), st.st_size, sha256(path), st.st_mtime_ns)
    return out


def diff(got: dict, want: dict) -> list[str]:
    """Readable differences between two snapshots (at most 20)."""
    lines = [f"missing {k}: {want[k]}" for k in sorted(want.keys() - got.keys())]
    lines += [f"extra {k}: {got[k]}" for k in sorted(got.keys() - want.keys())]
    lines += [f"differs {k}: {got[k]} != {want[k]}" for k in sorted(got.keys() & want.keys()) if got[k] != want[k]]
    return lines[:20]


# -- git -------------------------------------------------------------------------


def git_env(home: Path) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({
        "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "Agent", "GIT_AUTHOR_EMAIL": "agent@example.com",
        "GIT_COMMITTER_NAME": "Agent", "GIT_COMMITTER_EMAIL": "agent@example.com",
    })
    return env


def git_log(repo: Path, env: dict[str, str]) -> list[str]:
    return run("git", "-C", repo, "log", "--format=%H %s", env=env).splitlines()


def test_git_init_commit_gc_clone_and_fsck_after_remount(mount_factory, tmp_path):
    env = git_env(tmp_path / "home")
    first = mount_factory("git")
    ws = workspace(first)

    # A repository made on the mount: init, add, commit, status, gc.
    repo = ws / "repo"
    run("git", "init", "-q", "-b", "main", repo, env=env)
    (repo / "src").mkdir()
    for i in range(3):
        for j in range(10):
            (repo / "src" / f"m{j}.py").write_text(f"# module {j}, revision {i}\n" * (j + 1))
        (repo / "data.bin").write_bytes(os.urandom(20000 + i))
        (repo / "run.sh").write_text("#!/bin/sh\necho hi\n")
        os.chmod(repo / "run.sh", 0o755)
        run("git", "-C", repo, "add", "-A", env=env)
        run("git", "-C", repo, "commit", "-q", "-m", f"revision {i}", env=env)
    assert run("git", "-C", repo, "status", "--porcelain", env=env) == ""
    # The branch is in the store before gc deletes its loose ref (gc straight after a commit is
    # test_git_gc_right_after_commits_keeps_the_branch).
    first.sync()
    run("git", "-C", repo, "gc", "-q", env=env)
    counts = dict(line.split(": ") for line in run("git", "-C", repo, "count-objects", "-v", env=env).splitlines())
    assert counts["count"] == "0" and counts["packs"] == "1", counts
    assert run("git", "-C", repo, "status", "--porcelain", env=env) == ""
    run("git", "-C", repo, "fsck", "--full", "--strict", env=env)
    made_here = git_log(repo, env)
    assert [line.split(" ", 1)[1] for line in made_here] == ["revision 2", "revision 1", "revision 0"]

    # A repository made on local disk, cloned onto the mount through the pack protocol.
    origin = tmp_path / "origin"
    run("git", "init", "-q", "-b", "main", origin, env=env)
    for i in range(5):
        (origin / f"file{i}.txt").write_text(f"content {i}\n" * 100)
        (origin / "log.txt").write_text("".join(f"line {k}\n" for k in range(i * 50)))
        run("git", "-C", origin, "add", "-A", env=env)
        run("git", "-C", origin, "commit", "-q", "-m", f"origin commit {i}", env=env)
    run("git", "-C", origin, "tag", "v1", env=env)
    origin_log = git_log(origin, env)
    run("git", "clone", "-q", f"file://{origin}", ws / "clone", env=env)
    assert git_log(ws / "clone", env) == origin_log
    assert run("git", "-C", ws / "clone", "status", "--porcelain", env=env) == ""
    first.umount()

    # From the bucket alone: the same history, and git finds nothing wrong.
    second = mount_factory("git-again")
    ws = workspace(second)
    assert git_log(ws / "repo", env) == made_here
    assert git_log(ws / "clone", env) == origin_log
    for name in ("repo", "clone"):
        fsck = subprocess.run(["git", "-C", ws / name, "fsck", "--full", "--strict"], check=False, env=env,
                              capture_output=True, text=True, timeout=120)
        assert fsck.returncode == 0 and fsck.stderr == "", fsck.stderr
        assert run("git", "-C", ws / name, "status", "--porcelain", env=env) == ""
    assert run("git", "-C", ws / "clone", "describe", "--tags", env=env).strip() == "v1"
    assert os.access(ws / "repo" / "run.sh", os.X_OK)

    # And back to local disk: a plain-path clone copies the mounted object files.
    back = tmp_path / "back"
    run("git", "clone", "-q", ws / "repo", back, env=env)
    assert git_log(back, env) == made_here
    run("git", "-C", back, "fsck", "--full", "--strict", env=env)
    assert (back / "data.bin").read_bytes() == (ws / "repo" / "data.bin").read_bytes()


def test_git_gc_right_after_commits_keeps_the_branch(mount_factory, tmp_path):
    env = git_env(tmp_path / "home")
    first = mount_factory("gitgc", extra=["--write-back-delay", "1"])  # the default delay
    repo = workspace(first) / "repo"
    run("git", "init", "-q", "-b", "main", repo, env=env)
    for i in range(3):
        (repo / "file.txt").write_text(f"revision {i}\n")
        run("git", "-C", repo, "add", "-A", env=env)
        run("git", "-C", repo, "commit", "-q", "-m", f"revision {i}", env=env)
        if i == 0:
            first.sync()  # the first value of refs/heads/main reaches the store
    # Commits 1 and 2 rename main.lock over refs/heads/main; gc's pack-refs then deletes the loose
    # ref, all within the write-back delay.
    made = git_log(repo, env)
    run("git", "-C", repo, "gc", "-q", env=env)
    time.sleep(1.5)  # metadata TTL: the folder is listed from the store again
    assert git_log(repo, env) == made
    assert run("git", "-C", repo, "status", "--porcelain", env=env) == ""
    first.umount()
    repo = workspace(mount_factory("gitgc-again")) / "repo"
    assert git_log(repo, env) == made
    run("git", "-C", repo, "fsck", "--full", "--strict", env=env)


# -- editors and sed -------------------------------------------------------------


def test_editor_atomic_save_and_sed_in_place_keep_mode_and_xattrs(mount_factory):
    first = mount_factory("edit")
    ws = workspace(first)
    doc = ws / "notes" / "doc.txt"
    doc.parent.mkdir()
    doc.write_text("first draft\n")
    os.chmod(doc, 0o640)
    os.setxattr(doc, "user.editor.tag", b"draft")
    os.setxattr(doc, "user.mime_type", b"text/plain")
    first.sync()

    # What an editor does: write a temp file, fsync, copy mode + xattrs, rename over the original.
    tmp = doc.with_name(".doc.txt.tmp~")
    with open(tmp, "w") as f:
        f.write("second draft\n")
        f.flush()
        os.fsync(f.fileno())
    shutil.copystat(doc, tmp)  # mode, times, and user.* xattrs (ones that cannot be set are skipped)
    os.replace(tmp, doc)
    assert doc.read_text() == "second draft\n"
    assert stat.S_IMODE(doc.stat().st_mode) == 0o640
    assert os.getxattr(doc, "user.editor.tag") == b"draft"
    assert os.getxattr(doc, "user.mime_type") == b"text/plain"
    assert os.getxattr(doc, "user.cowfs.type") == b"file"
    assert sorted(os.listdir(doc.parent)) == ["doc.txt"]

    # Saving again as vim does: copymode, then every listed xattr by hand.
    tmp2 = doc.with_name("doc.txt.new")
    tmp2.write_text("third draft\n")
    shutil.copymode(doc, tmp2)
    refused = []
    for name in os.listxattr(doc):
        try:
            os.setxattr(tmp2, name, os.getxattr(doc, name))
        except PermissionError:
            refused.append(name)
    assert refused == []
    os.rename(tmp2, doc)
    assert doc.read_text() == "third draft\n"
    assert stat.S_IMODE(doc.stat().st_mode) == 0o640
    assert os.getxattr(doc, "user.editor.tag") == b"draft"

    # sed -i: sed writes a temp file in the same folder, copies the mode and renames it over.
    conf = ws / "app.conf"
    conf.write_text("".join(f"key{i} = old\n" for i in range(200)))
    os.chmod(conf, 0o604)
    run("sed", "-i", "s/old/new/; /key7 /d", conf)
    expected = "".join(f"key{i} = new\n" for i in range(200) if i != 7)
    assert conf.read_text() == expected
    assert stat.S_IMODE(conf.stat().st_mode) == 0o604
    run("sed", "-i.bak", "1s/^/# edited\\n/", conf)
    assert conf.read_text() == "# edited\n" + expected
    assert (ws / "app.conf.bak").read_text() == expected
    assert sorted(os.listdir(ws)) == ["app.conf", "app.conf.bak", "notes"]
    first.umount()

    second = mount_factory("edit-again")
    ws = workspace(second)
    doc = ws / "notes" / "doc.txt"
    assert doc.read_text() == "third draft\n"
    assert stat.S_IMODE(doc.stat().st_mode) == 0o640
    assert os.getxattr(doc, "user.editor.tag") == b"draft"
    assert sorted(os.listdir(doc.parent)) == ["doc.txt"]
    assert (ws / "app.conf").read_text() == "# edited\n" + expected
    assert stat.S_IMODE((ws / "app.conf").stat().st_mode) == 0o604
    assert (ws / "app.conf.bak").read_text() == expected


# -- sqlite and locks ----------------------------------------------------------------

SQLITE_WRITER = textwrap.dedent("""
    import sqlite3, sys
    path, who, transactions, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    con = sqlite3.connect(path, timeout=60, isolation_level=None)
    for t in range(transactions):
        con.execute("BEGIN IMMEDIATE")
        con.executemany("INSERT INTO t(who, n, payload) VALUES (?, ?, ?)",
                        [(who, t * rows + r, "p" * 200) for r in range(rows)])
        con.execute("COMMIT")
    con.close()
""")


def fill_database(path: Path, journal_mode: str) -> int:
    con = sqlite3.connect(path, isolation_level=None)
    assert con.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0] == journal_mode.lower()
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT, n INTEGER, payload TEXT)")
    con.execute("CREATE INDEX t_who ON t(who, n)")
    for t in range(5):
        con.execute("BEGIN")
        con.executemany("INSERT INTO t(who, n, payload) VALUES (?, ?, ?)",
                        [("main", t * 1000 + r, os.urandom(50).hex()) for r in range(1000)])
        con.execute("COMMIT")
    con.execute("BEGIN")
    con.execute("DELETE FROM t WHERE n % 7 = 0")
    con.execute("ROLLBACK")
    con.execute("UPDATE t SET payload = 'updated' WHERE n % 10 = 0")
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    count = con.execute("SELECT count(*) FROM t").fetchone()[0]
    con.close()
    return count


def check_database(path: Path, rows: int, journal_mode: str) -> None:
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == journal_mode
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == rows
        assert con.execute("SELECT count(*) FROM t WHERE payload = 'updated'").fetchone()[0] == 500
        per_writer = dict(con.execute("SELECT who, count(DISTINCT n) FROM t GROUP BY who").fetchall())
        assert per_writer == {"main": 5000, "w1": 300, "w2": 300}
    finally:
        con.close()


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_sqlite_transactions_concurrent_writers_and_remount(mount_factory, journal_mode):
    first = mount_factory("sql")
    ws = workspace(first)
    db = ws / "db" / "agent.sqlite"
    db.parent.mkdir()
    rows = fill_database(db, journal_mode)
    assert rows == 5000

    # Two processes writing at once: sqlite's POSIX locks keep them apart.
    writers = [
        subprocess.Popen([sys.executable, "-c", SQLITE_WRITER, str(db), who, "15", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for who in ("w1", "w2")
    ]
    for w in writers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    rows += 2 * 15 * 20
    check_database(db, rows, journal_mode)
    cli = run("sqlite3", db, "PRAGMA integrity_check; SELECT count(*) FROM t;")
    assert cli.split() == ["ok", str(rows)]
    first.umount()

    second = mount_factory("sql-again")
    db = workspace(second) / "db" / "agent.sqlite"
    check_database(db, rows, journal_mode)
    assert run("sqlite3", db, "PRAGMA integrity_check;").strip() == "ok"
    assert sorted(os.listdir(db.parent)) == ["agent.sqlite"]


def test_sqlite_commit_survives_a_following_rollback(mount_factory):
    first = mount_factory("hot", extra=["--write-back-delay", "1"])  # the default delay
    db = workspace(first) / "agent.sqlite"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.execute("BEGIN")
    con.executemany("INSERT INTO t(v) VALUES (?)", [("before",)] * 1000)
    con.execute("COMMIT")
    first.sync()
    # Committed: its journal was fsync'ed (uploaded) and then deleted.
    con.execute("UPDATE t SET v = 'after'")
    # Rolled back: a new journal, written but never fsync'ed, deleted at once.
    con.execute("BEGIN")
    con.execute("DELETE FROM t")
    con.execute("ROLLBACK")
    assert con.execute("SELECT v, count(*) FROM t GROUP BY v").fetchall() == [("after", 1000)]
    con.close()
    first.umount()

    db = workspace(mount_factory("hot-again")) / "agent.sqlite"
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("SELECT v, count(*) FROM t GROUP BY v").fetchall() == [("after", 1000)]
    finally:
        con.close()
    assert sorted(os.listdir(db.parent)) == ["agent.sqlite"]


LOCK_PROBE = textwrap.dedent("""
    import fcntl, sys
    path, kind = sys.argv[1], sys.argv[2]
    with open(path, "r+b") as f:
        try:
            if kind == "flock":
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
        except BlockingIOError:
            print("busy")
        else:
            print("acquired")
""")


@pytest.mark.parametrize("kind", ["flock", "lockf"])
def test_flock_and_lockf_exclude_another_process(mnt, ws, kind):
    path = ws / "lockfile"
    path.write_bytes(b"0" * 100)

    def probe() -> str:
        return run(sys.executable, "-c", LOCK_PROBE, path, kind).strip()

    with open(path, "r+b") as f:
        if kind == "flock":
            fcntl.flock(f, fcntl.LOCK_EX)
        else:
            fcntl.lockf(f, fcntl.LOCK_EX, 10, 0)
        assert probe() == "busy"
        if kind == "flock":
            fcntl.flock(f, fcntl.LOCK_UN)
        else:
            fcntl.lockf(f, fcntl.LOCK_UN, 10, 0)
        assert probe() == "acquired"
        if kind == "lockf":
            fcntl.lockf(f, fcntl.LOCK_EX, 10, 20)  # a range that does not overlap the probe's
            assert probe() == "acquired"


def test_xattr_preserving_copies_inside_the_mount(mnt, ws):
    src = ws / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    os.setxattr(src / "a.txt", "user.origin", b"agent")
    run("cp", "-r", "--preserve=mode,timestamps,xattr", src, ws / "cp-copy")
    run("rsync", "-aX", f"{src}/", ws / "rsync-copy")
    for copy in ("cp-copy", "rsync-copy"):
        assert os.getxattr(ws / copy / "a.txt", "user.origin") == b"agent"
        assert os.getxattr(ws / copy / "a.txt", "user.cowfs.type") == b"file"


# -- python -m venv + pip --------------------------------------------------------------


def make_wheel(folder: Path) -> Path:
    """A pure-Python wheel with a module and a console script, written by hand (no network)."""
    dist = "cowfs_probe-1.0.dist-info"
    files = {
        "cowfs_probe/__init__.py": b'VALUE = "probe-ok"\n\n\ndef main():\n    print(VALUE)\n',
        "cowfs_probe/data/words.txt": b"alpha\nbeta\n",
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: cowfs-probe\nVersion: 1.0\nSummary: test\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: cowfs-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": b"[console_scripts]\ncowfs-probe = cowfs_probe:main\n",
        f"{dist}/top_level.txt": b"cowfs_probe\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "cowfs_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return wheel


def test_venv_and_pip_install_of_a_local_wheel(mount_factory, tmp_path):
    wheels = make_wheel(tmp_path / "wheels").parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1", "HOME": str(tmp_path)})
    first = mount_factory("venv")
    venv = workspace(first) / "venv"
    run(sys.executable, "-m", "venv", venv, env=env)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels, "cowfs-probe", env=env)
    assert run(python, "-c", "import cowfs_probe, sys; print(cowfs_probe.VALUE, sys.prefix)", env=env).split() == \
        ["probe-ok", str(venv)]
    assert run(venv / "bin" / "cowfs-probe", env=env).strip() == "probe-ok"
    run(python, "-m", "pip", "check", env=env)
    assert "cowfs-probe" in run(python, "-m", "pip", "list", "--format=freeze", env=env)
    first.umount()

    # Same mount point (scripts' shebangs name it), empty cache.
    second = mount_factory("venv", cache=tmp_path / "venv-fresh-cache")
    venv = workspace(second) / "venv"
    python = venv / "bin" / "python"
    assert run(python, "-c", "import cowfs_probe; print(cowfs_probe.VALUE)", env=env).strip() == "probe-ok"
    assert run(venv / "bin" / "cowfs-probe", env=env).strip() == "probe-ok"
    run(python, "-m", "pip", "uninstall", "-y", "-q", "cowfs-probe", env=env)
    gone = subprocess.run([python, "-c", "import cowfs_probe"], check=False, env=env, capture_output=True,
                          timeout=60)
    assert gone.returncode != 0
    assert not (venv / "bin" / "cowfs-probe").exists()


# -- rsync -----------------------------------------------------------------------------


def make_rsync_tree(root: Path) -> None:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    specs = [
        ("top.txt", b"top\n", 0o644),
        ("run.sh", b"#!/bin/sh\nexit 0\n", 0o755),
        ("secret", b"s3cr3t", 0o600),
        ("readonly.txt", b"read only", 0o444),
        (".hidden", b"dot", 0o640),
        ("empty", b"", 0o644),
        ("a/big.bin", os.urandom(3 * 1024 * 1024 + 17), 0o644),
        ("a/b/mid.txt", b"mid" * 1000, 0o664),
        ("a/b/c/deep.txt", b"deep", 0o700),
        ("a/b/c/with space.txt", b"space", 0o644),
    ]
    for i, (name, data, mode) in enumerate(specs):
        path = root / name
        path.write_bytes(data)
        os.chmod(path, mode)
        os.utime(path, ns=(1_600_000_000_000_000_000 + i * 86_400_000_000_123,) * 2)
    os.symlink("b/mid.txt", root / "a" / "link-to-mid")
    os.symlink("../../top.txt", root / "a" / "b" / "link-up")
    os.symlink("does-not-exist", root / "dangling")
    os.chmod(root / "a" / "b", 0o750)
    for i, d in enumerate(["a/b/c", "a/b", "a", "empty-dir"]):
        os.utime(root / d, ns=(1_500_000_000_000_000_000 + i * 1_000_000_000,) * 2)


def dir_times(root: Path) -> dict[str, int]:
    return {os.path.relpath(d, root): os.stat(d).st_mtime_ns for d, _, _ in os.walk(root) if d != str(root)}


def test_rsync_into_and_out_of_the_mount_preserves_everything(mount_factory, tmp_path):
    src = tmp_path / "src"
    make_rsync_tree(src)
    want = snapshot(src)
    first = mount_factory("rsync")
    dst = workspace(first) / "dst"
    run("rsync", "-a", f"{src}/", dst)
    assert diff(snapshot(dst), want) == []
    assert dir_times(dst) == dir_times(src)
    assert run("rsync", "-a", "-i", f"{src}/", dst) == ""

    out = tmp_path / "out"
    run("rsync", "-a", f"{dst}/", out)
    assert diff(snapshot(out), want) == []
    assert dir_times(out) == dir_times(src)
    first.umount()

    second = mount_factory("rsync-again")
    dst = workspace(second) / "dst"
    assert diff(snapshot(dst), want) == []
    assert run("rsync", "-a", "-i", f"{src}/", dst) == ""
    # A change on the source is itemized once, and only once.
    (src / "a" / "b" / "mid.txt").write_bytes(b"changed")
    itemized = run("rsync", "-a", "-i", f"{src}/", dst).splitlines()
    assert any(line.endswith("a/b/mid.txt") for line in itemized), itemized
    assert run("rsync", "-a", "-i", f"{src}/", dst) == ""
    assert (dst / "a" / "b" / "mid.txt").read_bytes() == b"changed"


# -- tar, find, du, df, cp, mv, ln, touch, chmod ------------------------------------------


def make_source_tree(root: Path) -> int:
    """2,000 small files in nested folders, with symlinks; returns the number of entries."""
    count = 0
    for d in range(10):
        for s in range(4):
            folder = root / f"pkg{d}" / f"sub{s}"
            folder.mkdir(parents=True)
            count += 1 + (s == 0)
            for f in range(50):
                path = folder / f"mod{f}.py"
                path.write_bytes(f"# pkg{d}/sub{s}/mod{f}\n".encode() * (1 + (d * 7 + s * 3 + f) % 97))
                os.chmod(path, (0o644, 0o755, 0o600, 0o664)[f % 4])
                os.utime(path, ns=(1_650_000_000_000_000_000 + (d * 1000 + s * 100 + f) * 1_000_003_000,) * 2)
                count += 1
            os.symlink(f"mod{s}.py", folder / "latest.py")
            count += 1
        os.symlink(f"pkg{d}/sub0", root / f"alias{d}")
        count += 1
    return count


def apply_changes(tree: Path) -> None:
    """The same command lines, run on the mount and on a local reference copy."""
    run("cp", "-a", tree / "pkg0", tree / "pkg0-copy")
    run("mv", tree / "pkg1" / "sub2", tree / "pkg2" / "moved")
    run("mv", tree / "pkg3" / "sub0" / "mod1.py", tree / "pkg4" / "renamed.py")
    run("ln", "-s", "../pkg0/sub0/mod0.py", tree / "pkg5" / "link-to-mod0")
    run("touch", "-d", "2020-01-02 03:04:05", tree / "pkg6" / "sub1" / "mod3.py")
    run("chmod", "-R", "go-rwx", tree / "pkg7")
    run("chmod", "-R", "a+rX", tree / "pkg8")


def test_tar_find_du_df_cp_mv_ln_touch_chmod_and_remount(mount_factory, tmp_path):
    src = tmp_path / "src"
    entries = make_source_tree(src)
    archive = tmp_path / "src.tar"
    run("tar", "-cf", archive, "-C", src, ".")
    ref = tmp_path / "ref"
    ref.mkdir()
    run("tar", "-xf", archive, "-C", ref)

    first = mount_factory("tar")
    tree = workspace(first) / "tree"
    tree.mkdir()
    run("tar", "-xf", archive, "-C", tree)
    assert run("find", tree, "-mindepth", "1", "-printf", ".").count(".") == entries
    assert diff(snapshot(tree), snapshot(ref)) == []
    for test in (["-type", "l"], ["-type", "f", "-perm", "-u+x"], ["-type", "d", "-name", "sub*"]):
        found = run("find", tree, *test, "-printf", "%P\n").splitlines()
        assert sorted(found) == sorted(run("find", ref, *test, "-printf", "%P\n").splitlines()) and found, test

    apparent = sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(tree) for f in fs)
    du_kib = int(run("du", "-s", "-k", tree).split()[0])
    assert apparent // 1024 <= du_kib <= (apparent + 8192 * entries) // 1024, (du_kib, apparent)
    du_apparent = int(run("du", "-s", "-b", tree).split()[0])
    assert du_apparent >= apparent
    df = run("df", "-P", "-k", tree).splitlines()
    fields = df[1].split()
    total, used, avail = int(fields[1]), int(fields[2]), int(fields[3])
    assert total > 0 and avail > 0 and used >= 0 and used + avail <= total, df

    apply_changes(tree)
    apply_changes(ref)
    expected_mtime = time.mktime(time.strptime("2020-01-02 03:04:05", "%Y-%m-%d %H:%M:%S"))
    assert (tree / "pkg6" / "sub1" / "mod3.py").stat().st_mtime == expected_mtime
    want = snapshot(ref)
    assert diff(snapshot(tree), want) == []
    first.umount()

    second = mount_factory("tar-again")
    tree = workspace(second) / "tree"
    assert diff(snapshot(tree), want) == []
    assert (tree / "pkg6" / "sub1" / "mod3.py").stat().st_mtime == expected_mtime
    run("diff", "-r", "--no-dereference", ref, tree)
    # Reading the tree back: tar exits 1 if a file changes while it reads it.
    run("tar", "-cf", tmp_path / "back.tar", "-C", tree, ".")
    back = tmp_path / "back"
    back.mkdir()
    run("tar", "-xf", tmp_path / "back.tar", "-C", back)
    assert diff(snapshot(back), want) == []


# -- what a file manager expects ----------------------------------------------------------


class Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64), ("d_reclen", ctypes.c_ushort),
                ("d_type", ctypes.c_ubyte), ("d_name", ctypes.c_char * 256)]


def raw_readdir(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (d_type, d_ino) straight from readdir(3), with no stat."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir64.restype = ctypes.POINTER(Dirent)
    libc.readdir64.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]
    handle = libc.opendir(os.fsencode(path))
    assert handle, os.strerror(ctypes.get_errno())
    out = {}
    try:
        while True:
            entry = libc.readdir64(handle)
            if not entry:
                break
            name = os.fsdecode(entry.contents.d_name)
            if name not in (".", ".."):
                out[name] = (entry.contents.d_type, entry.contents.d_ino)
    finally:
        libc.closedir(handle)
    return out


DT_DIR, DT_REG, DT_LNK = 4, 8, 10
NAMES = {
    "plain.txt": "file", "with space.txt": "file", " leading space": "file", "caf\u00e9.md": "file",
    "cafe\u0301.md": "file", "100% a+b=c?.txt": "file", "#tag [1] {x} ~$": "file",
    "日本語のファイル.txt": "file", "emoji 🚀.json": "file", ".hidden": "file", ".hidden-dir": "dir",
    "folder with spaces": "dir", "Ünïcödé-dir": "dir", "link to plain": "link", ".hidden-link": "link",
}


def test_file_manager_sees_types_sizes_blocks_and_odd_names(mount_factory):
    first = mount_factory("fm")
    ws = workspace(first)
    sizes = {}
    for i, (name, kind) in enumerate(NAMES.items()):
        if kind == "file":
            sizes[name] = i * 3001 + 1
            (ws / name).write_bytes(os.urandom(sizes[name]))
        elif kind == "dir":
            (ws / name).mkdir()
            (ws / name / "inside.txt").write_text(name)
    os.symlink("plain.txt", ws / "link to plain")
    os.symlink(".hidden-dir", ws / ".hidden-link")

    def check(ws: Path) -> None:
        assert sorted(os.listdir(ws)) == sorted(NAMES)
        raw = raw_readdir(ws)
        want_type = {"file": DT_REG, "dir": DT_DIR, "link": DT_LNK}
        assert {n: t for n, (t, _) in raw.items()} == {n: want_type[k] for n, k in NAMES.items()}
        for entry in os.scandir(ws):
            kind = NAMES[entry.name]
            assert entry.is_dir(follow_symlinks=False) == (kind == "dir"), entry.name
            assert entry.is_file(follow_symlinks=False) == (kind == "file"), entry.name
            assert entry.is_symlink() == (kind == "link"), entry.name
            st = entry.stat(follow_symlinks=False)
            assert entry.inode() == st.st_ino == raw[entry.name][1], entry.name
            assert st.st_blksize > 0
            if kind == "file":
                assert st.st_size == sizes[entry.name]
                assert st.st_blocks * 512 >= st.st_size, entry.name
                assert st.st_blocks * 512 < st.st_size + 64 * 1024, entry.name
        assert (ws / "link to plain").read_bytes() == (ws / "plain.txt").read_bytes()
        assert (ws / ".hidden-link" / "inside.txt").read_text() == ".hidden-dir"
        # ls -s and du report space from st_blocks: never less than the bytes.
        for line in run("ls", "-1sk", "--", *(ws / n for n in sizes)).splitlines():
            kib, _, path = line.strip().partition(" ")
            assert int(kib) * 1024 >= sizes[Path(path).name], line
        assert int(run("du", "-sk", ws).split()[0]) * 1024 >= sum(sizes.values())
        listing = run("ls", "-la", ws)
        assert all(name in listing for name in NAMES)
        vfs = os.statvfs(ws)
        assert vfs.f_bsize > 0 and vfs.f_blocks > 0 and vfs.f_bavail > 0 and vfs.f_namemax >= 255

    check(ws)
    first.umount()
    check(workspace(mount_factory("fm-again")))
