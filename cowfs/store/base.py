"""The ObjectStore interface: the only thing cowfs needs from a bucket.

Both implementations (``s3`` and ``local``) pass the same contract tests
(``tests/test_store_contract.py``). Every method blocks; callers on the trio
loop run them in worker threads.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator


@dataclass(frozen=True)
class ObjectInfo:
    """What the store says about one object.

    ``metadata`` holds the user metadata (the part after ``x-amz-meta-``,
    lower-case names); it is ``None`` when the info came from a listing that
    does not carry metadata (S3's; the local store's listings do).
    """

    key: str
    size: int
    etag: str
    last_modified: float
    metadata: dict[str, str] | None = None


@dataclass
class ListPage:
    """One page of a delimited listing: objects, the sub-prefixes seen, and whether
    more pages may follow (True where the store cannot tell)."""

    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    more: bool = False


def same_metadata(stored: dict[str, str] | None, ours: dict[str, str]) -> bool:
    """Whether user metadata read back from the store is ``ours`` (names are case-blind)."""
    return {name.lower(): value for name, value in (stored or {}).items()} == {
        name.lower(): value for name, value in ours.items()}


#: Told, from whichever thread wrote them, that bytes ``[start, end)`` of the
#: object ``info`` describes are in the file being downloaded into.
Progress = Callable[[ObjectInfo, int, int], None]
#: Given, in order, the bytes of an object that start at an offset.
Piece = Callable[[ObjectInfo, int, bytes], None]


class ObjectStore(abc.ABC):
    """A flat key space of immutable objects with user metadata.

    Keys are ``str`` (UTF-8 in the store). ETags are opaque strings compared
    for equality only.
    """

    #: A human-readable name for messages ("s3://bucket/prefix", "file:///x").
    url: str
    #: Whether each request costs a round trip: then a small object is fetched
    #: whole with its metadata, and a listed folder's small files are read ahead.
    remote: bool = True
    #: Entries per listing page: S3's most. Tests set fewer to see several pages.
    page_size: int = 1000

    @abc.abstractmethod
    def check(self) -> None:
        """Raise ``AccessDenied``/``StoreError`` unless the store is usable."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Info with metadata; ``ObjectNotFound`` if absent."""

    @abc.abstractmethod
    def get(self, key: str, start: int | None = None, end: int | None = None) -> tuple[bytes, ObjectInfo]:
        """Bytes ``[start, end)`` of the object (whole object when both None)."""

    @abc.abstractmethod
    def get_to_file(self, key: str, out: BinaryIO, progress: Progress | None = None) -> ObjectInfo:
        """Write the whole object into ``out`` from its current position; return its info.

        ``progress`` hears of every piece once it is in ``out``'s file (offsets
        within the object), so that readers need not wait for the whole object.
        """

    @abc.abstractmethod
    def stream(self, key: str, piece: Piece) -> ObjectInfo:
        """The whole object, in order, to ``piece`` as it comes (one GET, nothing written
        anywhere); its info. ``piece`` may hold the stream back by not returning, or stop
        it by raising; a stream that breaks is a ``StoreError``."""

    @abc.abstractmethod
    def get_range_into(
        self, key: str, info: ObjectInfo, fd: int, start: int, end: int, progress: Progress | None = None
    ) -> None:
        """Bytes ``[start, end)`` of the version ``info`` names, written at the same
        offsets of ``fd`` and told to ``progress`` piece by piece;
        ``PreconditionFailed`` when the key holds another version now."""

    @abc.abstractmethod
    def put(
        self,
        key: str,
        body: bytes | BinaryIO,
        metadata: dict[str, str],
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Store ``body`` under ``key``; return the new ETag.

        ``if_match`` makes the write conditional on the current ETag,
        ``if_none_match`` on the key being absent; a lost condition raises
        ``PreconditionFailed``, unless the key already holds this very version
        (the same bytes and metadata): then an earlier attempt of the write
        landed and its answer was lost, and the write is a success.
        ``Refused`` when the store will not take this key or body at all. A file object body is read from its current
        position to the end (large ones may go up as a multipart upload).
        """

    @abc.abstractmethod
    def copy(self, src: str, dst: str, metadata: dict[str, str] | None = None) -> str:
        """Server-side copy; ``metadata`` replaces the source's when given."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are not an error."""

    @abc.abstractmethod
    def delete_many(self, keys: list[str]) -> None:
        """Remove every key (batched); absent keys are not an error."""

    @abc.abstractmethod
    def list_pages(self, prefix: str, delimiter: str | None = "/",
                   start_after: str | None = None) -> Iterator[ListPage]:
        """Keys starting with ``prefix`` in lexicographic order, page by page.

        With a delimiter, keys that have it after the prefix are rolled up into
        ``prefixes`` (each ending in the delimiter), as S3 does. With
        ``start_after`` (a key, S3's ``StartAfter``) only keys after it: the
        first page begins there, however many keys come before.
        """

    def create_bucket(self) -> bool:
        """Make the bucket if it is missing (``mount --create-bucket``); whether it was made."""
        return False

    def probe(self) -> None:
        """Learn, once, what the server does where S3 servers differ (blocking; a few requests)."""

    def quirks(self) -> list[str]:
        """What this server was seen to do differently from S3, for ``cowfs status``."""
        return []

    def list_some(self, prefix: str, delimiter: str | None, max_pages: int,
                  progress: Callable[[], None] | None = None) -> tuple[ListPage, bool]:
        """At most ``max_pages`` pages (0: all) merged into one, and whether that was every page;
        ``progress()`` is called after each page."""
        out = ListPage()
        for number, page in enumerate(self.list_pages(prefix, delimiter), 1):
            out.objects.extend(page.objects)
            out.prefixes.extend(page.prefixes)
            if progress is not None:
                progress()
            if number == max_pages:
                return out, not page.more
        return out, True

    def list_all(self, prefix: str, delimiter: str | None = "/",
                 progress: Callable[[], None] | None = None) -> ListPage:
        """Every page of a listing merged into one (``progress()`` after each page)."""
        return self.list_some(prefix, delimiter, 0, progress)[0]
