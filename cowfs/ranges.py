"""Which byte ranges a download asks for: the one place for a download's range policy.

One GET streams the whole object. Beside it, ranged GETs (each conditional on
the stream's ETag, so that all bytes belong to one version) are sent in two
cases, both decided here and carried out by the store and ``fetch.py``:

- the stream comes at a pace that leaves more than ``SPLIT_AFTER`` seconds
  for the rest (``split``): the stream keeps a share of the rest and up to
  ``DOWNLOAD_STREAMS`` ranges, none smaller than a part, bring the remainder.
  One connection to S3 carries ~100 MB/s, so a large object from S3 is
  split; a server on the same machine streams it faster than ranges would;
- a read lands far ahead of the stream's front (``far``): the bytes from it
  on come by a ranged GET of their own, a window ahead of the reader, while
  the stream goes on.

An object too big for the cache is read through a window (``window.py``):
its stream goes at most ``ahead`` bytes past the reader and keeps ``behind``
bytes before it (``window``), and is never split, as parts far ahead would
not be kept (so from S3 it comes at one connection's pace); a read of bytes
it no longer holds gets them by a ranged GET (``gap``).

Spans are sorted, disjoint, non-touching ``(start, end)`` pairs of byte offsets.
"""

from __future__ import annotations

MiB = 1024 * 1024
#: Parallel ranges of one download, beside its stream, when it is split.
DOWNLOAD_STREAMS = 4
#: Split a download when one stream would need longer than this for the rest (seconds).
SPLIT_AFTER = 0.5
#: A read this far past the stream's front gets a ranged GET of its own: at
#: ~100 MB/s, more than a request's round trip away.
FAR = 8 * MiB
#: The bytes such a GET brings, from the read on.
RANGE = 4 * MiB
#: How far a windowed stream may go past its reader, and what it keeps behind the reader.
AHEAD = 16 * MiB
BEHIND = 8 * MiB
#: A window takes at most this share of the cache (``AHEAD`` and ``BEHIND`` shrink to fit).
WINDOW_SHARE = 4


def add_span(spans: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """``spans`` with ``[start, end)`` merged in."""
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if e < start or end < s:
            out.append((s, e))
        else:
            start, end = min(s, start), max(e, end)
    out.append((start, end))
    out.sort()
    return out


def add_span_all(spans: list[tuple[int, int]], more: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Both lists of spans merged."""
    for start, end in more:
        spans = add_span(spans, start, end)
    return spans


def minus(spans: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` without the bytes of ``cut``."""
    out: list[tuple[int, int]] = []
    for start, end in spans:
        for s, e in cut:
            if e <= start or end <= s:
                continue
            if start < s:
                out.append((start, s))
            start = max(start, e)
            if start >= end:
                break
        if start < end:
            out.append((start, end))
    return out


def covered(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether ``[start, end)`` lies in one of ``spans`` (always, when empty)."""
    return end <= start or any(s <= start and end <= e for s, e in spans)


def split(pos: int, size: int, elapsed: float, part_size: int, split_after: float = SPLIT_AFTER) -> list[tuple[int, int]]:
    """The ranges parallel GETs should bring of an object of ``size`` bytes whose stream
    has brought ``pos`` in ``elapsed`` seconds; the stream stops where the first
    begins. None (an empty list) unless the rest would take longer than
    ``split_after`` seconds at the stream's pace and is at least two parts."""
    rest = size - pos
    if rest < 2 * part_size or rest * elapsed <= split_after * pos:
        return []
    end = pos + max(part_size, -(-rest // (DOWNLOAD_STREAMS + 1)))
    part = max(part_size, -(-(size - end) // DOWNLOAD_STREAMS))
    return [(start, min(start + part, size)) for start in range(end, size, part)]


def far(offset: int, size: int, front: int, known: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The range a ranged GET should bring for a read at ``offset`` of an object of
    ``size`` bytes, whose stream has come to ``front`` and of which ``known`` is in
    or asked for: None while the stream is near, or when enough ahead of the read
    is known already."""
    if offset < front + FAR:
        return None
    return gap(offset, size, known)


def gap(offset: int, size: int, known: list[tuple[int, int]], length: int = RANGE) -> tuple[int, int] | None:
    """The range a ranged GET should bring for a read at ``offset`` of an object of ``size``
    bytes of which ``known`` is in or asked for: up to ``length`` bytes from the first not
    known on; None when ``length // 2`` bytes from the read on are known already."""
    start, end = offset, size
    for s, e in known:
        if s <= start < e:
            start = e
        elif start < s:
            end = s
            break
    end = min(end, start + length)
    if start >= end or start - offset >= length // 2:
        return None
    return start, end


def window(limit: int) -> tuple[int, int]:
    """How far a windowed stream goes past its reader and what it keeps behind it, through
    a cache of ``limit`` bytes: ``AHEAD`` and ``BEHIND``, shrunk to ``limit // WINDOW_SHARE``
    together (and never below a chunk ahead)."""
    room = limit // WINDOW_SHARE
    ahead = max(min(AHEAD, room * AHEAD // (AHEAD + BEHIND)), MiB)
    return ahead, max(0, min(BEHIND, room - ahead))
