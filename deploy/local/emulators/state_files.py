"""Race-safe creation of the files that emulators keep in ``--state-dir``.

Two emulators may start at the same time on one state directory. A file is
written to a private temporary name opened with ``O_EXCL`` and then published
with ``os.link``, which fails instead of replacing an existing file, so every
process ends up reading the same complete content.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def read_or_create(path: Path, create: Callable[[], bytes]) -> bytes:
    """Return the content of ``path``, writing ``create()`` first if it is absent.

    The file is created with mode 0600. When another process publishes the
    file first, its content wins and ``create()``'s result is discarded.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(create())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_bytes()
