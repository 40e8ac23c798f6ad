"""The ``cowfs`` command line (DESIGN.md §5) and the ``mount.cowfs`` helper.

Exit codes: 0 success, 1 operation failed, 2 usage or configuration error.
Every failure prints one line on stderr: ``cowfs: error: ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from . import __version__, control, helper_install, progress
from .config import Config, load, parse_size
from .daemon import READY_FD_ENV, MountOptions, mount
from .errors import CowfsError, UsageError
from .journal import Journal
from .recovery import replay
from .store import open_store

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", help="S3 endpoint, e.g. http://127.0.0.1:9000")
    parser.add_argument("--region", help="S3 region")
    parser.add_argument("--path-style", action="store_true", help="path-style S3 addressing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cowfs", description="Mount agent workspaces kept in an S3 bucket.")
    parser.add_argument("--version", action="version", version=f"cowfs {__version__}")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("mount", help="mount a store")
    p.add_argument("store_or_mountpoint", metavar="STORE", nargs="?", help="s3://BUCKET[/PREFIX] or file:///PATH")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--tenant", help="mount one tenant as the root")
    p.add_argument("--cache-dir", type=Path, help="local cache and journal directory")
    p.add_argument("--cache-size", type=_size, help="cache size limit (default 10G)")
    p.add_argument("--write-back-delay", type=float, help="seconds between close and upload (default 1)")
    p.add_argument("--metadata-ttl", type=float, help="seconds metadata is trusted (default 1)")
    p.add_argument("--store-timeout", type=float, help="seconds before a read that needs the store fails with EIO (default 30)")
    p.add_argument("-o", dest="fuse_options", action="append", default=[], help="FUSE options, comma separated")
    p.add_argument("--debug", action="store_true", help="log every FUSE request")
    _store_options(p)

    for name, text in (("umount", "flush pending uploads, then unmount"),
                       ("sync", "wait until everything written is in the store"),
                       ("status", "pending uploads, dirty bytes, cache use, errors")):
        p = sub.add_parser(name, help=text)
        p.add_argument("mountpoint", metavar="MOUNTPOINT")
        p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")

    p = sub.add_parser("install-helper", help="let mount(8) and /etc/fstab mount cowfs (type fuse.cowfs)")
    p.add_argument("--dir", type=Path, default=Path("/sbin"), help="where mount(8) looks for helpers")

    p = sub.add_parser("fsck", help="replay a journal left by a stopped daemon")
    p.add_argument("store", metavar="STORE", nargs="?")
    p.add_argument("--cache-dir", type=Path, required=True)
    _store_options(p)
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


def _cmd_install_helper(args: argparse.Namespace) -> None:
    for path in helper_install.install(args.dir):
        print(path)


def _cmd_fsck(args: argparse.Namespace) -> None:
    store = open_store(args.store, endpoint_url=args.endpoint_url, region=args.region, path_style=args.path_style)
    store.check()
    journal_dir = args.cache_dir / "journal"
    if not journal_dir.is_dir():
        raise UsageError(f"{args.cache_dir} holds no cowfs journal")
    journal = Journal(journal_dir)
    try:
        lines = replay(store, journal).lines()
    finally:
        journal.close()
    for line in lines or ["nothing to recover"]:
        print(line)


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "mount": _cmd_mount,
    "umount": _cmd_umount,
    "sync": _cmd_sync,
    "status": _cmd_status,
    "fsck": _cmd_fsck,
    "install-helper": _cmd_install_helper,
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
    except UsageError as exc:
        return _fail(parser, exc, EXIT_USAGE)
    except CowfsError as exc:
        return _fail(parser, exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_FAILED
    return EXIT_OK


def _fail(parser: argparse.ArgumentParser, exc: Exception, code: int) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    ready_fd = os.environ.pop(READY_FD_ENV, None)
    if ready_fd is not None:
        with os.fdopen(int(ready_fd), "w") as ready:
            ready.write(message + "\n")
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return code


#: ``mount -o`` names that are cowfs options rather than FUSE ones.
HELPER_OPTIONS = {
    "config",
    "tenant", "cache_dir", "cache_size", "write_back_delay", "metadata_ttl", "store_timeout",
    "endpoint_url", "region", "path_style", "debug",
}


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
        args = ["--config", config[-1]] + args
    fuse: list[str] = []
    for opt in options:
        name, _, value = opt.partition("=")
        if name in HELPER_OPTIONS:
            args += [f"--{name.replace('_', '-')}"] + ([value] if value else [])
        elif name not in ("rw", "defaults", "auto", "noauto", "user", "nouser", "_netdev", "nofail"):
            fuse.append(opt)
    if fuse:
        args += ["-o", ",".join(fuse)]
    return main(args)
