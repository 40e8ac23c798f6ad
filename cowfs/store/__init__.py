"""Object stores: the S3 bucket or the embedded local directory, chosen by URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import UsageError
from .base import ListPage, ObjectInfo, ObjectStore
from .local import LocalStore

__all__ = ["ListPage", "ObjectInfo", "ObjectStore", "default_store_path", "open_store"]


def default_store_path() -> Path:
    """Where the embedded store lives: ``$XDG_DATA_HOME/cowfs/store``."""
    data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share"
    return base / "cowfs" / "store"


def open_store(
    url: str | None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    path_style: bool = False,
    **s3_options: Any,
) -> ObjectStore:
    """The store named by ``url``: ``s3://BUCKET[/PREFIX]``, ``file:///PATH``, or None for the embedded one.

    The S3 options apply to ``s3://`` stores only. Nothing is contacted or
    created here; ``check()`` does that.
    """
    if url is None:
        return LocalStore(default_store_path())
    parts = urlsplit(url)
    if not parts.query and not parts.fragment:
        if parts.scheme == "s3" and parts.netloc:
            from .s3 import S3Store  # boto3 is slow to import; local-only commands skip it

            return S3Store(
                parts.netloc, parts.path, endpoint_url=endpoint_url, region=region, path_style=path_style, **s3_options
            )
        if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path.startswith("/"):
            return LocalStore(Path(unquote(parts.path)))
    raise UsageError(f"bad store URL {url!r}: expected s3://BUCKET[/PREFIX] or file:///PATH")
