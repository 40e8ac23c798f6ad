"""A node: one file, folder, symlink or special file the kernel may know by inode number.

Every node has an identity, a place in the tree and attributes. What only a
file being read or written has (descriptors, staging files) is its
``Content``; what only a node with an upload to make has is its ``Pending``.
Each is made on first need: a mount lists hundreds of thousands of nodes and
opens or changes few.
"""

from __future__ import annotations

import enum
import math
import time
from typing import TYPE_CHECKING, Iterable

import trio

from ..attrs import Attrs
from ..journal import Journal

if TYPE_CHECKING:
    from ..fetch import Fetch
    from .persistence import NodeSource

ROOT_INODE = 1
#: "Never", one float shared by every node (``-math.inf`` makes a new one each time).
NEVER = -math.inf


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    LINK = "symlink"
    #: A FIFO, socket or device: an empty object, its type in the mode.
    SPECIAL = "special"


class Condition(enum.Enum):
    """What the next upload of a node asks of the object it replaces."""

    #: That it is still the version this mount knows (If-Match its ETag).
    ETAG = "etag"
    #: Nothing: the key may hold an older object this mount replaces.
    NONE = "none"
    #: That there is none (If-None-Match: *).
    ABSENT = "absent"


class Content:
    """A file's bytes as this mount holds them: a descriptor on its clean bytes (from
    the cache) or on its staging file, the download under way, its open handles."""

    __slots__ = ("fd", "fetch", "open_count", "writers", "staging", "clean_size", "write_failed", "gen",
                 "kernel_gen")

    def __init__(self) -> None:
        self.fd: int | None = None
        #: The download of the clean bytes under way, while ``fd`` is None.
        self.fetch: Fetch | None = None
        self.open_count = 0
        self.writers = 0
        #: The staging file written to (its journal id), while the file is being changed.
        self.staging: str | None = None
        #: The size of the clean bytes the staging file started from.
        self.clean_size = 0
        #: A write failed (ENOSPC …): the next close falls back to the last complete version.
        self.write_failed = False
        #: Moves on whenever the bytes change other than through the kernel; ``kernel_gen`` is
        #: what the kernel's page cache was last given, so an open may keep it while they agree.
        self.gen = 0
        self.kernel_gen = -1


class Pending:
    """A node's versions on their way to the store: the journal record's id, the
    write-back engine's handle, the last closed version and its condition."""

    __slots__ = ("rid", "source", "version", "committed", "committed_size", "condition", "shadows")

    def __init__(self) -> None:
        self.rid = Journal.new_id()
        self.source: NodeSource | None = None
        self.version = 0
        #: The staging file of the last closed version, and its size.
        self.committed: str | None = None
        self.committed_size = 0
        self.condition = Condition.ETAG
        #: The key may still hold an object this node replaces (a pending delete was cancelled for it).
        self.shadows = False


_NO_CHILDREN: dict[str, "Node"] = {}


