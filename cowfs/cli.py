"""The ``cowfs`` command line and the ``mount.cowfs`` helper.

Exit codes: 0 success, 1 operation failed, 2 usage or configuration error.
Every failure prints one line on stderr: ``cowfs: error: ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import json
from datetime import datetime, timezone

from . import (archive, completion, control, helper_install, mounts, options, output, progress,
               sessionindex, sessions, trash, workspaces)
from .config import Config, load
from .daemon import LOG_FORMAT, READY_FD_ENV, MountOptions, default_cache_dir, mount
from .errors import CowfsError, NotFound, UsageError
from .parser import EXIT_USAGE, build_parser
from .recovery import fsck, journal_store, release_dead_mount
from .store import ObjectStore, open_store
from .store.local import LocalStore

EXIT_OK, EXIT_FAILED = 0, 1


def _cmd_mount(args: argparse.Namespace) -> None:
    config: Config = args.loaded_config
    if args.mountpoint is None:
        store_url, mountpoint = config.get("store"), args.store_or_mountpoint
    else:
        store_url, mountpoint = args.store_or_mountpoint, args.mountpoint
    mountpoint = mountpoint or config.get("mountpoint")
    if mountpoint is None:
        raise UsageError("mount needs a MOUNTPOINT (argument or 'mountpoint' in the config file)")

    given = {option.name: getattr(args, option.name) for option in options.MOUNT_ALL}
    settings = {name: config.get(name) if value is None else value for name, value in given.items()}
    opts = MountOptions(
        mountpoint=Path(mountpoint).resolve(),
        store_url=store_url,
        foreground=args.foreground,
        fuse_options=config.get("options", []) + [o for group in args.fuse_options for o in group.split(",") if o],
        config_path=config.path,
        tenants=config.tenants or None,
        **{name: value for name, value in settings.items() if value is not None},
    )
    mount(opts)


def _cmd_sync(args: argparse.Namespace) -> None:
    _check_refused(progress.sync(args.mountpoint, args.timeout, args.quiet))


def _check_refused(reply: dict[str, Any]) -> None:
    """Exit 1 naming the keys the store refused for good: everything else is in the store."""
    refused = reply.get("refused") or {}
    if refused:
        named = "; ".join(f"{key!r} ({why})" for key, why in sorted(refused.items()))
        raise CowfsError(f"the store refuses {len(refused)} key(s), kept in the journal: {named}")


def _cmd_status(args: argparse.Namespace) -> None:
    status = control.request(args.mountpoint, {"cmd": "status"}, timeout=args.timeout)
    status.pop("ok", None)
    if args.json:
        output.emit_json(status)
        return
    uploads, deletes = status["pendingUploads"], status["pendingDeletes"]
    output.emit(output.fields([
        ("mount point", status["mountpoint"]),
        ("store", status["store"] + (f" (tenant {status['tenant']})" if status.get("tenant") else "")),
        ("cache dir", status["cacheDir"]),
        ("daemon", f"pid {status['pid']}, up {output.duration(status['uptime'])}"),
        ("pending", "nothing" if not uploads + deletes else
         f"{output.plural(uploads, 'upload')} ({output.size(status['dirtyBytes'])}), "
         f"{output.plural(deletes, 'delete')}"),
        ("done", f"{output.plural(status['uploads'], 'upload')}, {output.plural(status['deletes'], 'delete')}, "
                 f"{output.plural(status['retries'], 'retry', 'retries')}"),
        ("listings", status["listings"]),
        ("cache", f"{output.size(status['cacheBytes'])} on disk"),
        ("reachable", "yes" if not status.get("storeUnreachableSince")
         else f"no, since {status['storeUnreachableSince']}"),
        ("last error", status["lastError"]),
        ("refused keys", "; ".join(f"{key!r} ({why})" for key, why in (status.get("refusedKeys") or {}).items())
         or None),
        ("store quirks", status["storeQuirks"]),
    ]))


def _cmd_umount(args: argparse.Namespace) -> None:
    """Flush, unmount, and wait for the daemon to exit: then the store has everything.

    A mount whose daemon died is unmounted; its journal waits for the next mount.
    """
    if mounts.dead_cowfs_mount(args.mountpoint) is not None:
        print(release_dead_mount(Path(args.mountpoint)))
        return
    status = control.request(args.mountpoint, {"cmd": "status"}, timeout=args.timeout)
    synced = progress.sync(args.mountpoint, args.timeout, args.quiet, label="flushing")
    mounts.unmount(args.mountpoint)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while _alive(status["pid"]):
        if deadline is not None and time.monotonic() > deadline:
            raise CowfsError(f"daemon {status['pid']} still running after {args.timeout} s")
        time.sleep(0.05)
    _check_refused(synced)


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


def _cmd_mounts(args: argparse.Namespace) -> None:
    found = mounts.active()
    if args.json:
        output.emit_json({"mounts": [m.to_json() for m in found]})
        return
    rows = [(m.mountpoint, m.store, m.tenant, m.cacheDir, m.pid or "unknown (another user's)") for m in found]
    output.emit(output.table(("MOUNT POINT", "STORE", "TENANT", "CACHE DIR", "PID"), rows, "no cowfs mounts"))


def _store_url(args: argparse.Namespace) -> str | None:
    config: Config = args.loaded_config
    return getattr(args, "store", None) or os.environ.get("COWFS_STORE") or config.get("store")


def _store_of(args: argparse.Namespace) -> ObjectStore:
    """The store a command names: --store, $COWFS_STORE, the config file, else the embedded one; not checked."""
    config: Config = args.loaded_config
    return open_store(
        _store_url(args),
        endpoint_url=args.endpoint_url or config.get("endpoint_url"),
        region=args.region or config.get("region"),
        path_style=args.path_style or config.get("path_style", False),
    )


def _open_store(args: argparse.Namespace) -> ObjectStore:
    return _existing(_store_of(args), _store_url(args))


def _existing(store: ObjectStore, url: str | None) -> ObjectStore:
    """Check ``store``; a ``file://`` store named by URL must be there already.

    Only ``mount`` makes a new one: a mistyped path is not a new, empty store.
    """
    if url is not None and isinstance(store, LocalStore) and not store.root.is_dir():
        raise NotFound(f"no store at {url}: {store.root} does not exist (cowfs mount creates it)")
    store.check()
    return store


def _cmd_doctor(args: argparse.Namespace) -> None:
    from . import doctor  # imports boto3, which the other commands load only for an s3:// store

    store = _store_of(args)
    config: Config = args.loaded_config
    cache = args.cache_dir or config.get("cache_dir")
    checks = [doctor.fuse(), *doctor.store_checks(store, bool(args.endpoint_url or config.get("endpoint_url"))),
              doctor.cache_dir(Path(cache) if cache else default_cache_dir(store, args.tenant))]
    failed = [c for c in checks if not c.ok]
    if args.json:
        output.emit_json({"ok": not failed, "checks": [c.to_json() for c in checks]})
    else:
        output.emit(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in checks)
    if failed:
        raise CowfsError(f"{output.plural(len(failed), 'check')} failed: {', '.join(c.name for c in failed)}")


def _refuse_unattended(args: argparse.Namespace, what: str) -> None:
    """Deleting needs --yes when nobody is at a terminal to answer, whether or not there is anything to delete."""
    if not args.yes and not sys.stdin.isatty():
        raise UsageError(f"not deleting without --yes when not on a terminal: {what}")


def _confirm(args: argparse.Namespace, question: str) -> None:
    """Go on with a deletion: --yes, or a yes typed on a terminal; never silently without one."""
    _refuse_unattended(args, question)
    if not args.yes and input(f"{question}? [y/N] ").strip().lower() not in ("y", "yes"):
        raise CowfsError("nothing deleted")


def _record_row(r: workspaces.WorkspaceRecord) -> tuple[Any, ...]:
    doc = r.to_json()
    return f"{r.tenantId}/{r.workspaceId}", r.workspaceScope, r.userId, r.localPath, doc["lastActiveAt"]


def _cmd_workspace(args: argparse.Namespace) -> None:
    store = _open_store(args)
    if args.action in ("create", "resolve"):
        scope = "local" if args.action == "resolve" else args.scope
        record = workspaces.create_workspace(store, args.tenant, args.user, scope, args.local_path)
        if args.json:
            output.emit_json(record.to_json())
        else:
            print(record.workspaceId)
    elif args.action == "list":
        records = workspaces.list_workspaces(store, args.tenant)
        if args.json:
            output.emit_json({"workspaces": [r.to_json() for r in records]})
            return
        empty = f"no workspaces in tenant {args.tenant}" if args.tenant else "no workspaces"
        output.emit(output.table(("WORKSPACE", "SCOPE", "USER", "LOCAL PATH", "LAST ACTIVE"),
                                 map(_record_row, records), empty))
    elif args.action == "show":
        doc = workspaces.get_workspace(store, *args.workspace).to_json()
        if args.json:
            output.emit_json(doc)
            return
        output.emit(output.fields([("workspace", f"{doc['tenantId']}/{doc['workspaceId']}"),
                                   ("scope", doc["workspaceScope"]), ("user", doc["userId"]),
                                   ("local path", doc["localPath"]), ("created", doc["createdAt"]),
                                   ("last active", doc["lastActiveAt"])]))
    else:
        _delete_workspace(args, store)


def _delete_workspace(args: argparse.Namespace, store: ObjectStore) -> None:
    name = "/".join(args.workspace)
    objects = workspaces.workspace_objects(store, *args.workspace)
    nbytes = sum(o.size for o in objects)
    what = f"{output.plural(len(objects), 'object')}, {output.size(nbytes)}"
    _confirm(args, f"delete workspace {name} ({what})")
    meter = progress.Meter(f"deleting {name}", "object", progress.on_terminal(args.quiet))
    meter.plan(len(objects), nbytes)
    try:
        workspaces.delete_objects(store, objects, meter.advance)
    finally:
        meter.close()
    if args.json:
        output.emit_json({"deleted": name, "objects": len(objects), "bytes": nbytes})
    else:
        print(f"deleted {name} ({what})")


def _cmd_sessions(args: argparse.Namespace) -> None:
    store = _open_store(args)
    tenant, name = args.workspace
    if args.action == "reindex":
        workspaces.get_workspace(store, tenant, name)
        done = sessionindex.reindex(store, tenant, name)
        if args.json:
            output.emit_json({"sessions": done.sessions, "recordsWritten": done.written,
                              "staleEntriesDropped": done.dropped_entries})
        else:
            output.emit([f"indexed {output.plural(done.sessions, 'session')} of {tenant}/{name} "
                         f"({output.plural(done.written, 'record')} written, "
                         f"{output.plural(done.dropped_entries, 'stale entry', 'stale entries')} dropped)"])
        return
    page, token = sessions.list_page(store, tenant, name, args.limit, args.next_token)
    if args.json:
        doc: dict = {"sessions": [s.to_json() for s in page]}
        if token:
            doc["nextToken"] = token
        print(json.dumps(doc))
        return
    if not page:
        print(f"no sessions in {tenant}/{name}")
    else:
        print("SESSION\tLAST ACTIVE\tCREATED\tFILES\tBYTES")
    for s in page:
        j = s.to_json()
        print(f"{j['sessionId']}\t{j['lastActiveAt']}\t{j['createdAt']}\t{j['files']} files\t{j['bytes']} bytes")
    if token:
        print(f"next-token: {token}")


def _trash_row(e: trash.TrashEntry) -> tuple[Any, ...]:
    doc = e.to_json()
    return doc["trash"], e.name, e.originalPath, doc["deletedAt"], output.size(e.bytes)


def _cmd_trash(args: argparse.Namespace) -> None:
    store = _open_store(args)
    if args.action == "list":
        found = trash.list_trash(store)
        if args.json:
            output.emit_json({"trash": [e.to_json() for e in found]})
        else:
            output.emit(output.table(("TRASH", "NAME", "ORIGINAL PATH", "TRASHED", "SIZE"), map(_trash_row, found),
                                     "the trash is empty"))
        return
    _refuse_unattended(args, "trash empty")
    chosen = trash.select(store, args.older_than)
    if chosen:
        _confirm(args, f"delete {output.plural(len(chosen), 'trashed entry', 'trashed entries')} "
                       f"({output.size(sum(e.bytes for e in chosen))}) for good")
    _delete_trash(args, store, chosen, "deleted")
    if args.json:
        output.emit_json({"deleted": [e.to_json() for e in chosen]})
    elif not chosen:
        days = args.older_than
        print("nothing in the trash" + (f" older than {days:g} day{'' if days == 1 else 's'}" if days else ""))


def _delete_trash(args: argparse.Namespace, store: ObjectStore, chosen: list[trash.TrashEntry], verb: str) -> None:
    """Delete trash entries with a progress line, a line for each unless --json."""
    meter = progress.Meter("emptying the trash", "entry", progress.on_terminal(args.quiet))
    meter.plan(len(chosen), sum(e.bytes for e in chosen))

    def told(entry: trash.TrashEntry) -> None:
        meter.advance(1, entry.bytes)
        if not args.json:
            meter.clear()
            print(f"{verb} {entry.trash}{entry.name} (from {output.shown(entry.originalPath)}, "
                  f"{output.plural(entry.files, 'file')}, {output.size(entry.bytes)})", flush=True)

    try:
        if getattr(args, "dry_run", False):
            for entry in chosen:
                told(entry)
        else:
            trash.delete(store, chosen, told)
    finally:
        if chosen:
            meter.close()


def _archive_command(args: argparse.Namespace, label: str, work: Callable[[progress.Meter], archive.Summary],
                     verb: str, where: str, **json_where: str) -> None:
    """Run an export or import with a progress line, then print its summary."""
    meter = progress.Meter(label, "file", progress.on_terminal(args.quiet))
    try:
        summary = work(meter)
    finally:
        meter.close()
    if args.json:
        output.emit_json({**json_where, "files": summary.files, "folders": summary.folders,
                          "symlinks": summary.symlinks, "bytes": summary.bytes,
                          "skipped": [{"name": name, "reason": why} for name, why in summary.skipped]})
    else:
        output.emit(summary.lines(verb, where))


def _cmd_export(args: argparse.Namespace) -> None:
    tenant, name, session = args.source
    _archive_command(args, f"exporting to {args.out.name}",
                     lambda meter: archive.export_archive(_open_store(args), tenant, name, args.out, session, meter),
                     "exported", f"to {args.out}", archive=str(args.out))


def _cmd_import(args: argparse.Namespace) -> None:
    tenant, name = args.workspace
    limits = archive.Limits(args.max_bytes, args.max_members)
    _archive_command(args, f"importing into {tenant}/{name}",
                     lambda meter: archive.import_archive(_open_store(args), tenant, name, args.archive, limits,
                                                          args.allow_devices, meter),
                     "imported", f"into {tenant}/{name}", workspace=f"{tenant}/{name}")


def _cmd_purge(args: argparse.Namespace) -> None:
    if not args.dry_run:
        _refuse_unattended(args, f"purge --inactive-days {args.inactive_days:g}")
    store = _open_store(args)
    now = datetime.now(timezone.utc)
    idle = workspaces.inactive_workspaces(store, args.inactive_days, now)
    old = trash.select(store, args.inactive_days, now)
    objects = sum(len(found) for _, found in idle) + sum(len(e.keys) for e in old)
    nbytes = sum(o.size for _, found in idle for o in found) + sum(e.bytes for e in old)
    if (idle or old) and not args.dry_run:
        _confirm(args, f"delete {output.plural(len(idle), 'idle workspace')} and "
                       f"{output.plural(len(old), 'trashed entry', 'trashed entries')} "
                       f"({output.plural(objects, 'object')}, {output.size(nbytes)})")
    verb = "would delete" if args.dry_run else "deleted"
    meter = progress.Meter("purging", "object", progress.on_terminal(args.quiet) and not args.dry_run)
    meter.plan(objects, nbytes)
    try:
        for record, found in idle:
            if not args.dry_run:
                workspaces.delete_objects(store, found, meter.advance)
            if not args.json:
                meter.clear()
                print(f"{verb} {record.tenantId}/{record.workspaceId} "
                      f"(last active {record.to_json()['lastActiveAt']})", flush=True)
    finally:
        if idle and not args.dry_run:
            meter.close()
    _delete_trash(args, store, old, f"{verb} trash")
    if args.json:
        output.emit_json({"dryRun": args.dry_run,
                          "workspaces": [{**r.to_json(), "objects": len(found), "bytes": sum(o.size for o in found)}
                                         for r, found in idle],
                          "trash": [e.to_json() for e in old]})
    elif not idle and not old:
        print("nothing to purge")


def _cmd_install_helper(args: argparse.Namespace) -> None:
    written = helper_install.install(args.dir)
    if args.json:
        output.emit_json({"installed": list(map(str, written))})
    else:
        output.emit(map(str, written))


def _cmd_fsck(args: argparse.Namespace) -> None:
    store, url = journal_store(args.cache_dir, args.store, args.endpoint_url, args.region, args.path_style)
    report = fsck(args.cache_dir, _existing(store, url))
    written = {session[:2] for session in map(sessionindex.session_of, report.uploaded + report.deleted) if session}
    for tenant, name in sorted(written):
        sessionindex.reindex(store, tenant, name)
    reindexed = [f"{tenant}/{name}" for tenant, name in sorted(written)]
    if args.json:
        output.emit_json({"moved": report.moved, "uploaded": report.uploaded, "deleted": report.deleted,
                          "lost": report.lost, "refused": report.refused, "reindexed": reindexed})
    else:
        lines = report.lines() + [f"reindexed the sessions of {workspace}" for workspace in reindexed]
        output.emit(lines or ["nothing to recover"])


def _cmd_completion(args: argparse.Namespace) -> None:
    sys.stdout.write(completion.script(build_parser(), args.shell))


def _cmd_man(args: argparse.Namespace) -> None:
    sys.stdout.write(completion.man_page(build_parser()))


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "mount": _cmd_mount,
    "umount": _cmd_umount,
    "sync": _cmd_sync,
    "status": _cmd_status,
    "mounts": _cmd_mounts,
    "doctor": _cmd_doctor,
    "fsck": _cmd_fsck,
    "install-helper": _cmd_install_helper,
    "workspace": _cmd_workspace,
    "sessions": _cmd_sessions,
    "trash": _cmd_trash,
    "export": _cmd_export,
    "import": _cmd_import,
    "purge": _cmd_purge,
    "completion": _cmd_completion,
    "man": _cmd_man,
}


def _set_up_logging(args: argparse.Namespace) -> None:
    """Log to stderr (and --log-file): info for mount (debug with --debug), warnings otherwise, errors if quiet."""
    config: Config = args.loaded_config
    level = args.log_level or config.get("log_level") or (
        "ERROR" if args.quiet else "DEBUG" if getattr(args, "debug", False)
        else "INFO" if args.command == "mount" else "WARNING")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    log_file = args.log_file or config.get("log_file")
    if log_file:
        try:
            handlers.append(logging.FileHandler(log_file))
        except OSError as exc:
            raise UsageError(f"cannot write the log file {log_file}: {exc.strerror or exc}") from None
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.loaded_config = load(args.config)
        _set_up_logging(args)
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
HELPER_OPTIONS = {option.name for option in options.MOUNT_ALL if not option.flag}
HELPER_FLAGS = {option.name for option in options.MOUNT_ALL if option.flag}


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
