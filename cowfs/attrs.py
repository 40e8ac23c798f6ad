"""File attributes as object metadata, in the names s3fs and rclone use.

``mode`` is the decimal st_mode with type bits (s3fs), ``mtime`` decimal
seconds with a fraction (rclone), ``uid``/``gid`` decimal; ``rdev`` the
decimal device number of a device file (s3fs). ``atime`` and ``ctime``
(seconds, as ``mtime``) are written only where they differ from ``mtime``:
atime only ever changes when set explicitly (reads leave it, as with
``noatime``), and an object without them shows both as its mtime. ``user.*`` xattrs
travel in one ``xattr`` entry: URL-quoted JSON of name -> base64 value (S3
metadata values must be ASCII; names are case-sensitive, metadata keys not).
"""

from __future__ import annotations

import base64
import json
import stat
import urllib.parse
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .errors import NoSpace

DEFAULT_FILE_MODE = stat.S_IFREG | 0o644
DEFAULT_DIR_MODE = stat.S_IFDIR | 0o755
#: S3 allows 2 KiB of user metadata per object; keep room for mode/uid/gid/rdev and the times.
MAX_XATTR_BYTES = 1800
#: File types stored as zero-byte objects whose mode carries the type (FIFOs, sockets, devices).
SPECIAL_TYPES = frozenset({stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK})
#: The xattrs of a node that has none, shared (a folder of 100,000 files keeps no empty
#: dict per file). A node's xattrs are replaced, never changed in place.
NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})


@dataclass
class Attrs:
    """What a node's object metadata says."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: Mapping[str, bytes] = field(default_factory=lambda: NO_XATTRS)
    rdev: int = 0
    #: None: as ``mtime_ns`` (never set explicitly / not stored).
    atime_ns: int | None = None
    ctime_ns: int | None = None


def is_special(mode: int) -> bool:
    """Whether ``mode`` is a FIFO, socket or device (kept as metadata of an empty object)."""
    return stat.S_IFMT(mode) in SPECIAL_TYPES


def _seconds(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def encode_xattrs(xattrs: Mapping[str, bytes]) -> str:
    doc = {name: base64.b64encode(value).decode() for name, value in sorted(xattrs.items())}
    return urllib.parse.quote(json.dumps(doc, separators=(",", ":")), safe="")


def decode_xattrs(text: str) -> dict[str, bytes]:
    try:
        doc = json.loads(urllib.parse.unquote(text))
        return {str(k): base64.b64decode(v) for k, v in doc.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def check_xattrs_fit(xattrs: Mapping[str, bytes]) -> None:
    """ENOSPC when the xattrs would not fit into the object's metadata."""
    if len(encode_xattrs(xattrs)) > MAX_XATTR_BYTES:
        raise NoSpace("extended attributes exceed the object metadata limit")


def to_metadata(attrs: Attrs) -> dict[str, str]:
    """Object metadata for a node's attributes."""
    meta = {
        "mode": str(attrs.mode),
        "uid": str(attrs.uid),
        "gid": str(attrs.gid),
        "mtime": _seconds(attrs.mtime_ns),
    }
    if attrs.rdev:
        meta["rdev"] = str(attrs.rdev)
    for name, ns in (("atime", attrs.atime_ns), ("ctime", attrs.ctime_ns)):
        if ns is not None and ns != attrs.mtime_ns:
            meta[name] = _seconds(ns)
    if attrs.xattrs:
        meta["xattr"] = encode_xattrs(attrs.xattrs)
    return meta


def _int(meta: dict[str, str], name: str, default: int) -> int:
    try:
        return int(meta[name])
    except (KeyError, ValueError):
        return default


def _time_ns(text: str | None) -> int | None:
    """Decimal seconds with an optional fraction, to the nanosecond; None when absent or malformed."""
    if not text:
        return None
    whole, _, frac = text.strip().partition(".")
    try:
        return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9] or 0)
    except ValueError:
        return None


def from_metadata(
    meta: dict[str, str] | None, *, is_dir: bool, last_modified: float, uid: int, gid: int
) -> Attrs:
    """Attributes of an object; objects other tools wrote get 0644 / 0755."""
    meta = meta or {}
    default_mode = DEFAULT_DIR_MODE if is_dir else DEFAULT_FILE_MODE
    mode = _int(meta, "mode", default_mode)
    if stat.S_IFMT(mode) == 0:
        mode |= stat.S_IFMT(default_mode)
    if is_dir and not stat.S_ISDIR(mode):
        mode = default_mode
    mtime_ns = _time_ns(meta.get("mtime"))
    return Attrs(
        mode=mode,
        uid=_int(meta, "uid", uid),
        gid=_int(meta, "gid", gid),
        mtime_ns=int(last_modified * 1_000_000_000) if mtime_ns is None else mtime_ns,
        xattrs=decode_xattrs(meta["xattr"]) if "xattr" in meta else NO_XATTRS,
        rdev=_int(meta, "rdev", 0) if is_special(mode) else 0,
        atime_ns=_time_ns(meta.get("atime")),
        ctime_ns=_time_ns(meta.get("ctime")),
    )
