"""``cowfs install-helper``: put ``mount.fuse.cowfs`` where mount(8) looks for it.

mount(8) runs ``/sbin/mount.fuse.cowfs`` for ``-t fuse.cowfs`` and fstab
lines, with a reset PATH, so the helper is a tiny script with the absolute
path of this installation's ``mount.cowfs``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .errors import CowfsError


def helper_script() -> str:
    target = shutil.which("mount.cowfs") or str(Path(sys.executable).parent / "mount.cowfs")
    if not os.access(target, os.X_OK):
        raise CowfsError(f"{target} is missing: install cowfs with pip first")
    return f"#!/bin/sh\n# Installed by 'cowfs install-helper'.\nexec {target} \"$@\"\n"


def install(directory: Path = Path("/sbin")) -> list[Path]:
    """Write ``mount.fuse.cowfs`` and ``mount.cowfs`` into ``directory``; return their paths."""
    script = helper_script()
    written = []
    for name in ("mount.fuse.cowfs", "mount.cowfs"):
        path = directory / name
        tmp = path.with_name(f".{name}.tmp")
        try:
            tmp.write_text(script)
            tmp.chmod(0o755)
            os.replace(tmp, path)
        except OSError as exc:
            raise CowfsError(f"cannot write {path}: {exc.strerror or exc}") from None
        written.append(path)
    return written
