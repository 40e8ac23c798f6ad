"""How long the kernel may keep an entry, and taking entries back when another mount changes them.

Past the time it was given, the kernel asks about an entry again: a program
that stats or opens files by path (``git status``, ``compileall``, an
interpreter importing modules) costs a LOOKUP per file once per metadata TTL
even when nothing changed, about a tenth of a millisecond of the daemon's
each. (A readdir hands the kernel every entry of its folder afresh anyway,
so ``find`` or ``du`` gain little.) Where the change marks vouch for a
folder's listing (``changes.py``), the kernel is given that folder's
entries for as long as the listing holds by time alone (objects other
tools write still show within the foreign TTL), at most ``LONGEST``
seconds. While the kernel may hold such an entry of a workspace, this mount
reads the workspace's marks once per TTL whether the kernel asks or not,
and a mark that names a folder takes that folder's entries back from the
kernel at once: another mount's change shows as soon as it did with entries
kept for a TTL, within a TTL of its mark.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Iterable

import trio

from ..batches import Workspace
from ..changes import ChangeMarks, listed_folder
from .node import Node
from .services import Part, Services
from .table import Inodes

log = logging.getLogger(__name__)

#: The longest the kernel keeps an entry it was given: the marks are read for as long after it.
LONGEST = 30.0
#: A check of the marks that could not be made is tried again this many times per TTL.
RETRIES = 10
#: A folder's lease is worked out once for this long (a readdir gives every entry of the folder).
REUSE = 0.05

#: Takes entries back from the kernel, in a worker thread: ``(folder inode, name)`` pairs and
#: inodes whose attributes it must ask for again.
Kernel = Callable[[list[tuple[int, bytes]], list[int]], None]


class Leases(Part):
    """The kernel's timeouts for the entries it is given, and their taking back (see the module)."""

    def __init__(self, services: Services, inodes: Inodes, marks: ChangeMarks | None, ttl: float,
                 kernel: Kernel | None) -> None:
        """Without ``marks`` or ``kernel`` every entry is kept a TTL."""
        super().__init__(services, inodes)
        self.marks = marks
        self.ttl = ttl
        self.kernel = kernel
        #: Folders whose entries the kernel was given for longer than a TTL, and until when.
        self._folders: dict[Node, float] = {}
        #: Workspaces whose marks are read once per TTL, and until when.
        self._watched: dict[Workspace, float] = {}
        self._entries: list[tuple[int, bytes]] = []
        self._inodes: list[int] = []
        self._wake = trio.Event()
        #: The last folder whose lease was worked out, when, and when it ends (``REUSE``).
        self._last: tuple[Node | None, float, float] = (None, -math.inf, -math.inf)
        #: Entries taken back from the kernel so far.
        self.taken_back = 0
        if marks is not None and kernel is not None:
            marks.on_change = self._changed

    def timeout(self, node: Node) -> float:
        """How long the kernel may keep ``node``'s entry and attributes: 0 while they are a
        listing's guess, longer than the TTL while the marks vouch for its folder's listing."""
        if not node.attrs_known:
            return 0.0
        folder = node.parent
        if (self.marks is None or self.kernel is None or folder is None or folder.listed_at is None
                or node.virtual is not None):
            return self.ttl
        now = self.clock()
        last, worked_out, ends = self._last
        if last is not folder or now - worked_out >= REUSE:
            ends = self._lease(folder, now)
            self._last = (folder, now, ends)
        return max(ends - now, self.ttl)

    def _lease(self, folder: Node, now: float) -> float:
        """When the kernel's time for entries of ``folder`` given now ends (-inf: a TTL from now)."""
        assert self.marks is not None and folder.listed_at is not None
        holding = self.marks.holding(self.inodes.key(folder), folder.listed_at,
                                     folder.listed_at + folder.listing_took, now)
        if holding is None:
            return -math.inf
        workspace, until = holding
        ends = now + min(LONGEST, until - now)
        if ends - now <= self.ttl:
            return -math.inf
        self._folders[folder] = max(self._folders.get(folder, now), ends)
        if self._watched.get(workspace, now) <= now:
            self._wake.set()
        self._watched[workspace] = max(self._watched.get(workspace, now), ends)
        return ends

    def take_back(self, folder: Node, children: Iterable[Node] | None = None) -> None:
        """The kernel forgets ``children`` of ``folder`` (None: every child it knows there), their
        attributes and the folder's, if it was given them for longer than a TTL."""
        self._last = (None, -math.inf, -math.inf)
        if folder not in self._folders:
            return
        if children is None:
            del self._folders[folder]
            children = [child for child in folder.children.values() if child.lookups]
        for child in children:
            self._entries.append((folder.ino, child.name.encode()))
            self._inodes.append(child.ino)
        self._inodes.append(folder.ino)
        self._wake.set()

    def _changed(self, workspace: Workspace, folders: set[str] | None) -> None:
        """A check of ``workspace``'s marks found ``folders`` changed (None: any of them)."""
        now = self.clock()
        for folder, until in list(self._folders.items()):
            if until <= now or not folder.attached:
                del self._folders[folder]
                continue
            where = listed_folder(self.inodes.key(folder))
            if where is not None and where[0] == workspace and (folders is None or where[1] in folders):
                self.take_back(folder)

    async def run(self) -> None:
        """Read the marks of the workspaces the kernel holds entries of once per TTL, and hand
        what they take back to the kernel."""
        if self.marks is None or self.kernel is None:
            return
        while True:
            self._wake = trio.Event()
            if self._entries or self._inodes:
                entries, inodes = self._entries, self._inodes
                self._entries, self._inodes = [], []
                self.taken_back += len(entries)
                # Abandoned on the way out: the kernel may wait for a request nobody answers then.
                await trio.to_thread.run_sync(self.kernel, entries, inodes, abandon_on_cancel=True)
                continue
            now = self.clock()
            self._watched = {workspace: until for workspace, until in self._watched.items() if until > now}
            if not self._watched:
                self._folders.clear()
            for workspace in list(self._watched):
                if self.marks.due(workspace) <= now:
                    await self.check(workspace, background=False)
            due = min((self.marks.due(workspace) for workspace in self._watched), default=math.inf)
            with trio.move_on_after(max(due - self.clock(), self.ttl / RETRIES)):
                await self._wake.wait()

    async def check(self, workspace: Workspace, background: bool) -> None:
        """Read ``workspace``'s marks unless a check is less than a TTL old, while the store
        answers (``ChangeMarks.check``: a failed check only counts for ``cowfs status``)."""
        if self.marks is not None and self.reachable:
            await self.marks.check(workspace, functools.partial(self.calls.call, background=background))
