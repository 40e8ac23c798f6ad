"""The TOML configuration file (``/etc/cowfs/cowfs.toml`` or ``--config``).

Every key is checked at start, by the same function as the command-line
option of that name (``values.py``): an unknown key, a wrong type, a value
out of range or a tenant uid that does not exist is refused with the file,
the key and what is wrong, and exit status 2. Secrets never live here:
credentials come from the environment or an AWS profile.
"""

from __future__ import annotations

import grp
import pwd
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import options, values
from .errors import UsageError

DEFAULT_PATH = Path("/etc/cowfs/cowfs.toml")


@dataclass(frozen=True)
class TenantOwner:
    """Unix owner of a tenant's folder on a multi-user mount."""

    uid: int
    gid: int
    mode: int = 0o770


@dataclass
class Config:
    """Settings from the file; ``None`` means "not set here" (command line or default wins)."""

    path: Path | None = None
    values: dict[str, Any] = field(default_factory=dict)
    tenants: dict[str, TenantOwner] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


#: Every key and the check its value gets: the same one as the command-line option of that name.
KEYS: dict[str, Callable[[Any], Any]] = {
    "store": values.non_empty,
    "mountpoint": values.non_empty,
    "options": values.string_list,
    **{option.name: option.check for option in options.MOUNT_ALL},
}
TENANT_KEYS: dict[str, Callable[[Any], Any]] = {"uid": values.unix_id, "gid": values.unix_id, "mode": values.file_mode}


def _owner(path: Path, name: str, table: Any) -> TenantOwner:
    where = f"{path}: [tenants.{name}]"
    try:
        values.tenant_name(name)
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table with uid, gid and mode")
    unknown = set(table) - set(TENANT_KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    missing = {"uid", "gid"} - set(table)
    if missing:
        raise UsageError(f"{where}: key {sorted(missing)[0]!r} is missing")
    checked = {key: _checked(where, key, TENANT_KEYS[key], value) for key, value in table.items()}
    owner = TenantOwner(**checked)
    try:
        pwd.getpwuid(owner.uid)
    except KeyError:
        raise UsageError(f"{where}: key 'uid': no user with uid {owner.uid}") from None
    try:
        grp.getgrgid(owner.gid)
    except KeyError:
        raise UsageError(f"{where}: key 'gid': no group with gid {owner.gid}") from None
    return owner


def _checked(where: str, key: str, check: Callable[[Any], Any], value: Any) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise UsageError(f"{where}: key {key!r}: {exc}") from None


def load(path: Path | None) -> Config:
    """Read and check ``path`` (or the default file if it exists); no file -> empty config."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return Config()
        path = DEFAULT_PATH
    try:
        doc = tomllib.loads(path.read_bytes().decode())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not valid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    config = Config(path=path)
    for key, value in doc.items():
        if key == "tenants":
            if not isinstance(value, dict):
                raise UsageError(f"{path}: key 'tenants': expected [tenants.NAME] tables")
            config.tenants = {name: _owner(path, name, table) for name, table in value.items()}
            continue
        check = KEYS.get(key)
        if check is None:
            raise UsageError(f"{path}: unknown key {key!r}")
        config.values[key] = _checked(str(path), key, check, value)
    return config
