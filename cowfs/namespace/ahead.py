"""Attributes fetched ahead of a walk through a folder listed by name first.

A readdir of a folder with thousands of entries of unknown attributes
(objects other tools wrote, which no summary describes) answers with the
names at once rather than a request per entry first (``ls -f``, ``find``,
tab completion wait only for the LIST). A program that then looks the
entries up one by one (``ls -l``, a file manager) goes through them in
the listing's order; the lookups tell where it is, and the entries just
after it are fetched in the background, several at a time, so it finds
them known instead of waiting for one request per entry in turn.
"""

from __future__ import annotations

import bisect
from operator import attrgetter

from .node import Node

#: Entries fetched ahead of the last one looked up.
STAT_AHEAD = 256

_name = attrgetter("name")


class StatAhead:
    """A folder's entries of unknown attributes, by name, and the span already sent for."""

    __slots__ = ("order", "low", "high")

    def __init__(self, order: list[Node]) -> None:
        """``order``: the entries, sorted by name (the order readdir gave them)."""
        self.order = order
        self.low = self.high = 0

    def after(self, name: str) -> list[Node]:
        """The entries to fetch now that ``name`` is looked up: up to ``STAT_AHEAD`` past it,
        those not sent for already. A lookup outside the span sent for (a walk in another
        order, a jump) starts a new span there."""
        at = bisect.bisect_right(self.order, name, key=_name)
        end = min(len(self.order), at + STAT_AHEAD)
        if self.low <= at <= self.high:
            if self.high - at >= STAT_AHEAD // 2:
                return []
            start = self.high
        else:
            self.low = start = at
        self.high = end
        return [node for node in self.order[start:end] if node.attached and not node.meta_known]
