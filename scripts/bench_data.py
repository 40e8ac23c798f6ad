"""Test data for ``scripts/bench.py``'s larger workloads, built once per run outside every mount.

A git repository made from Python's standard library sources (what an agent
clones), a wheel written by hand (what it installs, with no network and no
build backend), and a large file whose every MiB can be checked with one
comparison (so a 2 GiB read is verified without hashing it on the clock).
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import shutil
import struct
import subprocess
import sysconfig
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
#: Fixed names and dates: the same edits give the same commit on every target.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid", "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
}
EDIT_LINE = b"\n# edited by the agent\n"
WHEEL_VALUE = "installed from a local wheel"


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git with the fixed identity and dates; its stdout."""
    done = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {args[0]} exited {done.returncode}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()


@dataclass
class AgentKit:
    """What the agent_session workload clones and installs, and what it must find afterwards."""

    bare: Path
    wheel: Path
    files: dict[str, str]  # path in the repository -> md5 of its content after the edits
    edited: list[str]
    originals: dict[str, bytes]  # the edited files before the edit (for the diffs)
    head: str  # the commit the edits make
    py_files: int
    word_lines: int  # lines of the .py files that hold the word asked for


def lines_with(data: bytes, word: str) -> int:
    """How many lines of ``data`` hold ``word`` (what grep counts)."""
    return sum(1 for line in data.split(b"\n") if word.encode() in line)


def stdlib_files(limit: int) -> dict[str, bytes]:
    """Up to ``limit`` small files of the standard library (sorted paths, ASCII names), each .py compiling."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chosen: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")
                             and not d.startswith("config-") and d.isascii())
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.isascii() or path.is_symlink() or not path.is_file() or path.stat().st_size > MiB:
                continue
            data = path.read_bytes()
            if name.endswith(".py"):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # lib2to3's test data warns on purpose
                        compile(data, str(path), "exec", dont_inherit=True)
                except (SyntaxError, ValueError):
                    continue
            chosen[path.relative_to(root).as_posix()] = data
            if len(chosen) >= limit:
                return chosen
    return chosen


def build_agent_kit(tmp: Path, n_files: int, n_edits: int, word: str) -> AgentKit:
    """A bare repository of ``n_files`` standard-library files, and the commit ``n_edits`` edits of it make."""
    work = tmp / "agent"
    src = work / "src"
    src.mkdir(parents=True)
    files = stdlib_files(n_files)
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    git("init", "-q", "-b", "main", str(src))
    git("add", "-A", cwd=src)
    git("commit", "-q", "-m", "standard library sources", cwd=src)
    bare = work / "repo.git"
    git("clone", "-q", "--bare", str(src), str(bare))
    py = sorted(rel for rel in files if rel.endswith(".py"))
    word_lines = sum(lines_with(files[rel], word) for rel in py)
    edited = py[:: max(1, len(py) // n_edits)][:n_edits]
    originals = {rel: files[rel] for rel in edited}
    for rel in edited:
        with open(src / rel, "ab") as f:
            f.write(EDIT_LINE)
        files[rel] += EDIT_LINE
    git("commit", "-q", "-a", "-m", "agent edits", cwd=src)
    head = git("rev-parse", "HEAD", cwd=src).strip()
    shutil.rmtree(src)
    return AgentKit(bare, build_wheel(work), {rel: hashlib.md5(data).hexdigest() for rel, data in files.items()},
                    edited, originals, head, len(py), word_lines)


def build_wheel(folder: Path, modules: int = 20) -> Path:
    """A pure-Python wheel written with zipfile: a package of ``modules`` small modules and its RECORD."""
    name, version = "benchpkg", "1.0"
    info = f"{name}-{version}.dist-info"
    rng = random.Random(7)
    members = {f"{name}/__init__.py": f"VALUE = {WHEEL_VALUE!r}\n".encode()}
    for i in range(modules):
        body = "".join(f"def f{j}(x):\n    return x * {rng.randint(1, 999)}\n\n" for j in range(100))
        members[f"{name}/mod{i:02d}.py"] = body.encode()
    members[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    members[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
              for path, data in members.items()]
    members[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for member, data in members.items():
            wheel.writestr(member, data)
    return path


@dataclass
class LargeFile:
    """A file of ``size`` bytes: MiB number k is k as 8 bytes, then the same random MiB's tail."""

    path: Path
    size: int
    base: bytes

    def chunk(self, k: int) -> bytes:
        return struct.pack("<Q", k) + self.base[8:]


def build_large_file(tmp: Path, mib: int, seed: int) -> LargeFile:
    large = LargeFile(tmp / "large.bin", mib * MiB, random.Random(seed).randbytes(MiB))
    with open(large.path, "wb") as out:
        for k in range(mib):
            out.write(large.chunk(k))
    return large
