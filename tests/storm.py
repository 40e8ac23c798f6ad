"""Write storm for the crash test: creates and appends to files until the mount dies.

Prints ``pre NAME SHA`` before each close and ``post NAME SHA`` after it
returns, so the test knows which versions were closed.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path


def main(root: Path, count: int) -> None:
    rng = random.Random(7)
    contents: dict[str, bytes] = {}
    out = sys.stdout
    try:
        while True:
            name = f"d{rng.randrange(10)}/f{rng.randrange(count)}"
            chunk = rng.randbytes(rng.randrange(100, 4000))
            path = root / name
            path.parent.mkdir(exist_ok=True)
            with open(path, "ab") as f:
                f.write(chunk)
                data = contents.get(name, b"") + chunk
                out.write(f"pre {name} {hashlib.sha256(data).hexdigest()}\n")
                out.flush()
            contents[name] = data
            out.write(f"post {name} {hashlib.sha256(data).hexdigest()}\n")
            out.flush()
    except OSError:
        return


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
