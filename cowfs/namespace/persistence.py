"""Persistence: a node's versions into the journal and on to the write-back engine.

A close records the node's version in the journal (group commit) and claims
its upload in one call (``persist``); the write-back engine reaches the node
through a ``NodeSource``, and tells it what became of the upload. Ordering
rules: a key with a pending put is never shown as deleted, and a put of a key
cancels a pending delete of it first (``claim_key``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from ..attrs import to_metadata
from ..hooks import LocalChanges
from ..journal import BODY_EMPTY, BODY_INLINE, BODY_METADATA_ONLY, BODY_STAGING, PutRecord
from ..store import ObjectInfo
from ..writeback import Upload
from .contents import Contents
from .leases import Leases
from .node import Condition, Kind, Node
from .services import Part, Services
from .table import Inodes

log = logging.getLogger(__name__)

#: A closed version up to this size is written into its journal record, so
#: the group commit syncs one log, not one staging file per small file.
INLINE_RECORD = 16 * 1024


class NodeSource:
    """The write-back engine's handle on one node (``writeback.Source``)."""

    __slots__ = ("node", "rid", "persistence")

    def __init__(self, node: Node, persistence: Persistence) -> None:
        self.node = node
        self.rid = node.need_pending().rid
        self.persistence = persistence

    def snapshot(self) -> Upload | None:
        return self.persistence.snapshot(self.node)

    async def uploaded(self, upload: Upload, etag: str) -> bool:
        return await self.persistence.uploaded(self.node, upload, etag)

    def conflicted(self, upload: Upload, kept_as: str, etag: str) -> None:
        self.persistence.conflicted(self.node, upload, kept_as, etag)


