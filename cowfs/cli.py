"""The ``cowfs`` command line (DESIGN.md §5) and the ``mount.cowfs`` helper.

Exit codes: 0 success, 1 operation failed, 2 usage or configuration error.
Every failure prints one line on stderr: ``cowfs: error: ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence, TypeVar

import json

from . import __version__, archive, control, helper_install, progress, sessionindex, sessions, values, workspaces
from .config import Config, load
from .daemon import READY_FD_ENV, MountOptions, mount
from .errors import CowfsError, NotFound, UsageError
from .journal import Journal
from .recovery import replay
from .store import ObjectStore, open_store
from .store.local import LocalStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def _arg(parse: Callable[[Any], T]) -> Callable[[str], T]:
    """A ``values`` parse function as an argparse type: its message becomes the usage error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def _store_options(parser: argparse.ArgumentParser, json_flag: bool = False, store_flag: bool = True) -> None:
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    if store_flag:
        parser.add_argument("--store", type=_arg(values.non_empty),
                            help="s3://BUCKET[/PREFIX] or file:///PATH (default: $COWFS_STORE, config, embedded)")
    parser.add_argument("--endpoint-url", type=_arg(values.endpoint_url),
                        help="S3 endpoint, e.g. http://127.0.0.1:9000")
    parser.add_argument("--region", type=_arg(values.region), help="S3 region")
    parser.add_argument("--path-style", action="store_true", help="path-style S3 addressing")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cowfs", description="Mount agent workspaces kept in an S3 bucket.")
    parser.add_argument("--version", action="version", version=f"cowfs {__version__}")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("mount", help="mount a store")
    p.add_argument("store_or_mountpoint", metavar="STORE", nargs="?", help="s3://BUCKET[/PREFIX] or file:///PATH")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--tenant", type=_arg(values.tenant_name), help="mount one tenant as the root")
    p.add_argument("--cache-dir", type=Path, help="local cache and journal directory")
    p.add_argument("--cache-size", type=_arg(values.byte_size), help="cache size limit (default 10G)")
    p.add_argument("--write-back-delay", type=_arg(values.non_negative_finite),
                   help="seconds between close and upload (default 1)")
    p.add_argument("--metadata-ttl", type=_arg(values.non_negative_finite),
                   help="seconds metadata is trusted (default 1)")
    p.add_argument("--store-timeout", type=_arg(values.positive_finite),
                   help="seconds before a read that needs the store fails with EIO (default 30)")
    p.add_argument("-o", dest="fuse_options", action="append", default=[], help="FUSE options, comma separated")
    p.add_argument("--debug", action="store_true", help="log every FUSE request")
    _store_options(p, store_flag=False)

    for name, text in (("umount", "flush pending uploads, then unmount"),
                       ("sync", "wait until everything written is in the store"),
                       ("status", "pending uploads, dirty bytes, cache use, errors")):
        p = sub.add_parser(name, help=text)
        p.add_argument("mountpoint", metavar="MOUNTPOINT")
        p.add_argument("--timeout", type=_arg(values.positive_finite), help="give up after this many seconds")

    p = sub.add_parser("workspace", help="create, list, show, delete or resolve workspaces")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("create", "create a workspace (prints its id)"),
                       ("resolve", "the local-scope workspace of tenant+user+path (created if missing)")):
        a = actions.add_parser(name, help=text)
        a.add_argument("--tenant", type=_arg(values.tenant_name), required=True)
        a.add_argument("--user", type=_arg(values.non_empty), required=True)
        if name == "create":
            a.add_argument("--scope", choices=workspaces.SCOPES, default="general")
        a.add_argument("--local-path", type=_arg(values.non_empty), required=name == "resolve")
        _store_options(a, json_flag=True)
    a = actions.add_parser("list", help="workspaces of every tenant, or of one")
    a.add_argument("--tenant", type=_arg(values.tenant_name))
    _store_options(a, json_flag=True)
    for name, text in (("show", "one workspace record"), ("delete", "delete a workspace and every object in it")):
        a = actions.add_parser(name, help=text)
        a.add_argument("workspace", metavar="TENANT/WORKSPACE", type=_arg(values.workspace_ref))
        _store_options(a, json_flag=name == "show")

    p = sub.add_parser("sessions", help="sessions of a workspace")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", help="most recently active first, a page at a time")
    a.add_argument("workspace", metavar="TENANT/WORKSPACE", type=_arg(values.workspace_ref))
    a.add_argument("--limit", type=_arg(values.page_size), default=20, help="page size, 1-100 (default 20)")
    a.add_argument("--next-token", type=_arg(values.non_empty), help="the token printed with the previous page")
    _store_options(a, json_flag=True)
    a = actions.add_parser("reindex", help="rebuild the session index from a full listing (objects other tools wrote)")
    a.add_argument("workspace", metavar="TENANT/WORKSPACE", type=_arg(values.workspace_ref))
    _store_options(a)

    p = sub.add_parser("export", help="write a workspace, or one session of it, to a tar.gz archive")
    p.add_argument("source", metavar="TENANT/WORKSPACE[/sessions/ID]", type=_arg(values.archive_source))
    p.add_argument("out", metavar="OUT.tar.gz", type=Path)
    _store_options(p)

    p = sub.add_parser("import", help="write the files of a tar archive into a workspace")
    p.add_argument("workspace", metavar="TENANT/WORKSPACE", type=_arg(values.workspace_ref))
    p.add_argument("archive", metavar="IN.tar.gz", type=Path)
    p.add_argument("--max-bytes", type=_arg(values.byte_size), default=archive.Limits.max_bytes,
                   help="refuse an archive whose files add up to more (default 64G)")
    p.add_argument("--max-members", type=_arg(values.positive_int), default=archive.Limits.max_members,
                   help="refuse an archive with more members (default 1000000)")
    _store_options(p)

    p = sub.add_parser("purge", help="delete workspaces idle for N days")
    p.add_argument("--inactive-days", type=_arg(values.days), required=True, help="at least 1")
    p.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    _store_options(p)

    p = sub.add_parser("install-helper", help="let mount(8) and /etc/fstab mount cowfs (type fuse.cowfs)")
    p.add_argument("--dir", type=Path, default=Path("/sbin"), help="where mount(8) looks for helpers")

    p = sub.add_parser("fsck", help="replay a journal left by a stopped daemon, reindex the sessions it wrote")
    p.add_argument("store", metavar="STORE", nargs="?")
    p.add_argument("--cache-dir", type=Path, required=True)
    _store_options(p, store_flag=False)
    return parser


