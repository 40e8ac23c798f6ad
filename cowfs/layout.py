"""Where things may live: the tenant / workspace / session shape of the tree.

Pure rules on full paths (components from the store root, so a ``--tenant``
mount sees the same rules one level down):

    depth 1   TENANT        folders only, named by SCOPED_NAME
    depth 2   WORKSPACE     folders only, named by SCOPED_NAME; a workspace record
    depth 3+  inside a workspace: anything, except the generated ``.cowfs``;
              directly under ``sessions/`` only folders (session ids) named by SCOPED_NAME

The one exception is the trash of file managers (the XDG trash spec as GIO
implements it), at the root of the mount (``mount_root`` components down from
the store root: 1 for a ``--tenant`` mount): ``.Trash-UID`` folders, and a
shared ``.Trash`` folder holding ``UID`` folders. A trash folder belongs to
that uid alone; anything may live inside it, and it is no tenant or workspace.
"""

from __future__ import annotations

import re

from .errors import InvalidName, NotPermitted
from .names import SCOPED_NAME

TENANT_DEPTH = 1
WORKSPACE_DEPTH = 2
CONTROL_DIR = ".cowfs"
SESSIONS_DIR = "sessions"
SHARED_TRASH = ".Trash"
#: ``.Trash-UID``: one user's trash at the root; ``UID`` alone inside ``.Trash``.
OWN_TRASH = re.compile(r"\.Trash-(\d{1,10})\Z")
TRASH_UID = re.compile(r"\d{1,10}\Z")
TRASH_MODE = 0o700


def trash_owner(parts: tuple[str, ...], mount_root: int = 0) -> int | None:
    """The uid whose trash folder ``parts`` is (the folder itself, not what is inside), else None."""
    inner = parts[mount_root:]
    if len(inner) == 1 and (own := OWN_TRASH.match(inner[0])):
        return int(own[1])
    if len(inner) == 2 and inner[0] == SHARED_TRASH and TRASH_UID.match(inner[1]):
        return int(inner[1])
    return None


def in_trash(parts: tuple[str, ...], mount_root: int = 0) -> bool:
    """Whether ``parts`` is the shared ``.Trash``, a trash folder, or lies inside one."""
    inner = parts[mount_root:]
    return bool(inner) and (inner[0] == SHARED_TRASH or OWN_TRASH.match(inner[0]) is not None)


def _check_trash_entry(inner: tuple[str, ...], is_dir: bool) -> None:
    """``.Trash`` and ``.Trash-UID`` are folders; ``.Trash`` holds only ``UID`` folders; below, anything."""
    shared = inner[0] == SHARED_TRASH
    if (len(inner) == 1 or (shared and len(inner) == 2)) and not is_dir:
        raise NotPermitted("only folders can live at the top of the trash")
    if shared and len(inner) == 2 and not TRASH_UID.match(inner[-1]):
        raise InvalidName(f"invalid trash folder {inner[-1]!r} (a uid)")


def _is_session_slot(parts: tuple[str, ...]) -> bool:
    return len(parts) == WORKSPACE_DEPTH + 2 and parts[WORKSPACE_DEPTH] == SESSIONS_DIR


def check_new_entry(parts: tuple[str, ...], is_dir: bool, mount_root: int = 0) -> None:
    """Refuse creating ``parts`` where the layout does not allow it.

    Files at the tenant or workspace level, or directly under ``sessions/``
    -> EPERM; tenant, workspace and session names outside
    ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}`` -> EINVAL. Trash folders at the
    mount's root are checked by their own rules.
    """
    if in_trash(parts, mount_root):
        _check_trash_entry(parts[mount_root:], is_dir)
        return
    name = parts[-1]
    depth = len(parts)
    if depth <= WORKSPACE_DEPTH:
        if not is_dir:
            raise NotPermitted(f"only folders can live at the {'tenant' if depth == 1 else 'workspace'} level")
        if not SCOPED_NAME.match(name):
            raise InvalidName(f"invalid {'tenant' if depth == 1 else 'workspace'} name {name!r}")
    elif _is_session_slot(parts):
        if not is_dir:
            raise NotPermitted(f"only session folders can live in {SESSIONS_DIR}/")
        if not SCOPED_NAME.match(name):
            raise InvalidName(f"invalid session id {name!r}")


def visible(parts: tuple[str, ...], is_dir: bool, mount_root: int = 0) -> bool:
    """Whether a listing entry at ``parts`` is shown in the mount."""
    try:
        check_new_entry(parts, is_dir, mount_root)
    except (InvalidName, NotPermitted):
        return False
    return not (workspace_of(parts) is not None and len(parts) == WORKSPACE_DEPTH + 1 and parts[-1] == CONTROL_DIR)


def can_rename(parts: tuple[str, ...], mount_root: int = 0) -> bool:
    """Tenants, workspaces and trash folders are identities: they are created and deleted, never moved."""
    inner = parts[mount_root:]
    return len(parts) > WORKSPACE_DEPTH and trash_owner(parts, mount_root) is None and inner != (SHARED_TRASH,)


def is_workspace(parts: tuple[str, ...]) -> bool:
    """Whether ``parts`` names a workspace folder (not a trash folder at the depth of one)."""
    return len(parts) == WORKSPACE_DEPTH and all(SCOPED_NAME.match(name) for name in parts)


def workspace_of(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(tenant, workspace) holding ``parts``, if it lies inside one (a trash lies in none)."""
    return (parts[0], parts[1]) if len(parts) > WORKSPACE_DEPTH and is_workspace(parts[:2]) else None


#: The xattrs ``artifact_type`` derives from a path: shown by a mount, never stored.
DERIVED_XATTRS = ("user.cowfs.type", "user.cowfs.session")


def artifact_type(parts: tuple[str, ...]) -> tuple[str, str | None]:
    """(``user.cowfs.type``, ``user.cowfs.session``) of a path inside a workspace.

    ``sessions/ID/history.jsonl`` is the session history, ``sessions/ID/artifacts/…``
    tool output, ``sessions/ID/diffs/…`` file diffs; everything else is a plain file.
    """
    inner = parts[WORKSPACE_DEPTH:]
    if len(inner) < 2 or inner[0] != SESSIONS_DIR:
        return "file", None
    session, rest = inner[1], inner[2:]
    if rest == ("history.jsonl",):
        return "session_history", session
    if len(rest) > 1 and rest[0] == "artifacts":
        return "tool_output", session
    if len(rest) > 1 and rest[0] == "diffs":
        return "file_diff", session
    return "file", session
