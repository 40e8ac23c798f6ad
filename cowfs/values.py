"""Option and configuration values: one parse function per kind of value.

The command line (through argparse), the configuration file and the mount
helper (which hands its ``-o`` options to the command line) check a value
with the same function, so it is refused the same way wherever it is given.
Each takes a string from the command line or a value from TOML and returns
the checked value, or raises ``ValueError`` saying what it expected.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .layout import SESSIONS_DIR
from .names import SCOPED_NAME

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\Z", re.IGNORECASE)
#: What botocore accepts as a region name.
_REGION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
SESSIONS_PAGE_MAX = 100
LOG_LEVELS = ("debug", "info", "warning", "error")
N = TypeVar("N", int, float)


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def non_empty(value: Any) -> str:
    if not string(value):
        raise ValueError("expected a value, got an empty string")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def string_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return value


def _number(value: Any) -> float:
    """A finite number from TOML or from text ("nan" and "inf" are refused)."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _require(number: N, value: Any, ok: bool, expected: str) -> N:
    """``number`` (parsed from ``value``) if ``ok``, else the error that names what was expected."""
    if not ok:
        raise ValueError(f"expected {expected}, got {value!r}")
    return number


def non_negative_finite(value: Any) -> float:
    """Seconds that may be 0: the write-back delay, the metadata TTL."""
    number = _number(value)
    return _require(number, value, number >= 0, "a number >= 0")


def positive_finite(value: Any) -> float:
    """Seconds that must leave room for anything to happen: timeouts."""
    number = _number(value)
    return _require(number, value, number > 0, "a number > 0")


def days(value: Any) -> float:
    """Days of inactivity: at least one, so that no workspace in use is ever idle enough."""
    number = _number(value)
    return _require(number, value, number >= 1, "a number of days >= 1")


def _integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise ValueError(f"expected a whole number, got {value!r}")


def positive_int(value: Any) -> int:
    number = _integer(value)
    return _require(number, value, number >= 1, "a whole number >= 1")


def page_size(value: Any) -> int:
    number = _integer(value)
    return _require(number, value, 1 <= number <= SESSIONS_PAGE_MAX, f"a whole number from 1 to {SESSIONS_PAGE_MAX}")


def unix_id(value: Any) -> int:
    """A uid or gid as TOML gives it: a whole number, not a string or a boolean."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a number, got {value!r}")
    return value


def file_mode(value: Any) -> int:
    """Permission bits: an octal string like "0770", or a TOML integer (0o770)."""
    if isinstance(value, str) and re.fullmatch(r"[0-7]{1,4}", value):
        return int(value, 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    raise ValueError(f"expected an octal mode like \"0770\", got {value!r}")


def byte_size(value: Any) -> int:
    """``10G``, ``512M``, ``1.5K``, ``4096`` -> bytes (binary units); a fraction of a byte is refused."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"expected a size like 512M or 10G, got {value!r}")
    number, unit = match.groups()
    size = Decimal(number) * 1024 ** "_KMGT".index(unit.upper() or "_")
    if size != size.to_integral_value():
        raise ValueError(f"expected a whole number of bytes, got {value!r}")
    return int(size)


def _scoped(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not SCOPED_NAME.match(value):
        raise ValueError(f"invalid {kind} {value!r} (letters, digits, '.', '_', '-'; a letter or digit first)")
    return value


def tenant_name(value: Any) -> str:
    return _scoped("tenant name", value)


def workspace_ref(value: Any) -> tuple[str, str]:
    """``TENANT/WORKSPACE`` -> (tenant, workspace)."""
    tenant, _, workspace = string(value).partition("/")
    if not workspace or "/" in workspace:
        raise ValueError(f"expected TENANT/WORKSPACE, got {value!r}")
    return tenant_name(tenant), _scoped("workspace name", workspace)


def archive_source(value: Any) -> tuple[str, str, str | None]:
    """``TENANT/WORKSPACE`` or ``TENANT/WORKSPACE/sessions/ID`` -> (tenant, workspace, session)."""
    text = string(value)
    parts = text.split("/")
    if len(parts) == 4 and parts[2] == SESSIONS_DIR:
        return (*workspace_ref("/".join(parts[:2])), _scoped("session id", parts[3]))
    if len(parts) != 2:
        raise ValueError(f"expected TENANT/WORKSPACE or TENANT/WORKSPACE/sessions/ID, got {value!r}")
    return (*workspace_ref(text), None)


def endpoint_url(value: Any) -> str:
    """An S3 endpoint: ``http(s)://HOST[:PORT][/PATH]``."""
    parts = urlsplit(string(value))
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # not a number, or over 65535
        port_ok = False
    if not port_ok or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected a URL like http://HOST:PORT, got {value!r}")
    return value


def region(value: Any) -> str:
    if not _REGION.match(string(value)):
        raise ValueError(f"expected a region name like us-east-1, got {value!r}")
    return value


def log_level(value: Any) -> str:
    """``debug``, ``info``, ``warning`` or ``error`` (any case) -> the logging module's name for it."""
    text = string(value).strip().lower()
    if text not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return text.upper()
