"""The options of a mount, in one table.

The command line (``cowfs mount --cache-size 2G``), the configuration file
(``cache_size = "2G"``), the mount helper (``mount -t fuse.cowfs … -o
cache_size=2G``) and the daemon's own command line are all derived from
``STORE``, ``MOUNT`` and ``LOGGING``: an option is added, checked and passed
on in one place.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import values


def absolute_path(value: Any) -> Path:
    """A path, made absolute (a daemon started elsewhere must find it)."""
    return Path(values.non_empty(value)).resolve()


@dataclass(frozen=True)
class Option:
    """One option: its name (``cache_size``: the config key and ``-o`` name), how a value is
    checked (a ``values`` function, raising ValueError), its help, and whether it is a flag."""

    name: str
    check: Callable[[Any], Any]
    help: str
    flag: bool = False

    @property
    def long(self) -> str:
        """``--cache-size``."""
        return "--" + self.name.replace("_", "-")


#: Where the store is: every command that works on a store takes these.
STORE = (
    Option("endpoint_url", values.endpoint_url,
           "S3 endpoint, e.g. http://127.0.0.1:9000 (default: $AWS_ENDPOINT_URL, else AWS)"),
    Option("region", values.region, "S3 region"),
    Option("path_style", values.boolean, "path-style S3 addressing", flag=True),
)
#: How a mount behaves.
MOUNT = (
    Option("tenant", values.tenant_name, "mount one tenant as the root"),
    Option("cache_dir", absolute_path, "local cache and journal directory"),
    Option("cache_size", values.byte_size, "cache size limit (default 10G)"),
    Option("write_back_delay", values.non_negative_finite, "seconds between close and upload (default 1)"),
    Option("metadata_ttl", values.non_negative_finite, "seconds metadata is trusted (default 1)"),
    Option("foreign_ttl", values.non_negative_finite,
           "seconds a folder's listing serves while only cowfs mounts change its workspace: objects "
           "other tools write show within this (default 30)"),
    Option("store_timeout", values.positive_finite,
           "seconds before a request to the store that receives nothing fails (default 30)"),
    Option("create_bucket", values.boolean, "create the S3 bucket if it does not exist", flag=True),
    Option("debug", values.boolean, "log every FUSE request", flag=True),
)
#: Where the log goes: every command takes these.
LOGGING = (
    Option("log_level", values.log_level, "debug, info, warning or error (default: info for mount, warning otherwise)"),
    Option("log_file", absolute_path, "write the log to this file too"),
)

#: What a mount can be given, whichever way.
MOUNT_ALL = STORE + MOUNT + LOGGING


def add_arguments(parser: argparse.ArgumentParser, options: Iterable[Option],
                  checked: Callable[[Callable[[Any], Any]], Callable[[str], Any]]) -> None:
    """The options as argparse arguments; ``checked`` turns a check into an argparse ``type``."""
    for option in options:
        if option.flag:
            parser.add_argument(option.long, action="store_true", default=None, help=option.help)
        else:
            parser.add_argument(option.long, type=checked(option.check), help=option.help)


def by_name(options: Iterable[Option] = MOUNT_ALL) -> dict[str, Option]:
    return {option.name: option for option in options}


def argv(settings: Any, options: Iterable[Option] = MOUNT_ALL) -> Iterator[str]:
    """The command-line arguments that give the options the values ``settings`` (an object) holds."""
    for option in options:
        value = getattr(settings, option.name)
        if option.flag:
            if value:
                yield option.long
        elif value is not None:
            yield from (option.long, str(value))
