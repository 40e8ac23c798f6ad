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

from . import __version__, control
from .daemon import READY_FD_ENV, MountOptions, mount
from .errors import CowfsError, UsageError
from .journal import Journal
from .recovery import replay
from .store import open_store

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\Z", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``10G``, ``512M``, ``4096`` -> bytes (binary units)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (use e.g. 512M or 10G)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_KMGT".index(unit.upper() or "_"))


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
    p.add_argument("--cache-size", type=parse_size, default=10 * 1024**3, help="cache size limit (default 10G)")
    p.add_argument("--write-back-delay", type=float, default=1.0, help="seconds between close and upload")
    p.add_argument("--metadata-ttl", type=float, default=1.0, help="seconds metadata is trusted")
    p.add_argument("--store-timeout", type=float, default=30.0, help="seconds before a read that needs the store fails with EIO")
    p.add_argument("-o", dest="fuse_options", action="append", default=[], help="FUSE options, comma separated")
    p.add_argument("--debug", action="store_true", help="log every FUSE request")
    _store_options(p)

    for name, text in (("umount", "flush pending uploads, then unmount"),
                       ("sync", "wait until everything written is in the store"),
                       ("status", "pending uploads, dirty bytes, cache use, errors")):
        p = sub.add_parser(name, help=text)
        p.add_argument("mountpoint", metavar="MOUNTPOINT")
        p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")

    p = sub.add_parser("fsck", help="replay a journal left by a stopped daemon")
    p.add_argument("store", metavar="STORE", nargs="?")
    p.add_argument("--cache-dir", type=Path, required=True)
    _store_options(p)
    return parser


def _cmd_mount(args: argparse.Namespace) -> None:
    if args.mountpoint is None:
        store_url, mountpoint = None, args.store_or_mountpoint
    else:
        store_url, mountpoint = args.store_or_mountpoint, args.mountpoint
    if mountpoint is None:
        raise UsageError("mount needs a MOUNTPOINT")
    opts = MountOptions(
        mountpoint=Path(mountpoint).resolve(),
        store_url=store_url,
        foreground=args.foreground,
        tenant=args.tenant,
        cache_dir=args.cache_dir.resolve() if args.cache_dir else None,
        cache_size=args.cache_size,
        write_back_delay=args.write_back_delay,
        metadata_ttl=args.metadata_ttl,
        store_timeout=args.store_timeout,
        endpoint_url=args.endpoint_url,
        region=args.region,
        path_style=args.path_style,
        fuse_options=[o for group in args.fuse_options for o in group.split(",") if o],
        debug=args.debug,
    )
    mount(opts)


def _cmd_sync(args: argparse.Namespace) -> None:
    control.request(args.mountpoint, {"cmd": "sync"}, timeout=args.timeout)


def _cmd_status(args: argparse.Namespace) -> None:
    reply = control.request(args.mountpoint, {"cmd": "status"}, timeout=args.timeout)
    reply.pop("ok", None)
    for name, value in reply.items():
        print(f"{name}: {value}")


def _cmd_umount(args: argparse.Namespace) -> None:
    """Flush, unmount, and wait for the daemon to exit: then the store has everything."""
    status = control.request(args.mountpoint, {"cmd": "status"}, timeout=args.timeout)
    control.request(args.mountpoint, {"cmd": "sync"}, timeout=args.timeout)
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