def _cmd_mount(args: argparse.Namespace) -> None:
    config: Config = args.loaded_config
    if args.mountpoint is None:
        store_url, mountpoint = config.get("store"), args.store_or_mountpoint
    else:
        store_url, mountpoint = args.store_or_mountpoint, args.mountpoint
    mountpoint = mountpoint or config.get("mountpoint")
    if mountpoint is None:
        raise UsageError("mount needs a MOUNTPOINT (argument or 'mountpoint' in the config file)")

    def pick(name: str, default: object) -> object:
        value = getattr(args, name)
        return value if value is not None else config.get(name, default)

    cache_dir = pick("cache_dir", None)
    opts = MountOptions(
        mountpoint=Path(mountpoint).resolve(),
        store_url=store_url,
        foreground=args.foreground,
        tenant=pick("tenant", None),
        cache_dir=Path(cache_dir).resolve() if cache_dir else None,
        cache_size=pick("cache_size", 10 * 1024**3),
        write_back_delay=pick("write_back_delay", 1.0),
        metadata_ttl=pick("metadata_ttl", 1.0),
        store_timeout=pick("store_timeout", 30.0),
        endpoint_url=pick("endpoint_url", None),
        region=pick("region", None),
        path_style=args.path_style or config.get("path_style", False),
        fuse_options=config.get("options", []) + [o for group in args.fuse_options for o in group.split(",") if o],
        debug=args.debug,
        config_path=config.path,
        tenants=config.tenants or None,
    )
    mount(opts)


def _cmd_sync(args: argparse.Namespace) -> None:
    progress.sync(args.mountpoint, args.timeout)


def _cmd_status(args: argparse.Namespace) -> None:
    reply = control.request(args.mountpoint, {"cmd": "status"}, timeout=args.timeout)
    reply.pop("ok", None)
    for name, value in reply.items():
        print(f"{name}: {value}")


