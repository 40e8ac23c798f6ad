"""A workspace (or one session of it) to a tar archive and back: ``cowfs export`` / ``cowfs import``.

An archive holds what a mount shows, named relative to the workspace root
(a session keeps its ``sessions/ID/...`` names, so importing it into a
workspace puts it back in place): folders, files, symlinks, FIFOs and
devices with their permission bits, uid, gid and mtime (the exact
nanoseconds in the pax ``mtime`` record), and ``user.*`` xattrs as pax
``SCHILY.xattr.user.NAME`` records (GNU tar's convention, so ``tar --xattrs``
reads and writes them). ``.cowfs`` is generated and never archived; nor are
sockets, which tar cannot hold.

Import never writes outside ``TENANT/WORKSPACE/``: every member is checked
before anything is written, and the ones that could do harm or that a mount
could not have created (absolute or escaping names, devices unless asked
for, symlinks that lead out, names over the length limits or under
``.cowfs``, invalid session ids) are skipped and reported. A hard link is
stored as a copy of its target when the target is imported too, since a
mount refuses hard links.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import heapq
import io
import lzma
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, TypeVar

from . import layout
from .attrs import DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, Attrs, check_xattrs_fit, from_metadata, is_special, to_metadata
from .errors import CowfsError, InvalidName, NameTooLong, NoSpace, NotFound, NotPermitted, PreconditionFailed, Refused
from .hooks import user_name
from .keys import KeyMap
from .names import component
from .output import plural, size
from .progress import Meter
from .sessionindex import refresh_keys
from .store import ObjectInfo, ObjectStore
from .workspaces import check_scoped_name, create_workspace, get_workspace, touch_workspace

#: Objects downloaded or uploaded at once: each costs a round trip, and each waits in a temporary file.
PARALLEL = 8
#: Bytes copied at a time from an archive member to its temporary file.
CHUNK = 1024 * 1024
XATTR_RECORD = "SCHILY.xattr."
#: Names in archives and xattr values are bytes; surrogateescape keeps the ones that are not UTF-8 intact.
ENCODING = "utf-8"

Parts = tuple[str, ...]
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Summary:
    """What an export or import did, and every entry it left out with the reason."""

    files: int = 0
    folders: int = 0
    symlinks: int = 0
    special: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def count(self, member: tarfile.TarInfo) -> None:
        if member.isdir():
            self.folders += 1
        elif member.issym():
            self.symlinks += 1
        elif member.isdev():  # FIFOs too
            self.special += 1
        else:
            self.files += 1
            self.bytes += member.size

    def lines(self, verb: str, where: str) -> list[str]:
        """One line per skipped entry, then ``exported 3 files, 1 folder, 0 symlinks (1.2 MiB) to OUT``
        (and ``, 2 special files`` when there were FIFOs or devices)."""
        kinds = [(self.files, "file"), (self.folders, "folder"), (self.symlinks, "symlink")]
        if self.special:
            kinds.append((self.special, "special file"))
        counts = ", ".join(plural(n, word) for n, word in kinds)
        skipped = f"; {len(self.skipped)} skipped" if self.skipped else ""
        return [f"skipped {_shown(name)}: {why}" for name, why in self.skipped] + [
            f"{verb} {counts} ({size(self.bytes)}) {where}{skipped}"]


# -- export -----------------------------------------------------------------------


@dataclass
class _Node:
    """A folder, file or symlink a mount shows; ``info`` is None for a folder with no marker object."""

    parts: Parts
    is_dir: bool
    info: ObjectInfo | None


def export_archive(store: ObjectStore, tenant: str, workspace: str, out: Path, session: str | None = None,
                   meter: Meter | None = None) -> Summary:
    """Write the workspace (or one of its sessions) to ``out`` as a tar.gz; ``meter`` hears of each member.

    The archive is written beside ``out`` and renamed into place at the end,
    so a failed export never leaves a half archive behind.
    """
    keymap = _keymap(store, tenant, workspace)
    get_workspace(store, tenant, workspace)
    base: Parts = (layout.SESSIONS_DIR, check_scoped_name("session", session)) if session else ()
    summary = Summary()
    nodes = _visible(store, keymap, base, summary)
    if session and not nodes:
        raise NotFound(f"no session {session} in {tenant}/{workspace}")
    if meter is not None:
        meter.plan(len(nodes), sum(n.info.size for n in nodes if n.info is not None and not n.is_dir))
    partial = out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")
    try:
        with _file_errors(f"cannot write {out}"), open(partial, "xb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT,
                              encoding=ENCODING) as tar:
                for node, fetched in zip(nodes, _ahead(functools.partial(_fetch, store), nodes)):
                    if isinstance(fetched, str):
                        summary.skipped.append(("/".join(node.parts), fetched))
                        continue
                    member, body = fetched
                    tar.addfile(member, body)
                    if body is not None:
                        body.close()
                    summary.count(member)
                    if meter is not None:
                        meter.advance(1, member.size if member.isreg() else 0)
            raw.flush()
            os.fsync(raw.fileno())
            os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return summary


def _visible(store: ObjectStore, keymap: KeyMap, base: Parts, summary: Summary) -> list[_Node]:
    """What a mount shows under ``base`` (a path inside the workspace), parents before children.

    As in a mount: a folder hides a file of the same name, a folder with no
    marker object is shown (0755, mtime 0), and a key with a name a mount
    refuses is left out (reported, unless it is under ``.cowfs``) while the
    folders above that name are shown.
    """
    root = keymap.dir_key(())
    folders: dict[Parts, ObjectInfo | None] = {}
    files: dict[Parts, ObjectInfo] = {}
    for page in store.list_pages(keymap.dir_key(base), None):
        for info in page.objects:
            if info.key == root:
                continue
            is_marker = info.key.endswith("/")
            parts = tuple(info.key[len(root):].removesuffix("/").split("/"))
            refused = _refusal(keymap, parts, is_marker)
            shown = len(parts) if refused is None else refused[0]
            for depth in range(max(len(base), 1), min(shown, len(parts) - 1) + 1):
                folders.setdefault(parts[:depth], None)
            if refused is not None:
                if parts[0] != layout.CONTROL_DIR:
                    summary.skipped.append(("/".join(parts), refused[1]))
            elif is_marker:
                folders[parts] = info
            else:
                files[parts] = info
    for parts in files.keys() & folders.keys():
        summary.skipped.append(("/".join(parts), "a folder of the same name hides it"))
        del files[parts]
    nodes = [_Node(p, True, i) for p, i in folders.items()] + [_Node(p, False, i) for p, i in files.items()]
    return sorted(nodes, key=lambda n: n.parts)


#: Tar member types of the special files an archive can hold (not sockets).
_SPECIAL_MEMBERS = {stat.S_IFIFO: tarfile.FIFOTYPE, stat.S_IFCHR: tarfile.CHRTYPE, stat.S_IFBLK: tarfile.BLKTYPE}
#: ``S_IF*`` type bits of an imported member by its tar type; anything else is a regular file.
_FILE_TYPES = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK} | {
    kind: mode for mode, kind in _SPECIAL_MEMBERS.items()}


def _fetch(store: ObjectStore, node: _Node) -> tuple[tarfile.TarInfo, IO[bytes] | None] | str:
    """A node as a tar member and, for a file, its bytes spooled to a temporary file;
    or why it cannot be archived.

    At most one request per node: a marker's HEAD, or the GET of a file or
    symlink (a listing carries no metadata, a GET does).
    """
    uid, gid = os.getuid(), os.getgid()
    if node.info is None:
        return _member(node.parts, tarfile.DIRTYPE, Attrs(DEFAULT_DIR_MODE, uid, gid, 0)), None
    if node.is_dir:
        info = store.head(node.info.key)
        attrs = from_metadata(info.metadata, is_dir=True, last_modified=info.last_modified, uid=uid, gid=gid)
        return _member(node.parts, tarfile.DIRTYPE, attrs), None
    body = tempfile.TemporaryFile()
    try:
        info = store.get_to_file(node.info.key, body)
        attrs = from_metadata(info.metadata, is_dir=False, last_modified=info.last_modified, uid=uid, gid=gid)
        body.seek(0)
        if stat.S_ISLNK(attrs.mode):
            member = _member(node.parts, tarfile.SYMTYPE, attrs)
            member.linkname = body.read().decode(ENCODING, "surrogateescape")
            body.close()
            return member, None
        if is_special(attrs.mode):
            body.close()
            kind = _SPECIAL_MEMBERS.get(stat.S_IFMT(attrs.mode))
            if kind is None:
                return "socket (tar cannot hold one)"
            member = _member(node.parts, kind, attrs)
            member.devmajor, member.devminor = os.major(attrs.rdev), os.minor(attrs.rdev)
            return member, None
        if not stat.S_ISREG(attrs.mode):
            attrs.mode = DEFAULT_FILE_MODE
        member = _member(node.parts, tarfile.REGTYPE, attrs)
        member.size = info.size
        return member, body
    except BaseException:
        body.close()
        raise


def _member(parts: Parts, kind: bytes, attrs: Attrs) -> tarfile.TarInfo:
    """A tar header with the attributes a mount shows, mtime to the nanosecond and xattrs as pax records."""
    member = tarfile.TarInfo("/".join(parts))
    member.type = kind
    member.mode = stat.S_IMODE(attrs.mode)
    member.uid, member.gid = attrs.uid, attrs.gid
    member.mtime = attrs.mtime_ns // 1_000_000_000
    if attrs.mtime_ns % 1_000_000_000:
        member.pax_headers["mtime"] = to_metadata(attrs)["mtime"]
    for name, value in attrs.xattrs.items():
        member.pax_headers[XATTR_RECORD + name] = value.decode(ENCODING, "surrogateescape")
    return member


# -- import -----------------------------------------------------------------------


@dataclass
class _Entry:
    """A path to write and the member whose bytes and attributes it takes (a hard link: its target)."""

    parts: Parts
    data: tarfile.TarInfo
    #: A folder the archive only implies: an existing marker (and its attributes) is kept.
    implied: bool = False


@dataclass(frozen=True)
class Limits:
    """How much one import may write: far more than any real workspace holds.

    An archive is small and what it expands to need not be: a few MiB of
    zeros make GiB of files, and every member's header is kept in memory
    while the archive is checked (about 1 KiB each).
    """

    max_bytes: int = 64 * 1024**3
    max_members: int = 1_000_000

    def check(self, archive: Path, members: int, expanded: int) -> None:
        if members > self.max_members:
            raise CowfsError(f"{archive} holds more than {self.max_members} members (--max-members raises the limit)")
        if expanded > self.max_bytes:
            raise CowfsError(f"{archive} expands to more than {size(self.max_bytes)} of files "
                             "(--max-bytes raises the limit)")


def import_archive(store: ObjectStore, tenant: str, workspace: str, archive: Path,
                   limits: Limits = Limits(), allow_devices: bool = False, meter: Meter | None = None) -> Summary:
    """Write the members of a tar archive (any compression) into the workspace.

    The whole archive is read and checked first, so a damaged one writes
    nothing: every member header, and the compressed stream down to its last
    byte (gzip's CRC and length, bz2's and xz's checks). So is one that
    expands past ``limits`` or needs more room in the temporary folder than
    there is. Objects already under the same keys are replaced. The
    workspace record is created if missing (as ``mkdir TENANT/NAME`` does)
    and its ``lastActiveAt`` advanced. Device files are skipped unless
    ``allow_devices`` (a mount does not let them act as devices either, unless
    mounted with ``-o dev``). ``meter`` hears of each member stored.
    """
    keymap = _keymap(store, tenant, workspace)
    summary = Summary()
    with _file_errors(f"cannot read {archive}"), tarfile.open(archive, "r:*", encoding=ENCODING) as tar:
        entries = _plan(keymap, _read_whole(tar, archive, limits), summary, allow_devices)
        files = [entry.data.size for entry in entries if entry.data.isreg()]
        limits.check(archive, len(entries), sum(files))
        _check_temporary_room(files)
        if meter is not None:
            meter.plan(len(entries), sum(files))
        create_workspace(store, tenant, user_name(os.getuid()), "general", workspace_id=workspace)
        bodies = ((entry, _body(tar, entry)) for entry in entries)
        for member in _ahead(functools.partial(_put, store, keymap, summary), bodies):
            if member is not None:
                summary.count(member)
            if meter is not None and member is not None:
                meter.advance(1, member.size if member.isreg() else 0)
    touch_workspace(store, tenant, workspace, datetime.now(timezone.utc))
    refresh_keys(store, (keymap.checked_key(entry.parts, entry.data.isdir()) for entry in entries))
    return summary


def _read_whole(tar: tarfile.TarFile, archive: Path, limits: Limits) -> list[tarfile.TarInfo]:
    """Every member header, then the rest of the stream to its end; stops past ``limits``.

    tarfile stops at the end-of-archive blocks and never reads a compressed
    stream's trailer: seeking to the end decompresses the rest, and the
    stream's own checks run (the second pass, which reads the members'
    bytes, starts again from the beginning).
    """
    members: list[tarfile.TarInfo] = []
    expanded = 0
    for member in tar:
        members.append(member)
        expanded += member.size if member.isreg() else 0
        limits.check(archive, len(members), expanded)
    tar.fileobj.seek(0, io.SEEK_END)
    return members


def _check_temporary_room(sizes: list[int]) -> None:
    """Refuse, before anything is written, an import whose files spooled at once would not fit
    in the temporary folder."""
    need = sum(heapq.nlargest(PARALLEL, sizes))
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if need > free:
        raise NoSpace(f"the temporary folder {folder} has {size(free)} free and the import spools up to "
                      f"{size(need)} there at once (TMPDIR names another folder)")


def _plan(keymap: KeyMap, members: list[tarfile.TarInfo], summary: Summary, allow_devices: bool) -> list[_Entry]:
    """The entries to write: folders the archive only implies, then the members in archive order.

    A later member of the same name replaces an earlier one, as when tar
    extracts; a folder wins over a file of the same name, as in a mount.
    """
    plan: dict[Parts, _Entry] = {}
    for member in members:
        checked = _check(keymap, member, plan, allow_devices)
        if isinstance(checked, str):
            summary.skipped.append((member.name, checked))
        elif checked is not None:
            plan.pop(checked.parts, None)
            plan[checked.parts] = checked
    parents = {parts[:depth] for parts in plan for depth in range(1, len(parts))}
    for parts in sorted(parents & plan.keys()):
        if not plan[parts].data.isdir():
            del plan[parts]
            summary.skipped.append(("/".join(parts), "a folder of the same name is in the archive"))
    return [_Entry(p, _folder(p), implied=True) for p in sorted(parents - plan.keys())] + list(plan.values())


def _folder(parts: Parts) -> tarfile.TarInfo:
    member = tarfile.TarInfo("/".join(parts))
    member.type = tarfile.DIRTYPE
    return member


def _normalized(name: str) -> tuple[Parts, str | None]:
    """Components of an archive name inside the workspace, or why it is not inside."""
    if name.startswith("/"):
        return (), "absolute path"
    parts: list[str] = []
    for part in name.split("/"):
        if part == "..":
            if not parts:
                return (), "escapes the workspace"
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return tuple(parts), None


def _check(
    keymap: KeyMap, member: tarfile.TarInfo, plan: dict[Parts, _Entry], allow_devices: bool
) -> _Entry | str | None:
    """The entry to write for a member, why it is skipped, or None for the archive's root folder."""
    parts, why = _normalized(member.name)
    if why is not None:
        return why
    if not parts:
        return None
    refused = _refusal(keymap, parts, member.isdir())
    if refused is not None:
        return refused[1]
    data = _link_target(member, plan) if member.islnk() else member
    if data is None:
        return f"hard link to {_shown(member.linkname)}, which is not imported"
    return _problem(data, parts, allow_devices) or _Entry(parts, data)


