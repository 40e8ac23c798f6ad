"""The filesystem core in-process: no FUSE, no network, no sleeps.

``Cores`` builds the namespace, write-back, journal, cache and workspace hooks
the way the daemon does, over a store that answers like S3 where the core can
tell (``S3LikeStore``), on trio's ``MockClock``: time moves only when a test
says so (``Cores.advance``), and ``settle`` waits until every task and worker
thread has nothing left to do, so what a test asserts does not depend on how
fast the machine is. Several cores over one store are several mounts of one
bucket. Tests drive the core through the operations the kernel calls
(``fs.py``'s), by path with the helpers of ``Core``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import threading
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, BinaryIO, Callable, Iterator, TypeVar

import pyfuse3
import trio
import trio.testing

from cowfs.activity import Activity
from cowfs.batches import RecordCheck
from cowfs.cache import ContentCache
from cowfs.changes import ChangeMarks
from cowfs.summaries import Summaries
from cowfs.daemon import THREADS, store_events
from cowfs.errors import NotFound, StoreError
from cowfs.gateway import StoreCalls
from cowfs.hooks import WorkspaceHooks
from cowfs.journal import Journal
from cowfs.keys import KeyMap
from cowfs.namespace import Namespace
from cowfs.reachability import Reachability
from cowfs.store.base import ListPage, ObjectInfo, Piece, Progress
from cowfs.store.local import LocalStore
from cowfs.writeback import WriteBack

if TYPE_CHECKING:
    from cowfs.namespace import Node

#: Where the mock clock starts: a monotonic clock counts from boot, and the core takes
#: times near 0 for "never".
CLOCK_START = 10_000.0
#: A test still waiting after this many real seconds waits for a clock nobody moves.
HUNG_AFTER = 60.0
CACHE_SIZE = 1024**3
READ_SIZE = 128 * 1024
T = TypeVar("T")


class S3LikeStore(LocalStore):
    """A local store that answers as S3 does where the core can tell: a request is a
    round trip (``remote``), and listings carry no metadata (a HEAD or GET brings
    it). Every request is noted, as ``(kind, key)``; kinds can be refused or held
    back on demand."""

    remote = True

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.requests: list[tuple[str, str]] = []
        self.refusing: set[str] = set()
        #: Keys listings leave out, as a server whose listings lag its writes does.
        self.unlisted: set[str] = set()
        #: The kinds held back (``holding``), and how many requests of each wait.
        self.holds: dict[str, threading.Event] = {}
        #: The kinds let through one request at a time (``stepping``).
        self.steps: dict[str, threading.Semaphore] = {}
        self._waiting: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Requests waiting in a ``holding`` block."""
        with self._lock:
            return sum(self._waiting.values())

    def count(self, kind: str, prefix: str = "") -> int:
        """Requests of ``kind`` made so far for keys (or listing prefixes) starting with ``prefix``."""
        with self._lock:
            return sum(1 for k, key in self.requests if k == kind and key.startswith(prefix))

    def mark(self) -> int:
        """A point in the requests, for ``since``."""
        with self._lock:
            return len(self.requests)

    def since(self, mark: int) -> Counter[tuple[str, str]]:
        """The requests made after ``mark``, each ``(kind, key)`` with how often."""
        with self._lock:
            return Counter(self.requests[mark:])

    @contextlib.contextmanager
    def holding(self, kind: str) -> Iterator[None]:
        """Requests of ``kind`` wait in their worker thread until the block ends."""
        gate = threading.Event()
        with self._lock:
            self.holds[kind] = gate
        try:
            yield
        finally:
            with self._lock:
                del self.holds[kind]
                del self._waiting[kind]
            gate.set()

    @contextlib.contextmanager
    def stepping(self, kind: str) -> Iterator[Callable[[], None]]:
        """Requests of ``kind`` wait in their worker thread until the test lets one through
        (the function this yields); all go once the block ends."""
        gate = threading.Semaphore(0)
        with self._lock:
            self.steps[kind] = gate

        def step() -> None:
            """Let one request waiting now go on (none if none waits)."""
            with self._lock:
                if self._waiting[kind] > 0:
                    self._waiting[kind] -= 1
                    gate.release()

        try:
            yield step
        finally:
            with self._lock:
                del self.steps[kind]
                self._waiting.pop(kind, None)
            gate.release(1000)

    def _ask(self, kind: str, key: str) -> None:
        with self._lock:
            self.requests.append((kind, key))
            if kind in self.refusing:
                raise StoreError(f"{kind} {key}: the test store refuses it")
            gate = self.holds.get(kind)
            step = self.steps.get(kind)
            if gate is not None or step is not None:
                self._waiting[kind] += 1
        if gate is not None:
            gate.wait()
        if step is not None:
            step.acquire()

    def stored(self, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix`` and its bytes (not counted: the test looking)."""
        return {info.key: LocalStore.get(self, info.key)[0]
                for page in LocalStore.list_pages(self, prefix, None) for info in page.objects}

    def head(self, key: str) -> ObjectInfo:
        self._ask("head", key)
        return super().head(key)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> tuple[bytes, ObjectInfo]:
        self._ask("get", key)
        return super().get(key, start, end)

    def get_to_file(self, key: str, out: BinaryIO, progress: Progress | None = None) -> ObjectInfo:
        self._ask("get", key)
        return super().get_to_file(key, out, progress)

    def stream(self, key: str, piece: Piece) -> ObjectInfo:
        self._ask("get", key)
        return super().stream(key, piece)

    def get_range_into(self, key: str, info: ObjectInfo, fd: int, start: int, end: int,
                       progress: Progress | None = None) -> None:
        self._ask("get", key)
        super().get_range_into(key, info, fd, start, end, progress)

    def put(self, key: str, body: bytes | BinaryIO, metadata: dict[str, str], if_match: str | None = None,
            if_none_match: bool = False) -> str:
        self._ask("put", key)
        return super().put(key, body, metadata, if_match, if_none_match)

    def copy(self, src: str, dst: str, metadata: dict[str, str] | None = None) -> str:
        self._ask("copy", dst)
        return super().copy(src, dst, metadata)

    def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            self._ask("delete", key)
        super().delete_many(keys)

    def list_pages(self, prefix: str, delimiter: str | None = "/",
                   start_after: str | None = None) -> Iterator[ListPage]:
        for page in super().list_pages(prefix, delimiter, start_after):
            self._ask("list", prefix)
            objects = [dataclasses.replace(o, metadata=None) for o in page.objects if o.key not in self.unlisted]
            yield ListPage(objects, page.prefixes, page.more)


@dataclasses.dataclass
class Core:
    """One mount's core, and path-based helpers over the operations the kernel calls."""

    ns: Namespace
    writeback: WriteBack
    journal: Journal
    store: S3LikeStore
    marks: ChangeMarks | None = None
    summaries: Summaries | None = None
    #: The entries taken back from the kernel, as ``(folder inode, name)``, in order.
    taken_back: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)
    #: The inodes whose pages the kernel was asked to let go of, in order.
    pages_dropped: list[int] = dataclasses.field(default_factory=list)

    async def sync(self) -> None:
        """``cowfs sync``: every pending change in the store, then this mount's change marks and summaries."""
        await self.ns.sync()
        if self.marks is not None:
            await self.marks.flush()
        if self.summaries is not None:
            await self.summaries.flush()

    async def find(self, path: str) -> Node:
        """The node at ``path`` (a lookup per component, as the kernel makes them)."""
        node = self.ns.node(pyfuse3.ROOT_INODE)
        for name in filter(None, path.split("/")):
            node = await self.ns.lookup(node.ino, name.encode())
        return node

    async def exists(self, path: str) -> bool:
        try:
            await self.find(path)
        except NotFound:
            return False
        return True

    async def makedirs(self, path: str) -> Node:
        node = self.ns.node(pyfuse3.ROOT_INODE)
        for name in filter(None, path.split("/")):
            try:
                node = await self.ns.lookup(node.ino, name.encode())
            except NotFound:
                node = await self.ns.mkdir(node.ino, name.encode(), 0o755, os.getuid(), os.getgid())
        return node

    async def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        """A handle on ``path``, made by create when absent and ``O_CREAT`` is given."""
        parent, _, name = path.rpartition("/")
        try:
            node = await self.find(path)
        except NotFound:
            if not flags & os.O_CREAT:
                raise
            folder = await self.find(parent)
            _, fh = await self.ns.create(folder.ino, name.encode(), 0o644, os.getuid(), os.getgid())
            return fh
        return (await self.ns.open(node.ino, flags)).fh

    async def close(self, fh: int) -> None:
        """close(2): flush, then the kernel's release."""
        await self.ns.flush(fh)
        await self.ns.release(fh)

    async def write(self, path: str, data: bytes, *, append: bool = False) -> None:
        """``open(path, "ab" if append else "wb").write(data)``, closed."""
        fh = await self.open(path, os.O_WRONLY | os.O_CREAT | (0 if append else os.O_TRUNC))
        offset = self.ns.handle(fh).node.size if append else 0
        await self.ns.write(fh, offset, data)
        await self.close(fh)

    async def read_handle(self, fh: int) -> bytes:
        out = b""
        while chunk := await self.ns.read(fh, len(out), READ_SIZE):
            out += chunk
        return out

    async def read(self, path: str) -> bytes:
        fh = await self.open(path)
        try:
            return await self.read_handle(fh)
        finally:
            await self.ns.release(fh)

    async def listdir(self, path: str) -> list[str]:
        fh = await self.ns.opendir((await self.find(path)).ino)
        try:
            return [name for name, _ in await self.ns.readdir(fh, 0)]
        finally:
            self.ns.release_handle(fh)

    async def walk(self, path: str) -> set[str]:
        """Every path under ``path``, relative to it, as ``find`` or ``os.walk`` reach them."""
        found: set[str] = set()
        for name in await self.listdir(path):
            found.add(name)
            if stat.S_ISDIR((await self.find(f"{path}/{name}")).mode):
                found.update(f"{name}/{below}" for below in await self.walk(f"{path}/{name}"))
        return found

    async def unlink(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        await self.ns.unlink((await self.find(parent)).ino, name.encode())

    async def rmdir(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        await self.ns.rmdir((await self.find(parent)).ino, name.encode())

    async def rename(self, old: str, new: str) -> None:
        (old_parent, _, old_name), (new_parent, _, new_name) = old.rpartition("/"), new.rpartition("/")
        await self.ns.rename((await self.find(old_parent)).ino, old_name.encode(),
                             (await self.find(new_parent)).ino, new_name.encode(), 0)


class Cores:
    """Cores of the filesystem, as the daemon builds them, over one bucket: ``store``
    is that bucket as another writer (or the test) sees it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = S3LikeStore(root / "store")
        self._stores = [self.store]

    @asynccontextmanager
    async def mount(self, *, metadata_ttl: float = 1.0, write_back_delay: float = 1.0,
                    store_timeout: float = 30.0, foreign_ttl: float | None = None,
                    cache_size: int = CACHE_SIZE) -> AsyncIterator[Core]:
        """A core serving until the block ends (then stopped, not flushed: a test syncs what it means to).

        With ``foreign_ttl`` it writes and reads change marks and attribute summaries, as the daemon does."""
        name = f"core{len(self._stores)}"
        base = self.root / name
        tmp_dir = base / "tmp"
        tmp_dir.mkdir(parents=True)
        store = S3LikeStore(self.store.root)
        self._stores.append(store)
        journal = Journal(base / "journal")
        cache = ContentCache(base / "cache", cache_size)
        calls = StoreCalls(trio.CapacityLimiter(THREADS), Reachability(store.check), store_timeout)
        activity = Activity(store, calls)
        records = RecordCheck(store, calls)
        marks = None if foreign_ttl is None else ChangeMarks(store, calls, name, ttl=metadata_ttl,
                                                             foreign_ttl=foreign_ttl, records=records,
                                                             removed=activity.forgotten, clock=trio.current_time)
        summaries = None if foreign_ttl is None else Summaries(store, calls, records=records,
                                                               forgotten=activity.forgotten)
        stored, deleted = store_events(activity, marks, summaries)
        writeback = WriteBack(store, journal, calls, delay=write_back_delay, clock=trio.current_time,
                              on_stored=stored, on_deleted=deleted)
        hooks = WorkspaceHooks(store, calls, activity, lambda: {"listings": ns.listings})
        taken_back: list[tuple[int, bytes]] = []
        pages_dropped: list[int] = []
        ns = Namespace(store, KeyMap(), cache, journal, writeback, calls, tmp_dir, hooks, uid=os.getuid(),
                       gid=os.getgid(), metadata_ttl=metadata_ttl, clock=trio.current_time, marks=marks,
                       summaries=summaries, kernel=lambda entries, inodes: taken_back.extend(entries),
                       kernel_pages=pages_dropped.append)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writeback.run)
                await nursery.start(ns.run)
                nursery.start_soon(activity.run)
                if marks is not None:
                    nursery.start_soon(marks.run)
                if summaries is not None:
                    nursery.start_soon(summaries.run)
                yield Core(ns, writeback, journal, store, marks, summaries, taken_back, pages_dropped)
                nursery.cancel_scope.cancel()
        finally:
            cache.close()
            journal.close()

    async def settle(self) -> None:
        """Until every task waits on the clock or on a request held back on purpose."""
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if trio.testing.active_thread_count() <= sum(store.held for store in self._stores):
                # What a thread handed to the trio thread (``run_sync_soon``) before it blocked runs first.
                await trio.testing.wait_all_tasks_blocked()
                if trio.testing.active_thread_count() <= sum(store.held for store in self._stores):
                    return
                continue
            if any(store.holds or store.steps for store in self._stores):
                # A thread may be on its way to a held request: wait for threads a moment at a time.
                await trio.to_thread.run_sync(threading.Event().wait, 0.001)
            else:
                await trio.testing.wait_all_threads_completed()

    async def at_once(self, op: Callable[[], Awaitable[T]]) -> T:
        """``op``'s result; fails when ``op`` waits for the clock or for a request held back."""
        done: list[T] = []

        async def run() -> None:
            done.append(await op())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await self.settle()
            nursery.cancel_scope.cancel()
        assert done, "it waited (for a held request or for the clock)"
        return done[0]

    async def list_slowly(self, core: Core, path: str, page_size: int, seconds_per_page: float) -> list[str]:
        """``listdir`` of ``path`` whose listings come ``page_size`` keys a page, one page every
        ``seconds_per_page`` of the mock clock."""
        core.store.page_size = page_size
        listed: list[list[str]] = []

        async def listdir() -> None:
            listed.append(await core.listdir(path))

        async with trio.open_nursery() as nursery:
            with core.store.stepping("list") as step:
                nursery.start_soon(listdir)
                for _ in range(100):
                    await self.settle()
                    if listed:
                        break
                    await self.advance(seconds_per_page)
                    step()
        assert listed, f"the listing of {path} did not end"
        return listed[0]

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the mock clock, and what falls due in them happen."""
        await self.settle()
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock), "core tests run on the mock clock (conftest)"
        clock.jump(seconds)
        await self.settle()


def _alone(group: BaseExceptionGroup) -> BaseException:
    """The one exception a group of nurseries wraps, or the group when it holds several."""
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return group


def run_on_mock_clock(test: Callable[[], Awaitable[None]]) -> None:
    """Run an async test in trio on a mock clock; fail it if it hangs for ``HUNG_AFTER`` real seconds."""

    async def guarded() -> None:
        token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            alarm = threading.Timer(HUNG_AFTER, lambda: token.run_sync_soon(scope.cancel))
            alarm.start()
            try:
                await test()
            except BaseExceptionGroup as group:
                raise _alone(group) from None
            finally:
                alarm.cancel()
        if scope.cancelled_caught:
            raise AssertionError(f"still waiting after {HUNG_AFTER:g} s of real time (for a clock nobody moves?)")

    clock = trio.testing.MockClock()
    clock.jump(CLOCK_START)
    trio.run(guarded, clock=clock)
