"""The ``cowfs`` command line's parser: every command, its options and their help.

``cli.py`` runs the commands; this builds what they take, also for the shell
completion and the man page, which are generated from it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar

from . import __version__, archive, completion, options, values, workspaces

#: The exit status of a usage or configuration error (0 success, 1 the operation failed).
EXIT_USAGE = 2
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
        _json_option(parser)
    if store_flag:
        parser.add_argument("--store", type=_arg(values.non_empty),
                            help="s3://BUCKET[/PREFIX] or file:///PATH (default: $COWFS_STORE, config, embedded)")
    options.add_arguments(parser, options.STORE, _arg)


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def _yes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-y", "--yes", action="store_true",
                        help="do not ask before deleting (needed when not on a terminal)")


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes: quiet, and where the log goes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines or log messages, only errors")
    options.add_arguments(common, options.LOGGING, _arg)
    return common


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cowfs", description="Mount agent workspaces kept in an S3 bucket.")
    parser.add_argument("--version", action="version", version=f"cowfs {__version__}")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    common = _common_options()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, text: str, into: Any = sub) -> argparse.ArgumentParser:
        return into.add_parser(name, help=text, description=text, parents=[common])

    p = command("mount", "mount a store")
    p.add_argument("store_or_mountpoint", metavar="STORE", nargs="?",
                   help="s3://BUCKET[/PREFIX] or file:///PATH (default: the embedded store)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="an existing, empty folder")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    options.add_arguments(p, options.MOUNT, _arg)
    p.add_argument("-o", dest="fuse_options", action="append", default=[], help="FUSE options, comma separated")
    _store_options(p, store_flag=False)

    for name, text in (("umount", "flush pending uploads, then unmount"),
                       ("sync", "wait until everything written is in the store"),
                       ("status", "pending uploads, dirty bytes, cache use, errors")):
        p = command(name, text)
        p.add_argument("mountpoint", metavar="MOUNTPOINT", help="where cowfs is mounted")
        p.add_argument("--timeout", type=_arg(values.positive_finite), help="give up after this many seconds")
        if name == "status":
            _json_option(p)

    _json_option(command("mounts", "the cowfs mounts of this machine: mount point, store, tenant, cache, PID"))
    p = command("doctor", "check FUSE, credentials, endpoint, bucket, clock and cache dir")
    p.add_argument("store", metavar="STORE", nargs="?", help="the store to check (default as for workspace)")
    p.add_argument("--cache-dir", type=Path, help="the cache dir to check (default: where mount puts it)")
    p.add_argument("--tenant", type=_arg(values.tenant_name), help="the tenant the cache dir is for")
    _store_options(p, json_flag=True, store_flag=False)

    p = command("workspace", "create, list, show, delete or resolve workspaces")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    for name, text in (("create", "create a workspace (prints its id)"),
                       ("resolve", "the local-scope workspace of tenant+user+path (created if missing)")):
        a = command(name, text, actions)
        a.add_argument("--tenant", type=_arg(values.tenant_name), required=True, help="the tenant it belongs to")
        a.add_argument("--user", type=_arg(values.non_empty), required=True, help="the user it is made for")
        if name == "create":
            a.add_argument("--scope", choices=workspaces.SCOPES, default="general",
                           help="local (one per tenant+user+path), general (default) or cloud")
        a.add_argument("--local-path", type=_arg(values.non_empty), required=name == "resolve",
                       help="the folder on the user's machine it stands for")
        _store_options(a, json_flag=True)
    a = command("list", "workspaces of every tenant, or of one", actions)
    a.add_argument("--tenant", type=_arg(values.tenant_name), help="only this tenant's")
    _store_options(a, json_flag=True)
    for name, text in (("show", "one workspace record"), ("delete", "delete a workspace and every object in it")):
        a = command(name, text, actions)
        a.add_argument("workspace", metavar="TENANT/WORKSPACE", type=_arg(values.workspace_ref), help="which one")
        if name == "delete":
            _yes_option(a)
        _store_options(a, json_flag=True)

    p = command("sessions", "sessions of a workspace")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    a = command("list", "most recently active first, a page at a time", actions)
    a.add_argument("workspace", metavar="TENANT/WORKSPACE", type=_arg(values.workspace_ref),
                   help="the workspace whose sessions to list")
    a.add_argument("--limit", type=_arg(values.page_size), default=20, help="page size, 1-100 (default 20)")
    a.add_argument("--next-token", type=_arg(values.non_empty), help="the token printed with the previous page")
    _store_options(a, json_flag=True)
    a = command("reindex", "rebuild the session index from a full listing (objects other tools wrote)", actions)
    a.add_argument("workspace", metavar="TENANT/WORKSPACE", type=_arg(values.workspace_ref),
                   help="the workspace whose sessions to index")
    _store_options(a, json_flag=True)

    p = command("trash", "what file managers moved to the trash of mounts of this store")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_Parser)
    _store_options(command("list", "every trashed file or folder, oldest first", actions), json_flag=True)
    a = command("empty", "delete what is in the trash for good", actions)
    a.add_argument("--older-than", type=_arg(values.days), metavar="DAYS", help="only what was trashed before")
    _yes_option(a)
    _store_options(a, json_flag=True)

    p = command("export", "write a workspace, or one session of it, to a tar.gz archive")
    p.add_argument("source", metavar="TENANT/WORKSPACE[/sessions/ID]", type=_arg(values.archive_source),
                   help="a workspace, or one session of it")
    p.add_argument("out", metavar="OUT.tar.gz", type=Path, help="the archive to write")
    _store_options(p, json_flag=True)

    p = command("import", "write the files of a tar archive into a workspace")
    p.add_argument("workspace", metavar="TENANT/WORKSPACE", type=_arg(values.workspace_ref),
                   help="the workspace to write into (created if missing)")
    p.add_argument("archive", metavar="IN.tar.gz", type=Path, help="a tar archive, compressed or not")
    p.add_argument("--max-bytes", type=_arg(values.byte_size), default=archive.Limits.max_bytes,
                   help="refuse an archive whose files add up to more (default 64G)")
    p.add_argument("--max-members", type=_arg(values.positive_int), default=archive.Limits.max_members,
                   help="refuse an archive with more members (default 1000000)")
    p.add_argument("--allow-devices", action="store_true",
                   help="keep device files (skipped otherwise; FIFOs are always kept)")
    _store_options(p, json_flag=True)

    p = command("purge", "delete workspaces idle for N days, and trash older than that")
    p.add_argument("--inactive-days", type=_arg(values.days), required=True,
                   help="days without activity (at least 1) after which a workspace, or trash, is deleted")
    p.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    _yes_option(p)
    _store_options(p, json_flag=True)

    p = command("install-helper", "let mount(8) and /etc/fstab mount cowfs (type fuse.cowfs)")
    p.add_argument("--dir", type=Path, default=Path("/sbin"), help="where mount(8) looks for helpers")
    _json_option(p)

    p = command("fsck", "replay a journal left by a stopped daemon, reindex the sessions it wrote")
    p.add_argument("store", metavar="STORE", nargs="?", help="the store the mount wrote to (default: the one the cache dir records)")
    p.add_argument("--cache-dir", type=Path, required=True, help="the cache dir of the mount that stopped")
    _store_options(p, json_flag=True, store_flag=False)

    p = command("completion", "print a shell completion script (bash, zsh or fish)")
    p.add_argument("shell", choices=completion.SHELLS, help="the shell")
    command("man", "print the manual page (roff; man -l - reads it)")
    return parser
