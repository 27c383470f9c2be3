"""Files that appear whole or not at all.

Everything the product keeps (session files, cached volumes, run records, reports) is written
to a temporary name in the target's own folder and moved into place with :func:`os.replace`,
which is atomic on one file system: a reader, a second process or a crash never sees half a
file, and the previous version stays until the new one is complete.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["replacing", "write_atomic", "write_json", "write_text"]


@contextmanager
def replacing(path: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write; moved onto ``path`` when the block ends
    without an error, removed when it raises.

    ``suffix`` ends the temporary name, for writers that choose the format by it
    (``".nii.gz"``). The folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a plain name (not tempfile's 0600 files) keeps the umask's permissions
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_atomic(
    path: str | Path, write: Callable[[IO[bytes]], Any], *, durable: bool = False
) -> Path:
    """``write(handle)`` into a temporary file beside ``path``, then move it into place.

    ``durable`` also flushes the file to the disk before the move (``fsync``), for records
    that must survive a power cut as well as a crash (an annotator's corrections).
    """
    with replacing(path) as partial:
        with open(partial, "xb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
    return Path(path)


def write_text(path: str | Path, text: str, *, durable: bool = False) -> Path:
    """``text`` as UTF-8, atomically."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda handle: handle.write(data), durable=durable)


def write_json(path: str | Path, data: Any, *, indent: int = 2, durable: bool = False) -> Path:
    """``data`` as JSON, atomically."""
    return write_text(path, json.dumps(data, indent=indent), durable=durable)
