"""Every error cowfs raises, and the one place that maps them to errno.

Layers below the FUSE operations raise these specific types; ``fs.py`` turns
them into ``FUSEError(errno_of(exc))`` and the CLI into a one-line message
with exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import errno


class CowfsError(Exception):
    """Base of all cowfs errors; carries the errno a FUSE caller sees."""

    errno: int = errno.EIO


class NotFound(CowfsError):
    errno = errno.ENOENT


class AlreadyExists(CowfsError):
    errno = errno.EEXIST


class NotEmpty(CowfsError):
    errno = errno.ENOTEMPTY


class NotADirectory(CowfsError):
    errno = errno.ENOTDIR


class IsADirectory(CowfsError):
    errno = errno.EISDIR


class NameTooLong(CowfsError):
    errno = errno.ENAMETOOLONG


class InvalidName(CowfsError):
    errno = errno.EINVAL


class InvalidArgument(CowfsError):
    errno = errno.EINVAL


class NotPermitted(CowfsError):
    errno = errno.EPERM


class ReadOnly(CowfsError):
    errno = errno.EROFS


class NoSpace(CowfsError):
    errno = errno.ENOSPC


class NoAttribute(CowfsError):
    errno = errno.ENODATA


class AttributeTooBig(CowfsError):
    errno = errno.E2BIG


class Unsupported(CowfsError):
    errno = errno.EOPNOTSUPP


class StagingLost(CowfsError):
    """A journal record's staging bytes are gone or short (a machine crash inside the group-commit window)."""


class StoreError(CowfsError):
    """The object store failed or could not be reached."""

    errno = errno.EIO


class Refused(StoreError):
    """The store refused the request itself (a 4xx about the key or the body, not
    about the store's state): sending it again cannot help."""


class ObjectNotFound(StoreError):
    """The key does not exist in the store."""

    errno = errno.ENOENT


class PreconditionFailed(StoreError):
    """A conditional write (If-Match / If-None-Match) lost against another writer."""


class TimedOut(StoreError):
    """The daemon did not answer a control request (``sync --timeout``) in time."""


class AccessDenied(StoreError):
    """The store refused the credentials or the bucket does not exist."""

    errno = errno.EACCES


class NoSuchBucket(AccessDenied):
    """The bucket named by the store URL does not exist."""

    errno = errno.ENOENT


class InvalidToken(CowfsError):
    """A sessions next-token that was forged, damaged, or made stale by changes."""

    errno = errno.EINVAL


class CacheInUse(CowfsError):
    """Another cowfs process (a daemon, or fsck) holds the cache directory."""


class UsageError(CowfsError):
    """Bad command line or configuration: exit status 2."""


def errno_of(exc: BaseException) -> int:
    """The errno a FUSE caller should see for ``exc``."""
    if isinstance(exc, CowfsError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
