"""File contents: the clean bytes, downloads beside their readers, staging files.

A file's clean bytes are the cache's: a read opens them there, else starts one
download into a file the cache takes once it is whole, and reads are answered
from it as their bytes land (``Fetch``). A file the cache could not keep whole
is read through a window of it instead (``Window``), until its last reader
lets go. A write goes to a staging file of the journal: made from the clean
bytes on the first write (for a file too big for the cache, downloaded into
it), and copied again before a change to bytes a pending record still names
(copy on write, ``writable``). An uploaded, closed staging file is handed to
the cache (``retire``).
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import trio

from ..cache import CacheBusy
from ..errors import CowfsError, NotFound, ObjectNotFound, StoreError
from ..fds import copy_fd, punch_holes
from ..fetch import Fetch
from ..ranges import window
from ..store import ObjectInfo
from ..window import Window
from .node import Node
from .services import Part, Services
from .table import Inodes
from .view import WorkspaceView

log = logging.getLogger(__name__)

#: An uploaded staging file at least this big is hard-linked into the clean cache, not
#: copied; smaller ones are copied, so that their inode can be a spare staging file.
LINK_INTO_CACHE = 1024 * 1024
#: What a write that met a full disk has the cache give back beyond its own bytes: room for
#: the writes that follow it (the kernel sends a large write in 1 MiB pieces).
SPARE_ON_FULL_DISK = 16 * 1024 * 1024


#: Has the kernel let go of the pages it caches of an inode, in a worker thread.
KernelPages = Callable[[int], None]


class Contents(Part):
    """The bytes of files: cache, downloads, staging files."""

    def __init__(self, services: Services, inodes: Inodes, view: WorkspaceView,
                 kernel_pages: KernelPages | None = None) -> None:
        """``kernel_pages`` keeps the kernel's share of a file read through a window small (``Window``)."""
        super().__init__(services, inodes)
        self.view = view
        self.kernel_pages = kernel_pages

    def uploading(self, node: Node) -> bool:
        """Whether ``node`` has an upload waiting or under way."""
        pending = node.pending
        return pending is not None and pending.source is not None and self.writeback.is_pending(pending.source)

    # -- clean bytes ------------------------------------------------------------

    async def cached(self, lookup: Callable[..., Any], key: str, etag: str) -> Any:
        """A cache lookup that never holds up the event loop: when a worker thread is
        writing to the cache, it is repeated on a thread instead of waiting here."""
        try:
            return lookup(key, etag, wait=False)
        except CacheBusy:
            return await self.calls.local(lookup, key, etag)

    async def clean_fd(self, node: Node) -> int:
        """A descriptor on the clean bytes of ``node`` (``node.lock`` held): cache hit, else the whole download."""
        while node.fd is None:
            fetch = await self._start_fetch(node)
            if fetch is not None:
                await fetch.ended()
        assert node.fd is not None
        return node.fd

    async def _start_fetch(self, node: Node) -> Fetch | None:
        """With ``node.lock`` held: the clean bytes from the cache (``node.fd`` set, None
        returned), else the download that brings them, started in the background
        when none is under way."""
        content = node.need_content()
        if content.fd is not None:
            return None
        if content.fetch is not None:
            return content.fetch
        key = self.inodes.key(node)
        fd = await self.cached(self.cache.open, key, node.etag) if node.etag else None
        if fd is not None:
            content.fd = fd
            return None
        if not self.cache.fits(node.size):
            bounded = content.fetch = Window(self.calls.timeout, *window(self.cache.limit), self._punch)
            self.nursery().start_soon(self._window, node, bounded, key)
            return bounded
        fetch = content.fetch = Fetch(self.calls.timeout)
        self.nursery().start_soon(self._fetch, node, fetch, key)
        return fetch

    async def _window(self, node: Node, bounded: Window, key: str) -> None:
        """Stream ``node``'s object through ``bounded`` until its last reader lets go; the
        cache keeps room for the window meanwhile."""
        try:
            await self.calls.local(self.cache.reserve, bounded.room)
            try:
                await self.calls.call(self._stream, key, bounded, background=True, stall=bounded.stall)
            except BaseException as exc:
                log.debug("the stream of %s ended: %s", key, exc)
                if bounded.info is None:
                    content = node.need_content()
                    if content.fetch is bounded:
                        content.fetch = None
                    bounded.close()
                    bounded.finish(exc if isinstance(exc, Exception) else StoreError(f"the download of {key} was stopped"))
                if not isinstance(exc, Exception):
                    raise
            finally:
                bounded.stream_ended()
            await bounded.gone.wait()
        finally:
            self.cache.release(bounded.room)
        if bounded.path:
            await self.calls.local(os.unlink, bounded.path)

    def _stream(self, key: str, bounded: Window) -> None:
        """The object streamed through ``bounded``, with its sparse file for ranged GETs
        (beside the cache, where its blocks are seen); blocking."""
        fd, name = tempfile.mkstemp(dir=self.services.tmp_dir)
        try:
            bounded.adopt(fd, name)
        except BaseException:
            os.unlink(name)
            raise
        try:
            self.store.stream(key, bounded.streamed_piece)
        except ObjectNotFound:
            raise NotFound(key) from None

    async def _fetch(self, node: Node, fetch: Fetch, key: str) -> None:
        """Download ``node``'s object beside its readers; once whole, the node keeps
        the descriptor while it is open or its lock holder waits for the bytes (not
        once it left the table or took a staging file meanwhile)."""
        content = node.need_content()
        asked = self.clock()
        try:
            fd, info = await self.calls.call(self.download, key, fetch, background=False, stall=fetch.stall)
        except BaseException as exc:
            log.debug("download of %s failed: %s", key, exc)
            fetch.close()
            fetch.finish(exc if isinstance(exc, Exception) else StoreError(f"the download of {key} was stopped"))
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            if content.fetch is fetch:
                content.fetch = None
        fetch.hand_over()
        fetch.finish()
        if content.fd is not None or not self.inodes.holds(node):
            os.close(fd)
            return
        node.checked_at = asked
        if info.etag != node.etag:
            node.etag, node.size = info.etag, info.size
            self.view.apply_meta(node, info.metadata or {}, info.last_modified)
        if content.open_count == 0 and not node.lock.locked():
            # Its readers are gone (they read the bytes as they landed): the cache has them,
            # and a descriptor kept here would hold the blocks of a copy the cache evicts.
            os.close(fd)
            return
        content.fd = fd

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        """Bytes of the file: from its descriptor, else from the download as they land."""
        while node.fd is None:
            content = node.need_content()
            fetch = content.fetch
            if fetch is None:
                async with node.lock:
                    fetch = await self._start_fetch(node)
                if fetch is None:
                    break
            await self._arrival(node, fetch, offset, size)
            if fetch.fd is not None and content.fd is None:
                data = fetch.read_at(offset, size)
                fetch.read_to(offset + len(data))
                if self.kernel_pages is not None and fetch.pages_due():
                    self.nursery().start_soon(self._drop_pages, self.kernel_pages, node.ino)
                return data
        fd = node.fd
        assert fd is not None
        return os.pread(fd, size, offset)

    @staticmethod
    async def _drop_pages(kernel_pages: KernelPages, ino: int) -> None:
        """The kernel lets go of its pages of ``ino``, outside the store's limiter as ``Leases``'
        take-backs: the kernel waits for reads of those pages, which may need a worker, and
        on the way out for requests nobody answers (the thread is abandoned then)."""
        await trio.to_thread.run_sync(kernel_pages, ino, abandon_on_cancel=True)

    async def _arrival(self, node: Node, fetch: Fetch, offset: int, size: int) -> None:
        """Until the download has the bytes of a read; far ahead of its stream, a
        ranged GET brings them (and a window after them) sooner; through a window,
        any bytes it no longer holds."""
        while not fetch.has(offset, size):
            await fetch.started()
            wanted = fetch.to_ask(offset)
            if wanted is not None:
                self.nursery().start_soon(self._fetch_range, fetch, self.inodes.key(node), *wanted)
            await fetch.wait_for(offset, size)
            if fetch.done:
                return

    async def _fetch_range(self, fetch: Fetch, key: str, start: int, end: int) -> None:
        error: Exception | None = None
        try:
            await self.calls.call(self._download_range, fetch, key, start, end, background=False)
        except (CowfsError, OSError) as exc:
            log.debug("ranged GET of %s failed: %s", key, exc)
            error = exc
        fetch.brought(start, end, error)

    def _punch(self, bounded: Window, holes: list[tuple[int, int]]) -> None:
        """Give the blocks of ``holes`` in ``bounded``'s file back to the disk, on a worker."""
        self.nursery().start_soon(self._punch_holes, bounded, holes)

    async def _punch_holes(self, bounded: Window, holes: list[tuple[int, int]]) -> None:
        try:
            fd = bounded.writer()
        except (CowfsError, OSError):
            return
        try:
            await self.calls.local(punch_holes, fd, holes)
        except OSError as exc:
            log.warning("could not give back the disk blocks of a file larger than the cache: %s", exc)
        finally:
            os.close(fd)
            bounded.punched(holes)

    def _download_range(self, fetch: Fetch, key: str, start: int, end: int) -> None:
        """Bytes ``[start, end)`` of the stream's version into the file it is filling; blocking."""
        assert fetch.info is not None
        fd = fetch.writer()
        try:
            self.store.get_range_into(key, fetch.info, fd, start, end, fetch.report)
        finally:
            os.close(fd)

    async def keep_meta(self, key: str, etag: str, metadata: dict[str, str]) -> None:
        """Remember an uploaded version's metadata in the cache."""
        await self.calls.local(self.cache.put_meta, key, etag, metadata)

    def head(self, key: str) -> ObjectInfo:
        """An object's metadata, remembered in the cache when the store is remote; blocking."""
        info = self.store.head(key)
        if self.store.remote:
            self.cache.put_meta(key, info.etag, info.metadata or {})
        return info

    def download(self, key: str, fetch: Fetch | None = None) -> tuple[int, ObjectInfo]:
        """Fetch a whole object into the cache; blocking, runs on a worker thread.

        The download is moved into the cache, not copied; the returned
        descriptor is read-only, since the file is now the cache's. With
        ``fetch``, that descriptor is the fetch's from the start, and each piece
        is reported to it as it lands.
        """
        fd, name = tempfile.mkstemp(dir=self.services.tmp_dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "r+b") as tmp:
                reader = os.open(path, os.O_RDONLY)
                try:
                    if fetch is not None:
                        fetch.adopt(reader, name)
                    info = self.store.get_to_file(key, tmp, fetch.report if fetch else None)
                except BaseException as exc:
                    if fetch is None:
                        os.close(reader)
                    if isinstance(exc, ObjectNotFound):
                        raise NotFound(key) from None
                    raise
            self.cache.move_in(key, info.etag, path, info.metadata or {})
            return reader, info
        finally:
            path.unlink(missing_ok=True)

    def changed_remotely(self, node: Node) -> None:
        """Another version of the object is in the store: the bytes held are stale."""
        content = node.content
        if content is None:
            return
        content.gen += 1
        if content.fd is not None and content.open_count == 0:
            os.close(content.fd)
            content.fd = None

    # -- staging ----------------------------------------------------------------

    async def make_writable(self, node: Node, truncate: bool) -> None:
        """Give ``node`` a staging file holding its current bytes (none with ``truncate``)."""
        async with node.lock:
            content = node.need_content()
            if content.staging is None:
                if truncate or node.size == 0:
                    await self._copy_on_write(node, None)
                elif node.fd is None and not self.cache.fits(node.size):
                    await self._download_staging(node)
                else:
                    await self._copy_on_write(node, await self.clean_fd(node))
                content.clean_size = node.size
        if truncate and node.size:
            await self.writable(node, 0)
            self.truncate(node, 0)

    async def _download_staging(self, node: Node) -> None:
        """A new staging file holding the object of a file too big for the cache, downloaded
        straight into it (``node.lock`` held): its bytes are unsynced until uploaded."""
        content, key = node.need_content(), self.inodes.key(node)
        staging, fd = self.journal.create_staging()
        progress = Fetch(self.calls.timeout)
        try:
            info = await self.calls.call(self._download_into, key, fd, progress, background=False,
                                         stall=progress.stall)
        except BaseException:
            os.close(fd)
            self.journal.discard_staging(staging)
            raise
        if info.etag != node.etag:
            node.etag, node.size = info.etag, info.size
            self.view.apply_meta(node, info.metadata or {}, info.last_modified)
        content.staging, content.fd = staging, fd

    def _download_into(self, key: str, fd: int, progress: Fetch) -> ObjectInfo:
        """The whole object into the file ``fd`` names, from its start; blocking."""
        with os.fdopen(os.dup(fd), "r+b") as out:
            try:
                return self.store.get_to_file(key, out, progress.report)
            except ObjectNotFound:
                raise NotFound(key) from None

    async def writable(self, node: Node, offset: int) -> None:
        """Before a change at ``offset``: bytes a pending record refers to are never
        changed in place. Appends past the committed size need no copy: the record
        names the size."""
        pending = node.pending
        if (
            pending is None
            or pending.committed is None
            or pending.committed != node.staging
            or offset >= pending.committed_size
            or not self.uploading(node)
        ):
            return
        async with node.lock:
            if pending.committed == node.staging:
                await self._copy_on_write(node, node.fd)

    async def _copy_on_write(self, node: Node, src: int | None) -> None:
        """A new staging file, holding the ``node.size`` bytes of ``src`` (none without),
        becomes the one ``node`` writes to (``node.lock`` held)."""
        content = node.need_content()
        staging, fd = self.journal.create_staging()
        try:
            if src is not None:
                await self.calls.local(copy_fd, src, fd, node.size)
        except BaseException:
            os.close(fd)
            self.journal.discard_staging(staging)
            raise
        if content.fd is not None:
            os.close(content.fd)
        content.staging, content.fd = staging, fd

    async def write(self, node: Node, offset: int, data: bytes) -> int:
        content = node.need_content()
        try:
            await self.writable(node, offset)
            assert content.fd is not None
            try:
                written = os.pwrite(content.fd, data, offset)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                # The disk filled under the cache's floor (other programs, downloads under way):
                # clean copies make way for bytes that exist nowhere else.
                await self.calls.local(self.cache.give_back, len(data) + SPARE_ON_FULL_DISK)
                written = os.pwrite(content.fd, data, offset)
        except OSError:
            content.write_failed = True
            raise
        self.modified(node, max(node.size, offset + written))
        return written

    def truncate(self, node: Node, size: int) -> None:
        """Cut or extend the staging file (after ``writable``)."""
        assert node.fd is not None
        os.ftruncate(node.fd, size)
        self.modified(node, size)

    @staticmethod
    def modified(node: Node, size: int) -> None:
        node.size = size
        node.mtime_ns = node.ctime_ns = time.time_ns()
        node.dirty = True

    def revert_failed_writes(self, node: Node) -> None:
        """A write failed (ENOSPC…): fall back to the last committed version, never store a torn file."""
        log.warning("a write to %s failed; keeping its last complete version", self.inodes.key(node))
        content = node.need_content()
        content.write_failed = False
        content.gen += 1
        committed = node.committed
        assert content.fd is not None and content.staging is not None
        if committed is not None and committed != content.staging:
            os.close(content.fd)
            self.journal.discard_staging(content.staging)
            content.staging, content.fd = committed, os.open(self.journal.staging_path(committed), os.O_RDWR)
        if committed is not None:
            assert node.pending is not None
            os.ftruncate(content.fd, node.pending.committed_size)
            node.size, node.dirty = node.pending.committed_size, False
        elif node.remote:
            os.close(content.fd)
            self.journal.discard_staging(content.staging)
            content.staging, content.fd = None, None
            node.size, node.dirty = content.clean_size, False
        else:
            os.ftruncate(content.fd, 0)
            node.size, node.dirty = 0, True

    def committed_bytes(self, node: Node) -> bytes:
        """The closed version of a small file (its staging file's first ``committed_size`` bytes)."""
        pending = node.pending
        assert pending is not None and pending.committed is not None
        if node.fd is not None and node.staging == pending.committed:
            return os.pread(node.fd, pending.committed_size, 0)
        with open(self.journal.staging_path(pending.committed), "rb") as f:
            return f.read(pending.committed_size)

    def commit_staging(self, node: Node) -> None:
        """The staging file now holds the version to upload; an older closed one is no longer named."""
        pending = node.need_pending()
        if node.staging != pending.committed and pending.committed is not None:
            self.journal.discard_staging(pending.committed)
        pending.committed, pending.committed_size = node.staging, node.size

    # -- letting go ---------------------------------------------------------------

    def closed(self, node: Node) -> bool:
        """The last handle of ``node`` was released: lets go of what it no longer needs.
        True when its staging file may go to the cache now (``retire``)."""
        self.let_go(node)
        if not node.attached:
            self.inodes.maybe_drop(node)
            return False
        content = node.need_content()
        if content.staging is None and content.fd is not None:
            os.close(content.fd)
            content.fd = None
            return False
        return content.staging is not None and not self.uploading(node)

    def let_go(self, node: Node) -> None:
        """Nobody reads ``node`` now: a window of it stops (a whole download goes on, for the cache)."""
        content = node.content
        if content is not None and isinstance(content.fetch, Window):
            content.fetch.close()
            content.fetch = None

    def drop(self, node: Node) -> None:
        """Close the descriptor and discard the staging files of a node no longer held."""
        self.let_go(node)
        content, pending = node.content, node.pending
        if content is not None and content.fd is not None:
            os.close(content.fd)
            content.fd = None
        for staging in {node.staging, node.committed} - {None}:
            assert staging is not None
            self.journal.discard_staging(staging)
        if content is not None:
            content.staging = None
        if pending is not None:
            pending.committed = None

    def forget_bytes(self, node: Node) -> None:
        """Another writer's version replaced this closed file's: its bytes here go."""
        self.drop(node)
        node.need_content().gen += 1

    async def retire(self, node: Node, metadata: dict[str, str] | None = None) -> bool:
        """Hand an uploaded, closed staging file to the clean cache and free it.

        ``metadata`` (the upload's) goes into the cache with the bytes, in one
        step; returns whether the cache was given it.
        """
        content = node.content
        staging, version, key, etag = node.staging, node.version, self.inodes.key(node), node.etag
        if content is None or staging is None or etag is None:
            return False
        if node.committed != staging:
            if not node.dirty:
                log.debug("dropped unchanged staging of %s", key)
                assert content.fd is not None
                os.close(content.fd)
                content.fd, content.staging = None, None
                self.journal.discard_staging(staging)
            return False
        fd = content.fd
        assert fd is not None
        # The worker reads its own descriptor: a write meanwhile may close content.fd (copy on
        # write), and a number reused by another file must not fill the cache with its bytes.
        copy = os.dup(fd)
        try:
            linked = await self.calls.local(self._keep_clean, key, etag, staging, copy, metadata)
        finally:
            os.close(copy)
        if (
            node.staging != staging
            or node.committed != staging
            or node.version != version
            or node.dirty
            or node.open_count
        ):
            await self.calls.local(self.cache.discard, key)
            return True
        os.close(fd)
        content.fd = None
        content.staging = None
        if node.pending is not None:
            node.pending.committed = None
        log.debug("retired %s v%d", key, version)
        self.journal.discard_staging(staging, reuse=not linked)
        return True

    def _keep_clean(self, key: str, etag: str, staging: str, fd: int, metadata: dict[str, str] | None) -> bool:
        """Give the cache an uploaded staging file's bytes; True when the cache now shares its inode."""
        if os.fstat(fd).st_size < LINK_INTO_CACHE:
            self.cache.put_file(key, etag, fd, metadata)
            return False
        path = self.services.tmp_dir / f"retired-{uuid.uuid4().hex}"
        try:
            os.link(self.journal.staging_path(staging), path)
        except OSError as exc:
            log.warning("could not keep a clean copy of %s: %s", key, exc)
            if metadata is not None:
                self.cache.put_meta(key, etag, metadata)
            return False
        try:
            self.cache.move_in(key, etag, path, metadata)
        finally:
            path.unlink(missing_ok=True)
        return True
