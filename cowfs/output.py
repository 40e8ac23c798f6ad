"""What the command line prints for people: sizes, durations, plurals, tables; JSON for programs."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def size(n: float) -> str:
    """``0 B``, ``512 B``, ``1.5 KiB``, ``12.0 MiB``: binary units, one decimal past bytes."""
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


def duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``1 min 13 s``, ``2 h 5 min``, ``3 d 4 h``: the two largest parts."""
    if seconds < 10:
        return f"{max(seconds, 0):.1f} s"
    whole = int(seconds)
    parts = [(whole // 86400, "d"), (whole // 3600 % 24, "h"), (whole // 60 % 60, "min"), (whole % 60, "s")]
    while parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{n} {unit}" for n, unit in parts[:2] if n or unit == parts[0][1])


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 file``, ``0 files``, ``2 entries`` (with ``words`` for an irregular plural)."""
    return f"{n} {word if n == 1 else words or word + 's'}"


def shown(value: Any) -> str:
    """A value for a person: ``none`` for nothing, lists joined, names that cannot harm a terminal."""
    if value is None or value == "" or value == []:
        return "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(shown(v) for v in value)
    text = str(value)
    return text if text.isprintable() else ascii(text)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str) -> list[str]:
    """Columns aligned under a header; the line ``empty`` says so when there are no rows."""
    cells = [[shown(v) for v in row] for row in rows]
    if not cells:
        return [empty]
    widths = [max(len(r[i]) for r in [list(headers), *cells]) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [list(headers), *cells]]


def fields(pairs: Iterable[tuple[str, Any]]) -> list[str]:
    """``label   value`` lines, the values aligned."""
    pairs = list(pairs)
    width = max((len(label) for label, _ in pairs), default=0)
    return [f"{label.ljust(width)}  {shown(value)}" for label, value in pairs]


def emit(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)


def emit_json(doc: Any) -> None:
    """One JSON document on one line, for programs."""
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")
