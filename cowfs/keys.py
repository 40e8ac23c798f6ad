"""The one mapping between paths in the mount and keys in the store.

A path is a tuple of components relative to the mount root. A whole-store
mount's root is the store root (``TENANT/WORKSPACE/path``); a ``--tenant T``
mount's root is ``T/``, so no path it can form maps outside ``T/``.
"""

from __future__ import annotations

from .names import check_key_length

Path = tuple[str, ...]


class KeyMap:
    """Turns paths into object keys and listing entries back into names."""

    def __init__(self, root: Path = (), store_prefix: str = "") -> None:
        self.root = root
        self.store_prefix = store_prefix

    def file_key(self, path: Path) -> str:
        """Key of the object holding a file or symlink."""
        return "/".join(self.root + path)

    def dir_key(self, path: Path) -> str:
        """Key prefix of a folder, which is also its marker object's key."""
        parts = self.root + path
        return "/".join(parts) + "/" if parts else ""

    def checked_key(self, path: Path, is_dir: bool) -> str:
        """The key for ``path``, refused with ENAMETOOLONG if the store cannot hold it."""
        key = self.dir_key(path) if is_dir else self.file_key(path)
        check_key_length(key, self.store_prefix)
        return key

    def path_of(self, key: str) -> Path:
        """The path a file's key or a folder's prefix names (``file_key``/``dir_key`` undone)."""
        return tuple(key[len(self.dir_key(())):].rstrip("/").split("/"))

    @staticmethod
    def child_name(dir_prefix: str, key: str) -> str:
        """Name of a listing entry (object key or common prefix) inside ``dir_prefix``."""
        return key[len(dir_prefix):].rstrip("/")

    def rebase(self, key: str, old_prefix: str, new_prefix: str) -> str:
        """Key after its folder moved from ``old_prefix`` to ``new_prefix``."""
        return new_prefix + key[len(old_prefix):]


def workspace_prefix(tenant: str, workspace: str) -> str:
    """The key prefix of everything in a workspace (its folder's, in a whole-store mount)."""
    return KeyMap().dir_key((tenant, workspace))
