"""The trash of file managers in the store: what is in it, and emptying it.

A mount keeps the XDG trash at its root (``layout``): keys
``.Trash-UID/{files,info}/...`` (or ``.Trash/UID/...``) under the store's
prefix, and under ``TENANT/`` for the trash of a ``--tenant`` mount. An entry
is ``files/NAME`` (a file or a whole folder) with ``info/NAME.trashinfo``,
which records the original path and when it was trashed.
"""

from __future__ import annotations

import configparser
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from . import layout
from .errors import CowfsError
from .names import SCOPED_NAME
from .store import ObjectInfo, ObjectStore
from .workspaces import _iso, parallel

INFO_SUFFIX = ".trashinfo"


@dataclass
class TrashEntry:
    """One trashed file or folder: its objects, and what its ``.trashinfo`` says."""

    trash: str
    name: str
    originalPath: str | None = None
    deletedAt: datetime | None = None
    keys: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    newest: float = 0.0

    def to_json(self) -> dict:
        return {
            "trash": self.trash.rstrip("/"),
            "name": self.name,
            "originalPath": self.originalPath,
            "deletedAt": _iso(self.deletedAt) if self.deletedAt else None,
            "files": self.files,
            "bytes": self.bytes,
        }

    def older_than(self, cutoff: datetime) -> bool:
        """Trashed before ``cutoff`` by its ``.trashinfo`` and by every object it holds."""
        latest = datetime.fromtimestamp(self.newest, timezone.utc)
        return max(latest, self.deletedAt or latest) < cutoff


def _trash_folders(store: ObjectStore, prefix: str) -> list[str]:
    """Key prefixes of the trash folders directly under ``prefix`` (the store root or a tenant)."""
    found = []
    for sub in store.list_all(prefix, "/").prefixes:
        name = sub[len(prefix):].rstrip("/")
        if layout.OWN_TRASH.match(name):
            found.append(sub)
        elif name == layout.SHARED_TRASH:
            found += [p for p in store.list_all(sub, "/").prefixes if layout.TRASH_UID.match(p[len(sub):].rstrip("/"))]
    return found


def trash_folders(store: ObjectStore) -> list[str]:
    """Every trash folder in the store: at its root (whole-store mounts) and in each tenant (``--tenant`` mounts)."""
    tenants = [p for p in store.list_all("", "/").prefixes if SCOPED_NAME.match(p.rstrip("/"))]
    return [folder for found in parallel(lambda p: _trash_folders(store, p), ["", *tenants]) for folder in found]


def parse_info(text: str) -> tuple[str | None, datetime | None]:
    """(original path, deletion time) from a ``.trashinfo``; None for what it lacks or garbles.

    ``DeletionDate`` is local time without a zone, as the spec has it.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
        section = parser["Trash Info"]
        path = section.get("Path")
        when = section.get("DeletionDate")
    except (configparser.Error, KeyError):
        return None, None
    try:
        deleted = datetime.fromisoformat(when).astimezone(timezone.utc) if when else None
    except ValueError:
        deleted = None
    return (urllib.parse.unquote(path) if path else None), deleted


def entries(store: ObjectStore, folder: str) -> list[TrashEntry]:
    """The entries of one trash folder, oldest first; an info without files, or files without info, is one too."""
    found: dict[str, TrashEntry] = {}
    infos: dict[str, ObjectInfo] = {}
    for obj in store.list_all(folder, None).objects:
        area, _, rest = obj.key[len(folder):].partition("/")
        if area == "info" and rest.endswith(INFO_SUFFIX) and "/" not in rest:
            name = rest[: -len(INFO_SUFFIX)]
            infos[name] = obj
        elif area in ("files", "expunged") and rest:
            name = f"{area}/{rest.split('/', 1)[0]}" if area == "expunged" else rest.split("/", 1)[0]
        else:
            continue
        entry = found.setdefault(name, TrashEntry(folder, name))
        entry.keys.append(obj.key)
        entry.newest = max(entry.newest, obj.last_modified)
        if area != "info" and not obj.key.endswith("/"):
            entry.files += 1
            entry.bytes += obj.size

    def read(name: str) -> tuple[str | None, datetime | None]:
        try:
            return parse_info(store.get(infos[name].key)[0].decode("utf-8", "replace"))
        except CowfsError:  # gone or unreadable: the entry still counts, by its objects' age
            return None, None

    for name, (path, when) in zip(infos, parallel(read, list(infos))):
        found[name].originalPath, found[name].deletedAt = path, when
    return sorted(found.values(), key=lambda e: (e.deletedAt or datetime.fromtimestamp(e.newest, timezone.utc),
                                                 e.name))


def list_trash(store: ObjectStore) -> list[TrashEntry]:
    """Every entry of every trash folder in the store."""
    return [entry for found in parallel(lambda f: entries(store, f), trash_folders(store)) for entry in found]


def select(store: ObjectStore, older_than_days: float | None = None, now: datetime | None = None) -> list[TrashEntry]:
    """The entries trashed more than ``older_than_days`` ago (every entry when None)."""
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=older_than_days or 0)
    return [e for e in list_trash(store) if older_than_days is None or e.older_than(cutoff)]


def delete(store: ObjectStore, chosen: list[TrashEntry], progress: Callable[[TrashEntry], None] | None = None) -> None:
    """Delete the objects of ``chosen`` entries, telling ``progress`` of each once it is gone."""
    for entry in chosen:
        store.delete_many(entry.keys)
        if progress is not None:
            progress(entry)
