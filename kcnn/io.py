"""Atomic file writes: temp file in the same folder, fsync, then ``os.replace``.

A command that is killed part-way never leaves a half-written file under the
final name that a later command would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kcnn.errors import KcnnError


class WriteError(KcnnError):
    """A file could not be written (disk full, read-only folder, …). The file it would
    have replaced is left as it was: writes go to a temporary file first."""

    def __init__(self, path: str | os.PathLike, err: OSError):
        text = (str(err) or type(err).__name__).strip().splitlines()[0][:160]
        reason = os.strerror(err.errno) if err.errno else text
        super().__init__(f"{path}: cannot write ({reason}); any previous version of the file "
                         f"is left intact")


def umask() -> int:
    """The process's umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(directory: bool = False) -> int:
    """The mode a new file (0666) or folder (0777) gets under the user's umask, as with
    ``open()`` or ``mkdir``; temporary files are created 0600, so every write fixes it."""
    return (0o777 if directory else 0o666) & ~umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path``.

    The temporary name keeps the final suffix (``.keras``, ``.png``) because some
    writers pick the format from it. The result has the permissions of a file the
    user creates (umask applied), not the private 0600 of a temporary file.
    """
    path = Path(path)
    suffix = suffix if suffix is not None else "".join(path.suffixes[-1:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}",
                                   dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise WriteError(path, err) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, public_mode())
        os.replace(tmp_path, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(err, OSError):
            raise WriteError(path, err) from None
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