def _cmd_umount(args: argparse.Namespace) -> None:
    """Flush, unmount, and wait for the daemon to exit: then the store has everything."""
    status = control.request(args.mountpoint, {"cmd": "status"}, timeout=args.timeout)
    progress.sync(args.mountpoint, args.timeout)
    done = subprocess.run(["fusermount3", "-u", str(args.mountpoint)], capture_output=True, text=True)
    if done.returncode != 0:
        raise CowfsError(done.stderr.strip() or f"could not unmount {args.mountpoint}")
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while _alive(status["pid"]):
        if deadline is not None and time.monotonic() > deadline:
            raise CowfsError(f"daemon {status['pid']} still running after {args.timeout} s")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def _open_store(args: argparse.Namespace) -> ObjectStore:
    """The store a command works on: --store, $COWFS_STORE, the config file, else the embedded one."""
    config: Config = args.loaded_config
    url = args.store or os.environ.get("COWFS_STORE") or config.get("store")
    store = open_store(
        url,
        endpoint_url=args.endpoint_url or config.get("endpoint_url"),
        region=args.region or config.get("region"),
        path_style=args.path_style or config.get("path_style", False),
    )
    return _existing(store, url)


def _existing(store: ObjectStore, url: str | None) -> ObjectStore:
    """Check ``store``; a ``file://`` store named by URL must be there already.

    Only ``mount`` makes a new one: a mistyped path is not a new, empty store.
    """
    if url is not None and isinstance(store, LocalStore) and not store.root.is_dir():
        raise NotFound(f"no store at {url}: {store.root} does not exist (cowfs mount creates it)")
    store.check()
    return store


def _print_record(record: workspaces.WorkspaceRecord, as_json: bool) -> None:
    print(json.dumps(record.to_json()) if as_json else record.workspaceId)


def _cmd_workspace(args: argparse.Namespace) -> None:
    store = _open_store(args)
    if args.action in ("create", "resolve"):
        scope = "local" if args.action == "resolve" else args.scope
        record = workspaces.create_workspace(store, args.tenant, args.user, scope, args.local_path)
        _print_record(record, args.json)
    elif args.action == "list":
        records = workspaces.list_workspaces(store, args.tenant)
        if args.json:
            print(json.dumps({"workspaces": [r.to_json() for r in records]}))
        for r in [] if args.json else records:
            print(f"{r.tenantId}/{r.workspaceId}\t{r.workspaceScope}\t{r.to_json()['lastActiveAt']}")
    elif args.action == "show":
        record = workspaces.get_workspace(store, *args.workspace)
        print(json.dumps(record.to_json(), indent=None if args.json else 2))
    else:
        count = workspaces.delete_workspace(store, *args.workspace)
        print(f"deleted {'/'.join(args.workspace)} ({count} objects)")


def _cmd_sessions(args: argparse.Namespace) -> None:
    store = _open_store(args)
    tenant, name = args.workspace
    if args.action == "reindex":
        workspaces.get_workspace(store, tenant, name)
        done = sessionindex.reindex(store, tenant, name)
        print(f"indexed {done.sessions} sessions of {tenant}/{name} ({done.written} records written, "
              f"{done.dropped_entries} stale entries dropped)")
        return
    page, token = sessions.list_page(store, tenant, name, args.limit, args.next_token)
    if args.json:
        doc: dict = {"sessions": [s.to_json() for s in page]}
        if token:
            doc["nextToken"] = token
        print(json.dumps(doc))
        return
    for s in page:
        j = s.to_json()
        print(f"{j['sessionId']}\t{j['lastActiveAt']}\t{j['createdAt']}\t{j['files']} files\t{j['bytes']} bytes")
    if token:
        print(f"next-token: {token}")


def _cmd_export(args: argparse.Namespace) -> None:
    tenant, name, session = args.source
    summary = archive.export_archive(_open_store(args), tenant, name, args.out, session)
    print("\n".join(summary.lines("exported", f"to {args.out}")))


def _cmd_import(args: argparse.Namespace) -> None:
    tenant, name = args.workspace
    limits = archive.Limits(args.max_bytes, args.max_members)
    summary = archive.import_archive(_open_store(args), tenant, name, args.archive, limits)
    print("\n".join(summary.lines("imported", f"into {tenant}/{name}")))


def _cmd_purge(args: argparse.Namespace) -> None:
    store = _open_store(args)
    verb = "would delete" if args.dry_run else "deleted"
    shown = sys.stderr.isatty()

    def report(record: workspaces.WorkspaceRecord) -> None:
        if shown:
            sys.stderr.write("\r" + " " * 60 + "\r")
        print(f"{verb} {record.tenantId}/{record.workspaceId} (last active {record.to_json()['lastActiveAt']})")

    done = workspaces.purge(store, args.inactive_days, dry_run=args.dry_run, progress=report)
    if not done:
        print("nothing to purge")