class Node:
    """One entry of the tree; slots, and a lock made on first need."""

    __slots__ = (
        "ino", "kind", "name", "parent", "mode", "uid", "gid", "mtime_ns", "ctime_ns", "atime_ns", "rdev",
        "times_unsaved", "xattrs", "size", "etag", "remote", "meta_known", "attached", "target", "children",
        "listed_at", "listing_took", "used_at", "walked_at", "checked_at", "dirty", "touched", "virtual", "pinned", "lookups",
        "_lock", "content", "pending",
    )

    def __init__(self, ino: int, kind: Kind, name: str, parent: Node | None, attrs: Attrs) -> None:
        self.ino = ino
        self.kind = kind
        self.name = name
        self.parent = parent
        self.take_attrs(attrs)
        #: A folder's times moved with its entries since its marker was last written (``entries_changed``).
        self.times_unsaved = False
        self.size = 0
        self.etag: str | None = None
        #: The store has (had) an object for this node.
        self.remote = False
        self.meta_known = True
        self.attached = True
        self.target: bytes | None = None
        self.children: dict[str, Node] = {} if kind is Kind.DIR else _NO_CHILDREN
        #: When the folder's last listing started, and how long it took.
        self.listed_at: float | None = None
        self.listing_took = 0.0
        self.used_at = 0.0
        self.walked_at = NEVER
        self.checked_at = NEVER
        #: Changed since its last version was recorded.
        self.dirty = False
        #: When this mount last changed it (the namespace's clock).
        self.touched = 0.0
        #: The generated file (or ``"dir"``, their folder) this node is, if any.
        self.virtual: str | None = None
        #: A configured tenant's folder: always there.
        self.pinned = False
        self.lookups = 0
        self._lock: trio.Lock | None = None
        self.content: Content | None = None
        self.pending: Pending | None = None

    @property
    def lock(self) -> trio.Lock:
        if self._lock is None:
            self._lock = trio.Lock()
        return self._lock

    def need_content(self) -> Content:
        """The file's content state, made when first needed."""
        if self.content is None:
            self.content = Content()
        return self.content

    def need_pending(self) -> Pending:
        """The node's upload state, made when it first has something to upload."""
        if self.pending is None:
            self.pending = Pending()
        return self.pending

    @property
    def attrs_known(self) -> bool:
        """Whether its attributes are the object's, not a listing's guess (generated files' always are)."""
        return self.meta_known or self.virtual is not None

    @property
    def fd(self) -> int | None:
        return self.content.fd if self.content is not None else None

    @property
    def staging(self) -> str | None:
        return self.content.staging if self.content is not None else None

    @property
    def committed(self) -> str | None:
        return self.pending.committed if self.pending is not None else None

    @property
    def open_count(self) -> int:
        return self.content.open_count if self.content is not None else 0

    @property
    def version(self) -> int:
        return self.pending.version if self.pending is not None else 0

    def path(self) -> tuple[str, ...]:
        parts: list[str] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return tuple(reversed(parts))

    def take_attrs(self, attrs: Attrs) -> None:
        """Mode, owner, times, device number and xattrs as stored (atime stays None unless it was set)."""
        self.mode, self.uid, self.gid, self.rdev = attrs.mode, attrs.uid, attrs.gid, attrs.rdev
        self.mtime_ns, self.atime_ns = attrs.mtime_ns, attrs.atime_ns
        self.ctime_ns = attrs.mtime_ns if attrs.ctime_ns is None else attrs.ctime_ns
        self.xattrs = attrs.xattrs

    def entries_changed(self) -> None:
        """An entry was added to, removed from or renamed in this folder: its mtime and ctime
        move (POSIX). They reach the store with the folder's marker: in its next upload if
        one is due anyway, else at sync or unmount — never a PUT per change."""
        self.mtime_ns = self.ctime_ns = time.time_ns()
        self.times_unsaved = True

    @property
    def nlink(self) -> int:
        """0 once removed (an open file outlives its name); a folder's 2 and one per subfolder
        it is known to hold (each one's ``..``), as on a local disk; 1 for anything else."""
        if not self.attached:
            return 0
        if self.kind is not Kind.DIR:
            return 1
        return 2 + sum(1 for c in self.children.values() if c.kind is Kind.DIR and c.attached and not c.virtual)

    @property
    def atime(self) -> int:
        return self.mtime_ns if self.atime_ns is None else self.atime_ns

    def attrs(self) -> Attrs:
        return Attrs(self.mode, self.uid, self.gid, self.mtime_ns, self.xattrs, self.rdev, self.atime_ns, self.ctime_ns)

    def subfolders(self) -> list[Node]:
        """The folders in this one that are in the store's tree (not generated ones)."""
        return [c for c in self.children.values() if c.kind is Kind.DIR and c.attached and not c.virtual]

    def walk(self) -> Iterable[Node]:
        yield self
        for child in list(self.children.values()):
            yield from child.walk()
