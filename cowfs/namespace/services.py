"""What every part of the namespace works over: the store, the cache, the journal,
write-back, the store-call gateway, the clock, and where background work runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import trio

from ..cache import ContentCache
from ..gateway import StoreCalls
from ..journal import Journal
from ..store import ObjectStore
from ..writeback import WriteBack
from .table import Inodes


@dataclass(frozen=True)
class Services:
    store: ObjectStore
    cache: ContentCache
    journal: Journal
    writeback: WriteBack
    calls: StoreCalls
    #: Where downloads are made before the cache takes them.
    tmp_dir: Path
    clock: Callable[[], float]
    #: Hosts work that outlives the operation that started it (downloads, listings behind, read-ahead).
    nursery: Callable[[], trio.Nursery]


class Part:
    """A part of the namespace: the inode table, and the shared services by name."""

    def __init__(self, services: Services, inodes: Inodes) -> None:
        self.services = services
        self.inodes = inodes
        self.store, self.cache, self.journal = services.store, services.cache, services.journal
        self.writeback, self.calls = services.writeback, services.calls
        self.clock, self.nursery = services.clock, services.nursery

    @property
    def reachable(self) -> bool:
        """Whether the store answers (what a degraded mount serves follows it)."""
        return self.calls.reachability is None or self.calls.reachability.reachable
