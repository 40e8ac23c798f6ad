"""What the layout of tenants and workspaces adds to the tree.

Generated ``.cowfs`` files, the configured tenants of a multi-user mount and
their owners, the trash folders' owners, the attributes a stored object shows
as, and the extended attributes that follow from a path. The rules themselves
are ``layout``'s; this part applies them to nodes.
"""

from __future__ import annotations

import math
import stat
import time

from .. import layout
from ..attrs import DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, Attrs, from_metadata, is_special
from ..config import TenantOwner
from ..errors import ReadOnly
from .node import Kind, Node
from .table import Inodes

#: Generated files in ``.cowfs``: the daemon's status at the mount root, records in each workspace.
ROOT_GENERATED = ("status.json",)
WORKSPACE_GENERATED = ("workspace.json", "sessions.json")


class WorkspaceView:
    """Applies the tenant and workspace layout to the nodes of one mount."""

    def __init__(self, inodes: Inodes, uid: int, gid: int, tenants: dict[str, TenantOwner] | None) -> None:
        """``tenants`` (from the config file) makes a multi-user mount: only those
        tenants exist, each owned by its uid/gid/mode, and new entries take its group;
        each of their users has a trash folder at the root, as they may not create one there."""
        self.inodes = inodes
        self.uid = uid
        self.gid = gid
        self.tenants = tenants
        self.mount_root = len(inodes.keymap.root)
        root = inodes.root
        self.decorate(root)
        self.own_tenant(root)
        if tenants is not None and not inodes.keymap.root:
            trash = sorted({f".Trash-{owner.uid}" for owner in tenants.values()})
            for name in sorted(tenants) + trash:
                tenant = inodes.new_node(root, name, Kind.DIR, Attrs(DEFAULT_DIR_MODE, uid, gid, time.time_ns()))
                tenant.remote, tenant.pinned = True, True
                self.own_tenant(tenant)

    def decorate(self, node: Node) -> None:
        """Give a folder its generated ``.cowfs`` files, if its depth has any."""
        if node is self.inodes.root:
            names = ROOT_GENERATED
        elif node.kind is Kind.DIR and layout.is_workspace(self.inodes.full(node)):
            names = WORKSPACE_GENERATED
        else:
            return
        now = time.time_ns()
        new_node = self.inodes.new_node
        control = new_node(node, layout.CONTROL_DIR, Kind.DIR, Attrs(stat.S_IFDIR | 0o555, self.uid, self.gid, now))
        control.virtual = "dir"
        control.listed_at = math.inf
        for name in names:
            child = new_node(control, name, Kind.FILE, Attrs(stat.S_IFREG | 0o444, self.uid, self.gid, now))
            child.virtual = name
        for generated in (control, *control.children.values()):
            generated.remote = True

    def owner(self, full: tuple[str, ...]) -> TenantOwner | None:
        return self.tenants.get(full[0]) if self.tenants and full else None

    def own_tenant(self, node: Node) -> None:
        """A configured tenant's folder always shows its configured owner and mode, a trash folder its user and 0700."""
        full = self.inodes.full(node)
        owner = self.owner(full)
        if owner is not None and len(full) == layout.TENANT_DEPTH:
            node.uid, node.gid, node.mode = owner.uid, owner.gid, stat.S_IFDIR | owner.mode
        trash_uid = layout.trash_owner(full, self.mount_root)
        if trash_uid is not None:
            node.uid, node.mode = trash_uid, stat.S_IFDIR | layout.TRASH_MODE

    def may_exist(self, full: tuple[str, ...]) -> bool:
        """With a tenants table, only configured tenants (and trash folders) exist."""
        return (self.tenants is None or len(full) != layout.TENANT_DEPTH or full[0] in self.tenants
                or layout.in_trash(full))

    def group(self, parent: Node, gid: int) -> int:
        """New entries in a configured tenant take the tenant's group (like a setgid folder)."""
        owner = self.owner(self.inodes.full(parent))
        return owner.gid if owner is not None else gid

    def apply_meta(self, node: Node, meta: dict[str, str], last_modified: float) -> None:
        """Attributes of a stored object (its metadata; defaults where it has none), and the kind they name."""
        attrs = from_metadata(meta, is_dir=node.kind is Kind.DIR, last_modified=last_modified, uid=self.uid,
                              gid=self.gid)
        node.take_attrs(attrs)
        if node.kind is not Kind.DIR:
            node.kind = Kind.LINK if stat.S_ISLNK(attrs.mode) else Kind.SPECIAL if is_special(attrs.mode) else Kind.FILE
            if node.kind is Kind.FILE and not stat.S_ISREG(attrs.mode):
                node.mode = DEFAULT_FILE_MODE
        self.own_tenant(node)
        node.meta_known = True

    def derived_xattrs(self, node: Node) -> dict[str, bytes]:
        """``user.cowfs.type`` / ``user.cowfs.session``, which follow from the path."""
        full = self.inodes.full(node)
        if node.virtual or layout.workspace_of(full) is None:
            return {}
        kind, session = layout.artifact_type(full)
        derived = {"user.cowfs.type": kind.encode()}
        if session is not None:
            derived["user.cowfs.session"] = session.encode()
        return derived

    @staticmethod
    def writable(node: Node) -> Node:
        """``node``, unless it is generated (read-only)."""
        if node.virtual:
            raise ReadOnly(f"{node.name} is generated by cowfs and read-only")
        return node
