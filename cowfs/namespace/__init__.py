"""The filesystem's semantics, with no FUSE in sight: a package of parts composed by ``Namespace``."""

from .tree import RENAME_EXCHANGE, RENAME_NOREPLACE
from .core import Namespace, StatFs
from .listings import DEEP_PAGES, LISTING_LAG
from .node import ROOT_INODE, Condition, Kind, Node
from .table import DirHandle, Handle, OpenResult

__all__ = [
    "DEEP_PAGES", "LISTING_LAG", "RENAME_EXCHANGE", "RENAME_NOREPLACE", "ROOT_INODE", "Condition", "DirHandle",
    "Handle", "Kind", "Namespace", "Node", "OpenResult", "StatFs",
]