def _link_target(member: tarfile.TarInfo, plan: dict[Parts, _Entry]) -> tarfile.TarInfo | None:
    """The file a hard link names, if it is imported: the link is stored as a copy of it."""
    target = plan.get(_normalized(member.linkname)[0])
    return target.data if target is not None and target.data.isreg() else None


def _problem(member: tarfile.TarInfo, parts: Parts, allow_devices: bool) -> str | None:
    """Why a member with a good name cannot be imported: its type, where a symlink leads, its xattrs."""
    if (member.ischr() or member.isblk()) and not allow_devices:
        return "device file (import with --allow-devices to keep it)"
    if not (member.isreg() or member.isdir() or member.issym() or member.isdev()):
        return "unsupported entry type"
    if member.issym():
        return _symlink_problem(member.linkname, len(parts) - 1) or _xattr_problem(member)
    return _xattr_problem(member)


def _symlink_problem(target: str, depth: int) -> str | None:
    """Why a symlink ``depth`` folders below the workspace root might lead out of it.

    Only ``..`` at the start is allowed (at most ``depth`` of them): after a
    name, ``..`` could climb out through another symlink, which a look at the
    target alone cannot rule out.
    """
    if not target:
        return "symlink with an empty target"
    if target.startswith("/"):
        return f"symlink to an absolute path ({_shown(target)})"
    names = [p for p in target.split("/") if p not in ("", ".")]
    ups = next((i for i, p in enumerate(names) if p != ".."), len(names))
    if ".." in names[ups:]:
        return f"symlink target {_shown(target)} has '..' after a name"
    if ups > depth:
        return f"symlink to {_shown(target)} leads out of the workspace"
    return None