def _cmd_install_helper(args: argparse.Namespace) -> None:
    for path in helper_install.install(args.dir):
        print(path)


def _cmd_fsck(args: argparse.Namespace) -> None:
    store = _existing(open_store(args.store, endpoint_url=args.endpoint_url, region=args.region,
                                 path_style=args.path_style), args.store)
    journal_dir = args.cache_dir / "journal"
    if not journal_dir.is_dir():
        raise UsageError(f"{args.cache_dir} holds no cowfs journal")
    journal = Journal(journal_dir)
    try:
        report = replay(store, journal)
    finally:
        journal.close()
    lines = report.lines()
    touched = {session[:2] for session in map(sessionindex.session_of, report.uploaded + report.deleted) if session}
    for tenant, name in sorted(touched):
        sessionindex.reindex(store, tenant, name)
        lines.append(f"reindexed the sessions of {tenant}/{name}")
    for line in lines or ["nothing to recover"]:
        print(line)


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "mount": _cmd_mount,
    "umount": _cmd_umount,
    "sync": _cmd_sync,
    "status": _cmd_status,
    "fsck": _cmd_fsck,
    "install-helper": _cmd_install_helper,
    "workspace": _cmd_workspace,
    "sessions": _cmd_sessions,
    "export": _cmd_export,
    "import": _cmd_import,
    "purge": _cmd_purge,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if getattr(args, "debug", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.loaded_config = load(args.config)
        COMMANDS[args.command](args)
        sys.stdout.flush()
    except UsageError as exc:
        return _fail(parser, exc, EXIT_USAGE)
    except CowfsError as exc:
        return _fail(parser, exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:
        return _reader_left()
    return EXIT_OK


def _reader_left() -> int:
    """stdout's reader is gone (``| head``): stop quietly, as other commands do.

    stdout is pointed at /dev/null so that the interpreter's last flush does
    not complain again on its way out.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_FAILED


def _fail(parser: argparse.ArgumentParser, exc: Exception, code: int) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    ready_fd = os.environ.pop(READY_FD_ENV, None)
    if ready_fd is not None:
        with os.fdopen(int(ready_fd), "w") as ready:
            ready.write(message + "\n")
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return code


#: ``mount -o`` names that are cowfs options rather than FUSE ones: the ones with a value,
#: checked as the long option of that name is, and the flags, which take none.
HELPER_OPTIONS = {
    "tenant", "cache_dir", "cache_size", "write_back_delay", "metadata_ttl", "store_timeout",
    "endpoint_url", "region",
}
HELPER_FLAGS = {"path_style", "debug"}


def mount_helper_main(argv: Sequence[str] | None = None) -> int:
    """``mount.cowfs STORE MOUNTPOINT [-o opt,...]``: mount(8) and fstab's entry point.

    Options are the long options with ``-`` turned into ``_``; anything else
    is handed to FUSE as ``-o``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    positional: list[str] = []
    options: list[str] = []
    while argv:
        arg = argv.pop(0)
        if arg == "-o" and argv:
            options += [o for o in argv.pop(0).split(",") if o]
        elif arg.startswith("-"):
            continue
        else:
            positional.append(arg)
    if len(positional) != 2:
        print("mount.cowfs: usage: mount.cowfs STORE MOUNTPOINT [-o options]", file=sys.stderr)
        return EXIT_USAGE
    args = ["mount", positional[0], positional[1]]
    config = [o.partition("=")[2] for o in options if o.startswith("config=")]
    options = [o for o in options if not o.startswith("config=")]
    if config:
        args = [f"--config={config[-1]}"] + args
    fuse: list[str] = []
    for opt in options:
        name, has_value, value = opt.partition("=")
        if name in HELPER_OPTIONS | HELPER_FLAGS and bool(has_value) != (name in HELPER_OPTIONS):
            need = "needs a value" if name in HELPER_OPTIONS else "takes no value"
            print(f"mount.cowfs: error: option {name} {need}", file=sys.stderr)
            return EXIT_USAGE
        if name in HELPER_OPTIONS:
            args.append(f"--{name.replace('_', '-')}={value}")
        elif name in HELPER_FLAGS:
            args.append(f"--{name.replace('_', '-')}")
        elif name not in ("rw", "defaults", "auto", "noauto", "user", "nouser", "_netdev", "nofail"):
            fuse.append(opt)
    if fuse:
        args += ["-o", ",".join(fuse)]
    return main(args)
