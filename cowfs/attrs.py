"""File attributes as object metadata, in the names s3fs and rclone use.

``mode`` is the decimal st_mode with type bits (s3fs), ``mtime`` decimal
seconds with a fraction (rclone), ``uid``/``gid`` decimal. ``user.*`` xattrs
travel in one ``xattr`` entry: URL-quoted JSON of name -> base64 value (S3
metadata values must be ASCII; names are case-sensitive, metadata keys not).
"""

from __future__ import annotations

import base64
import json
import stat
import urllib.parse
from dataclasses import dataclass, field

from .errors import NoSpace

DEFAULT_FILE_MODE = stat.S_IFREG | 0o644
DEFAULT_DIR_MODE = stat.S_IFDIR | 0o755
#: S3 allows 2 KiB of user metadata per object; keep room for mode/uid/gid/mtime.
MAX_XATTR_BYTES = 1800


@dataclass
class Attrs:
    """What a node's object metadata says."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: dict[str, bytes] = field(default_factory=dict)


def encode_xattrs(xattrs: dict[str, bytes]) -> str:
    doc = {name: base64.b64encode(value).decode() for name, value in sorted(xattrs.items())}
    return urllib.parse.quote(json.dumps(doc, separators=(",", ":")), safe="")


def decode_xattrs(text: str) -> dict[str, bytes]:
    try:
        doc = json.loads(urllib.parse.unquote(text))
        return {str(k): base64.b64decode(v) for k, v in doc.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def check_xattrs_fit(xattrs: dict[str, bytes]) -> None:
    """ENOSPC when the xattrs would not fit into the object's metadata."""
    if len(encode_xattrs(xattrs)) > MAX_XATTR_BYTES:
        raise NoSpace("extended attributes exceed the object metadata limit")


def to_metadata(attrs: Attrs) -> dict[str, str]:
    """Object metadata for a node's attributes."""
    meta = {
        "mode": str(attrs.mode),
        "uid": str(attrs.uid),
        "gid": str(attrs.gid),
        "mtime": f"{attrs.mtime_ns // 1_000_000_000}.{attrs.mtime_ns % 1_000_000_000:09d}",
    }
    if attrs.xattrs:
        meta["xattr"] = encode_xattrs(attrs.xattrs)
    return meta


def _int(meta: dict[str, str], name: str, default: int) -> int:
    try:
        return int(meta[name])
    except (KeyError, ValueError):
        return default


def _mtime_ns(text: str | None, default_ns: int) -> int:
    if not text:
        return default_ns
    whole, _, frac = text.strip().partition(".")
    try:
        return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9] or 0)
    except ValueError:
        return default_ns


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
    return Attrs(
        mode=mode,
        uid=_int(meta, "uid", uid),
        gid=_int(meta, "gid", gid),
        mtime_ns=_mtime_ns(meta.get("mtime"), int(last_modified * 1_000_000_000)),
        xattrs=decode_xattrs(meta["xattr"]) if "xattr" in meta else {},
    )
