"""Model-based test: random operation sequences on the mount and on a local folder.

After every step both trees must agree (names, types, sizes, bytes, modes,
symlink targets) and every call must fail or succeed alike; after each
sequence a second mount with an empty cache must show the same tree.
"""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

#: Every test here mounts FUSE (``-m "not mount"`` leaves them out).
pytestmark = pytest.mark.mount

NAMES = st.sampled_from(["a", "b", "c", "d e", "ü"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map(lambda parts: "/".join(parts))
DATA = st.binary(max_size=3000)


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything the model compares, keyed by relative path."""
    tree: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st_ = os.lstat(path)
            if stat.S_ISLNK(st_.st_mode):
                tree[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                tree[rel] = ("dir", stat.S_IMODE(st_.st_mode))
            else:
                tree[rel] = ("file", stat.S_IMODE(st_.st_mode), st_.st_size, path.read_bytes())
        dirnames[:] = [d for d in dirnames if not os.path.islink(Path(dirpath) / d)]
    return tree


def outcome(fn, *args):
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return 0


def test_mount_behaves_like_a_local_folder(mount_factory, tmp_path):
    mnt = mount_factory("model")
    counter = itertools.count()

    class FsModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            n = next(counter)
            self.ws_name = f"t1/ws{n}"
            self.real = mnt.path / self.ws_name
            self.real.mkdir(parents=True)
            self.model = tmp_path / f"model{n}"
            self.model.mkdir()

        def apply(self, op, *rel_args, extra=()):
            expected = outcome(op, *[self.model / a for a in rel_args], *extra)
            got = outcome(op, *[self.real / a for a in rel_args], *extra)
            assert got == expected, f"{op.__name__}{rel_args}: mount gave errno {got}, local disk {expected}"
            assert snapshot(self.real) == snapshot(self.model)

        @rule(path=PATHS, data=DATA)
        def create(self, path, data):
            self.apply(Path.write_bytes, path, extra=(data,))

        @rule(path=PATHS, offset=st.integers(0, 5000), data=DATA)
        def write_at(self, path, offset, data):
            def write_at(p, offset, data):
                with open(p, "r+b") as f:
                    f.seek(offset)
                    f.write(data)
            self.apply(write_at, path, extra=(offset, data))

        @rule(path=PATHS, data=DATA)
        def append(self, path, data):
            def append(p, data):
                with open(p, "ab") as f:
                    f.write(data)
            self.apply(append, path, extra=(data,))

        @rule(path=PATHS, size=st.integers(0, 6000))
        def truncate(self, path, size):
            self.apply(os.truncate, path, extra=(size,))

        @rule(src=PATHS, dst=PATHS)
        def rename(self, src, dst):
            self.apply(os.rename, src, dst)

        @rule(path=PATHS)
        def unlink(self, path):
            self.apply(os.unlink, path)

        @rule(path=PATHS)
        def mkdir(self, path):
            self.apply(os.mkdir, path)

        @rule(path=PATHS)
        def rmdir(self, path):
            self.apply(os.rmdir, path)

        @rule(path=PATHS, link_to=NAMES)
        def symlink(self, path, link_to):
            self.apply(lambda p, t: os.symlink(t, p), path, extra=(link_to,))

        @rule(path=PATHS, mode=st.sampled_from([0o600, 0o644, 0o755, 0o700]))
        def chmod(self, path, mode):
            self.apply(lambda p, m: None if p.is_symlink() else os.chmod(p, m), path, extra=(mode,))

        def teardown(self) -> None:
            mnt.sync()
            fresh = mount_factory(f"fresh-{self.ws_name.replace('/', '-')}")
            try:
                assert snapshot(fresh.path / self.ws_name) == snapshot(self.model)
            finally:
                fresh.umount()

    run_state_machine_as_test(
        FsModel,
        settings=settings(
            max_examples=int(os.environ.get("COWFS_MODEL_EXAMPLES", "12")),
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