def _xattr_problem(member: tarfile.TarInfo) -> str | None:
    try:
        check_xattrs_fit(_xattrs(member))
    except NoSpace as exc:
        return str(exc)
    return None


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    """The ``user.*`` xattrs of a member, but not the ones a mount derives from the path."""
    return {
        name[len(XATTR_RECORD):]: value.encode(ENCODING, "surrogateescape")
        for name, value in member.pax_headers.items()
        if name.startswith(XATTR_RECORD + "user.") and name[len(XATTR_RECORD):] not in layout.DERIVED_XATTRS
    }


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """Exact nanoseconds: the pax record keeps every digit, the float tarfile parsed from it does not."""
    try:
        return int(decimal.Decimal(member.pax_headers["mtime"]).scaleb(9))
    except (KeyError, ArithmeticError, ValueError):
        return int(member.mtime) * 1_000_000_000


def _body(tar: tarfile.TarFile, entry: _Entry) -> bytes | IO[bytes]:
    """What to store for an entry: a marker, a symlink target, or a file's bytes spooled to disk.

    Called on the one thread that reads the archive; a spooled file is
    handed to ``store.put`` open, which uploads a large one in parts.
    """
    if entry.data.isdir() or entry.data.isdev():
        return b""
    if entry.data.issym():
        return entry.data.linkname.encode(ENCODING, "surrogateescape")
    source = tar.extractfile(entry.data)
    assert source is not None, "regular members always have a body"
    try:
        spooled = tempfile.TemporaryFile()
    except OSError as exc:
        raise _spool_error(entry, exc) from None
    try:
        while chunk := source.read(CHUNK):
            try:
                spooled.write(chunk)
            except OSError as exc:
                raise _spool_error(entry, exc) from None
        spooled.seek(0)
    except BaseException:
        spooled.close()
        raise
    return spooled


