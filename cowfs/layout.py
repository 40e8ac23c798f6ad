"""Where things may live: the tenant / workspace / session shape of the tree.

Pure rules on full paths (components from the store root, so a ``--tenant``
mount sees the same rules one level down):

    depth 1   TENANT        folders only, named by SCOPED_NAME
    depth 2   WORKSPACE     folders only, named by SCOPED_NAME; a workspace record
    depth 3+  inside a workspace: anything, except the generated ``.cowfs``;
              directly under ``sessions/`` only folders (session ids) named by SCOPED_NAME
"""

from __future__ import annotations

from .errors import InvalidName, NotPermitted
from .names import SCOPED_NAME

TENANT_DEPTH = 1
WORKSPACE_DEPTH = 2
CONTROL_DIR = ".cowfs"
SESSIONS_DIR = "sessions"


def _is_session_slot(parts: tuple[str, ...]) -> bool:
    return len(parts) == WORKSPACE_DEPTH + 2 and parts[WORKSPACE_DEPTH] == SESSIONS_DIR


def check_new_entry(parts: tuple[str, ...], is_dir: bool) -> None:
    """Refuse creating ``parts`` where the layout does not allow it.

    Files at the tenant or workspace level, or directly under ``sessions/``
    -> EPERM; tenant, workspace and session names outside
    ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}`` -> EINVAL.
    """
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


def visible(parts: tuple[str, ...], is_dir: bool) -> bool:
    """Whether a listing entry at ``parts`` is shown in the mount."""
    try:
        check_new_entry(parts, is_dir)
    except (InvalidName, NotPermitted):
        return False
    return not (len(parts) == WORKSPACE_DEPTH + 1 and parts[-1] == CONTROL_DIR)


def can_rename(parts: tuple[str, ...]) -> bool:
    """Tenants and workspaces are identities: they are created and deleted, never moved."""
    return len(parts) > WORKSPACE_DEPTH


def workspace_of(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(tenant, workspace) holding ``parts``, if it lies inside one."""
    return (parts[0], parts[1]) if len(parts) > WORKSPACE_DEPTH else None


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
