"""The TOML configuration file (``/etc/cowfs/cowfs.toml`` or ``--config``).

Every key is checked at start: an unknown key, a wrong type or a tenant uid
that does not exist is refused with the file, the key and what is wrong, and
exit status 2. Secrets never live here: credentials come from the
environment or an AWS profile.
"""

from __future__ import annotations

import grp
import pwd
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UsageError
from .names import SCOPED_NAME

DEFAULT_PATH = Path("/etc/cowfs/cowfs.toml")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\Z", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``10G``, ``512M``, ``4096`` -> bytes (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.match(str(text).strip())
    if not match:
        raise ValueError(f"expected a size like 512M or 10G, got {text!r}")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_KMGT".index(unit.upper() or "_"))


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


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"expected a non-negative number, got {value!r}")
    return float(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _options(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return value


KEYS: dict[str, Callable[[Any], Any]] = {
    "store": _string,
    "mountpoint": _string,
    "endpoint_url": _string,
    "region": _string,
    "path_style": _boolean,
    "tenant": _string,
    "cache_dir": _string,
    "cache_size": parse_size,
    "write_back_delay": _number,
    "metadata_ttl": _number,
    "store_timeout": _number,
    "options": _options,
}


def _owner(path: Path, name: str, table: Any) -> TenantOwner:
    where = f"{path}: [tenants.{name}]"
    if not SCOPED_NAME.match(name):
        raise UsageError(f"{where}: invalid tenant name")
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table with uid, gid and mode")
    unknown = set(table) - {"uid", "gid", "mode"}
    if unknown:
        raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    uid, gid, mode = table.get("uid"), table.get("gid"), table.get("mode", "0770")
    for key, value in (("uid", uid), ("gid", gid)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{where}: key {key!r}: expected a number, got {value!r}")
    try:
        pwd.getpwuid(uid)
    except KeyError:
        raise UsageError(f"{where}: key 'uid': no user with uid {uid}") from None
    try:
        grp.getgrgid(gid)
    except KeyError:
        raise UsageError(f"{where}: key 'gid': no group with gid {gid}") from None
    try:
        mode_bits = int(mode, 8) if isinstance(mode, str) else int(mode)
    except ValueError:
        raise UsageError(f"{where}: key 'mode': expected an octal mode like \"0770\", got {mode!r}") from None
    if not 0 <= mode_bits <= 0o7777:
        raise UsageError(f"{where}: key 'mode': {mode!r} is not a file mode")
    return TenantOwner(uid, gid, mode_bits)


def load(path: Path | None) -> Config:
    """Read and check ``path`` (or the default file if it exists); no file -> empty config."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return Config()
        path = DEFAULT_PATH
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such configuration file") from None
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
        try:
            config.values[key] = check(value)
        except ValueError as exc:
            raise UsageError(f"{path}: key {key!r}: {exc}") from None
    return config