def _spool_error(entry: _Entry, exc: OSError) -> CowfsError:
    """A failure to keep a member in the temporary folder, which it names (the archive is not to blame)."""
    return CowfsError(f"cannot spool {_shown('/'.join(entry.parts))} to the temporary folder "
                      f"{tempfile.gettempdir()}: {exc.strerror or exc}")


def _put(store: ObjectStore, keymap: KeyMap, summary: Summary,
         item: tuple[_Entry, bytes | IO[bytes]]) -> tarfile.TarInfo | None:
    """Store one entry (and close its spooled body); the member it counts as.

    A name the store refuses (one whose rules are stricter than the checks
    made before) is skipped with its own line, as unsafe names are: None.
    """
    entry, body = item
    member = entry.data
    try:
        key = keymap.checked_key(entry.parts, member.isdir())
        if entry.implied:
            with contextlib.suppress(PreconditionFailed):  # the folder has a marker already: keep it
                store.put(key, body, {}, if_none_match=True)
        else:
            kind = _FILE_TYPES.get(member.type, stat.S_IFREG)
            attrs = Attrs(kind | stat.S_IMODE(member.mode), member.uid, member.gid, _mtime_ns(member), _xattrs(member))
            if member.ischr() or member.isblk():
                attrs.rdev = os.makedev(member.devmajor, member.devminor)
            store.put(key, body, to_metadata(attrs))
    except (InvalidName, NameTooLong, Refused) as exc:
        summary.skipped.append(("/".join(entry.parts), str(exc)))
        return None
    finally:
        if not isinstance(body, bytes):
            body.close()
    return member


