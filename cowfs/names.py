"""Name rules: what a path component may be, checked before anything is written."""

from __future__ import annotations

import re

from .errors import InvalidName, NameTooLong

MAX_COMPONENT_BYTES = 255
MAX_KEY_BYTES = 1024

#: Tenant, workspace and session names.
SCOPED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


def component(raw: bytes | str) -> str:
    """Decode and check one path component as the kernel hands it to us.

    Over 255 bytes -> ENAMETOOLONG; not UTF-8, empty, "." / "..", or holding
    "/" or NUL -> EINVAL (S3 keys are UTF-8, so such a name could not be stored).
    """
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    if len(data) > MAX_COMPONENT_BYTES:
        raise NameTooLong(f"name longer than {MAX_COMPONENT_BYTES} bytes")
    try:
        name = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidName("name is not valid UTF-8") from None
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise InvalidName(f"invalid name {name!r}")
    return name


def check_key_length(key: str, store_prefix: str = "") -> None:
    """Refuse keys the store would reject (S3: 1024 bytes including the prefix)."""
    if len(store_prefix.encode()) + len(key.encode()) > MAX_KEY_BYTES:
        raise NameTooLong(f"object key longer than {MAX_KEY_BYTES} bytes")


def is_listable(name: str) -> bool:
    """Whether a name found in a listing can be shown (keys like "a//b" cannot)."""
    try:
        component(name)
    except (InvalidName, NameTooLong):
        return False
    return True