class Persistence(Part):
    """Journal records, write-back claims and what the store lacks, per node."""

    def __init__(self, services: Services, inodes: Inodes, contents: Contents, leases: Leases,
                 changed: Callable[[tuple[str, ...]], None]) -> None:
        """``changed(path)`` is told of every version recorded (the workspace's activity)."""
        super().__init__(services, inodes)
        self.contents = contents
        self.leases = leases
        self.changed = changed

    # -- what the store lacks ----------------------------------------------------

    def source(self, node: Node) -> NodeSource:
        """The write-back engine's handle on ``node`` (made when it first has something to upload)."""
        pending = node.need_pending()
        if pending.source is None:
            pending.source = NodeSource(node, self)
        return pending.source

    def uploading(self, node: Node) -> bool:
        """Whether ``node`` has an upload waiting or under way."""
        return self.contents.uploading(node)

    def unsynced(self, node: Node) -> bool:
        """Whether the store lacks something this node holds."""
        return not node.remote or node.staging is not None or self.uploading(node)

    def may_hold_object(self, node: Node) -> bool:
        """Whether the store may have an object at this node's key (ours, or an older one we replace)."""
        return node.remote or (node.pending is not None and node.pending.shadows)

    def carries_data(self, node: Node) -> bool:
        """Whether this node's next upload sends its bytes (else the store's copy is the only one)."""
        return (
            not node.remote
            or node.staging is not None
            or node.committed is not None
            or (node.kind is Kind.LINK and node.target is not None)
        )

    def locally_owned(self, node: Node) -> bool:
        """Whether this mount knows better than a listing (unsynced or open)."""
        return self.unsynced(node) or node.open_count > 0 or node.virtual is not None or node.pinned

    def local_changes(self, folder: Node) -> LocalChanges:
        """Entries under ``folder`` the store has not got yet, and the deletes still to go."""
        key = self.inodes.key
        files = {
            key(n): ObjectInfo(key(n), 0 if n.kind is Kind.DIR else n.size, "", n.mtime_ns / 1e9)
            for n in folder.walk()
            if n is not folder and n.virtual is None and self.unsynced(n)
        }
        return LocalChanges(files, self.writeback.deleting)

    def dirty_bytes(self) -> int:
        """Bytes held in staging files that the store does not have yet."""
        return sum(
            n.size
            for n in self.inodes.inodes.values()
            if n.staging is not None and (n.dirty or self.uploading(n))
        )

    # -- keys ----------------------------------------------------------------------

    def claim_key(self, node: Node, key: str, exclusive: bool = False) -> None:
        """A new ``node`` is about to take ``key``: an older pending delete must not hit it.
        Its upload replaces what the key may still hold; with ``exclusive``, when nothing
        can be there, it goes up only if nothing is (a new file)."""
        pending = node.need_pending()
        pending.shadows = self.cancel_delete(key)
        pending.condition = Condition.ABSENT if exclusive and not pending.shadows else Condition.NONE

    def cancel_delete(self, key: str) -> bool:
        """A new object is about to take ``key``: an older pending delete must not hit it.

        True when such a delete was pending (the old object may still be there).
        """
        if self.writeback.cancel_delete(key):
            self.journal.remove_delete(key)
            return True
        return False

    def release_key(self, key: str) -> None:
        """``key`` must go from the store (after any in-flight put of it)."""
        self.writeback.active()
        self.journal.write_delete(key)
        self.writeback.schedule_delete(key)

    def drop_intent(self, node: Node) -> None:
        """``node`` left the tree: forget its waiting upload and, unless one is under way, its record."""
        pending = node.pending
        if pending is None or pending.source is None:
            return
        self.writeback.cancel(pending.source)
        if not self.writeback.is_pending(pending.source):
            self.journal.remove_put(pending.rid)

    def forget(self, node: Node) -> None:
        """``node`` left the tree: drop its not-yet-uploaded intent, delete its object."""
        key = self.inodes.key(node)
        self.inodes.detach(node)
        self.drop_intent(node)
        if self.may_hold_object(node):
            self.release_key(key)

    # -- recording versions ----------------------------------------------------------

    def commit(self, node: Node) -> None:
        """Close/flush: record the node's changes in the journal (group commit), schedule upload."""
        if node.content is not None and node.content.write_failed:
            self.contents.revert_failed_writes(node)
        if not node.dirty or not node.attached:
            return
        self.persist(node)

    def persist(self, node: Node) -> None:
        """Record ``node``'s version in the journal and claim its upload."""
        self.writeback.active()
        self.changed(self.inodes.full(node))
        node.touched = self.clock()
        node.dirty = node.times_unsaved = False
        node.need_pending().version += 1
        self.contents.commit_staging(node)
        log.debug("persist %s v%d staging=%s remote=%s", self.inodes.key(node), node.version, node.staging,
                  node.remote)
        self.write_record(node)
        self.writeback.schedule(self.source(node))

    def record(self, node: Node) -> PutRecord:
        """The version of ``node`` to store, as the journal records it (a staging file by id)."""
        pending = node.need_pending()
        staging: str | None = None
        inline = b""
        if node.kind is Kind.DIR:
            body = BODY_EMPTY
        elif node.kind is Kind.LINK:
            body, inline = BODY_INLINE, node.target or b""
        elif pending.committed is not None:
            body, staging = BODY_STAGING, pending.committed
        else:
            body = BODY_METADATA_ONLY if node.remote else BODY_EMPTY
        return PutRecord(pending.rid, self.inodes.key(node), body, staging, to_metadata(node.attrs()), inline,
                         pending.committed_size)

    def write_record(self, node: Node) -> None:
        """Journal ``node``'s version; a small file's bytes go into the record itself."""
        record = self.record(node)
        if record.body == BODY_STAGING and record.staging is not None and record.size <= INLINE_RECORD:
            record = dataclasses.replace(record, body=BODY_INLINE, staging=None,
                                         inline=self.contents.committed_bytes(node))
        self.journal.write_put(record)

    # -- what write-back tells ---------------------------------------------------------

    def snapshot(self, node: Node) -> Upload | None:
        """What to upload for ``node`` now: its record and the condition it goes up under."""
        if not node.attached:
            return None
        pending = node.need_pending()
        return Upload(
            self.record(node),
            pending.version,
            # Not on a folder marker: every empty object has the same ETag, so it would guard nothing
            # but the marker's existence, and a lost condition leaves a conflict copy in the folder.
            if_match=(node.etag if pending.condition is Condition.ETAG and node.remote and node.kind is not Kind.DIR
                      else None),
            if_none_match=pending.condition is Condition.ABSENT,
        )

    async def uploaded(self, node: Node, upload: Upload, etag: str) -> bool:
        """The store has ``upload``; True when nothing newer of ``node`` waits to go up."""
        current = self.inodes.key(node) if node.attached else None
        if current != upload.key:
            if not self.inodes.key_in_use(upload.key):
                self.release_key(upload.key)
            return not node.attached
        node.etag, node.remote = etag, True
        node.need_pending().condition = Condition.ETAG
        node.touched = self.clock()
        retire = upload.version == node.version and node.open_count == 0 and node.staging is not None
        if not (retire and await self.contents.retire(node, upload.metadata)):
            await self.contents.keep_meta(upload.key, etag, upload.metadata)
        return True

    def conflicted(self, node: Node, upload: Upload, kept_as: str, etag: str) -> None:
        """Another writer's version holds the key now: the path shows theirs, and ours is
        the conflict copy ``kept_as`` beside it.

        A file still open, changed since, or with a newer version on its way
        becomes the conflict copy (its inode moves to that name, and open
        descriptors and later closes write into the copy); a closed one drops
        its bytes and shows theirs.
        """
        node.need_pending().condition = Condition.ETAG
        parent = node.parent
        if parent is None or not node.attached or self.inodes.key(node) != upload.key:
            return
        parent.listed_at = None
        self.leases.take_back(parent, [node])
        if node.open_count or node.dirty or upload.version != node.version:
            del parent.children[node.name]
            node.name = kept_as.rsplit("/", 1)[-1]
            parent.children[node.name] = node
            node.etag, node.remote = etag, True
            node.touched = self.clock()
            if self.uploading(node):
                self.write_record(node)
            return
        self.contents.forget_bytes(node)
        node.etag, node.meta_known, node.remote = None, False, True
        node.touched = 0.0