# -- shared -----------------------------------------------------------------------


def _keymap(store: ObjectStore, tenant: str, workspace: str) -> KeyMap:
    """Keys of one workspace, after checking its names; the store's prefix counts towards the key limit."""
    root = (check_scoped_name("tenant", tenant), check_scoped_name("workspace", workspace))
    return KeyMap(root=root, store_prefix=getattr(store, "prefix", ""))


def _refusal(keymap: KeyMap, parts: Parts, is_dir: bool) -> tuple[int, str] | None:
    """Why a mount would neither show nor create ``parts`` (a path inside the workspace), or None.

    With the reason comes how many leading components it would show (as folders).
    """
    if parts[0] == layout.CONTROL_DIR:
        return 0, f"under {layout.CONTROL_DIR}, which cowfs generates"
    depth = 0
    try:
        for depth in range(1, len(parts) + 1):
            component(parts[depth - 1])
            layout.check_new_entry(keymap.root + parts[:depth], is_dir or depth < len(parts))
        keymap.checked_key(parts, is_dir)
    except (InvalidName, NameTooLong, NotPermitted) as exc:
        return depth - 1, str(exc)
    return None


def _ahead(fn: Callable[[T], R], items: Iterable[T], parallel: int = PARALLEL) -> Iterator[R]:
    """``fn`` over ``items`` on worker threads, at most ``parallel`` at once, results in order.

    ``items`` is consumed on the caller's thread (a tar archive is read by
    one thread); an object store answers faster many requests at a time.
    """
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(parallel) as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= parallel:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


@contextlib.contextmanager
def _file_errors(what: str) -> Iterator[None]:
    """Local file and archive-format errors as one-line cowfs errors (exit status 1)."""
    try:
        yield
    except tarfile.ReadError:
        raise CowfsError(f"{what}: not a tar archive, or a damaged one") from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise CowfsError(f"{what}: {exc}") from None
    except OSError as exc:
        raise CowfsError(f"{what}: {exc.strerror or exc}") from None


def _shown(name: str) -> str:
    """A name safe to print on one line: hostile archives can hold newlines and escapes."""
    return name if name.isprintable() else ascii(name)
