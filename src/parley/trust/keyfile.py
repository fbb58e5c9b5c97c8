"""Secret key files: created owner-only on first use, refused when others could read them."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from parley.errors import ConfigError

__all__ = ["private_file"]


def private_file(path: Path, what: str, create: Callable[[], bytes]) -> bytes:
    """The bytes of the secret ``what`` in ``path``; a new file of ``create()`` (mode 0600, a
    new parent 0700) when there is none. Two processes starting at once keep the first one's.
    A file that group or others may read or write is refused with one line."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = create()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return private_file(path, what, create)  # another process wrote it first
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return data
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )
    return path.read_bytes()
