"""Decoded-image caches for file-backed splits (``data.cache: none | memory | disk``).

* ``none`` (default): every epoch decodes the files again, in parallel, inside tf.data.
  Memory stays flat whatever the folder's size. Use it for large folders, or when the
  disk is slow compared with decoding.
* ``memory``: decode each split once, in parallel, into a uint8 array in RAM.
  ``N × H × W × C`` bytes (10,000 RGB images at 128×128: 0.5 GB); for data that fits.
* ``disk``: decode each split once into a uint8 file in the cache folder
  (``data.cache_dir``, else ``$KCNN_CACHE_DIR``, else ``~/.cache/kcnn``). Later epochs
  and later runs read the decoded bytes with ``pread``: no decoding, and the process
  does not map the file, so its memory stays flat too. Use it for repeated runs on the
  same folder.

A disk cache is keyed by a fingerprint of the split's file list (names, sizes,
mtimes) and the decoding settings (size, channels, decoder version), so a
changed folder gets a new cache. It is built in a temporary folder and renamed
into place when complete: a half-written cache is never used, and a stale one
is never found.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from kcnn.data.dataset import Dataset, FileSplit
from kcnn.data.images import progress, stat_fingerprint
from kcnn.errors import DataError
from kcnn.io import public_mode


class MemoryStore:
    """Decoded images held in RAM, aligned with a split's files."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def read(self, idx: np.ndarray) -> np.ndarray:
        return self.array[np.asarray(idx, dtype=np.int64)]

    def take(self, idx: np.ndarray) -> MemoryStore:
        return MemoryStore(self.read(idx))


class DiskStore:
    """Decoded images in a raw uint8 file (row-major ``N × H × W × C``), read by ``pread``."""

    def __init__(self, path: Path, image_shape: tuple[int, ...], rows: np.ndarray):
        self.path = Path(path)
        self.image_shape = tuple(image_shape)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.row_bytes = int(np.prod(self.image_shape))
        self._fd: int | None = None

    def __getstate__(self):
        return {**self.__dict__, "_fd": None}

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def read(self, idx: np.ndarray) -> np.ndarray:
        fd = self._file()
        rows = self.rows[np.asarray(idx, dtype=np.int64)]
        out = np.empty((len(rows), *self.image_shape), np.uint8)
        flat = out.reshape(len(rows), -1)
        for j, r in enumerate(rows):  # straight into the output buffer: one copy per image
            got = os.preadv(fd, [memoryview(flat[j])], int(r) * self.row_bytes)
            if got != self.row_bytes:
                raise DataError(f"{self.path}: decoded cache is truncated (row {r}); delete its "
                                f"folder to rebuild it")
        return out

    def take(self, idx: np.ndarray) -> DiskStore:
        return DiskStore(self.path, self.image_shape, self.rows[np.asarray(idx, dtype=np.int64)])

    def __del__(self):
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


def cache_root(configured: str | None = None) -> Path:
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("KCNN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "kcnn"


def split_fingerprint(split: FileSplit) -> str:
    stats = [(st.st_size, st.st_mtime_ns) for st in map(os.stat, split.files)]
    return stat_fingerprint(list(split.files), stats,
                            lambda: f"{split.size[0]}x{split.size[1]}x{split.channels}")


def disk_store(split: FileSplit, root: Path, label: str) -> DiskStore:
    """The disk cache of ``split``: found by fingerprint, or built (atomically)."""
    key = split_fingerprint(split)
    folder = root / "images" / key
    meta_path, data_path = folder / "meta.json", folder / "images.u8"
    if meta_path.is_file() and data_path.is_file():
        meta = _read_meta(meta_path)
        want = len(split) * int(np.prod(split.image_shape))
        if meta.get("complete") and data_path.stat().st_size == want:
            return DiskStore(data_path, split.image_shape, np.arange(len(split)))
        shutil.rmtree(folder, ignore_errors=True)  # stale or foreign: rebuild
    root_images = root / "images"
    try:
        root_images.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root_images))
    except OSError as err:
        raise DataError(f"data.cache: cannot write the decoded cache under {root} ({err}); "
                        f"set data.cache_dir or KCNN_CACHE_DIR") from None
    try:
        row_bytes = int(np.prod(split.image_shape))
        fd = os.open(tmp / "images.u8", os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            row = 0
            batches = split.iter_images(np.arange(len(split)), 64)
            for batch in progress(batches, -(-len(split) // 64),
                                  f"building the decoded cache ({label})", min_total=4):
                os.pwrite(fd, np.ascontiguousarray(batch).tobytes(), row * row_bytes)
                row += len(batch)
            os.fsync(fd)
        finally:
            os.close(fd)
        (tmp / "meta.json").write_text(json.dumps({
            "complete": True, "count": len(split), "image_shape": list(split.image_shape),
            "fingerprint": key}))
        os.chmod(tmp, public_mode(directory=True))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process built it first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DiskStore(data_path, split.image_shape, np.arange(len(split)))


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def attach_cache(data: Dataset, mode: str, cache_dir: str | None = None) -> Dataset:
    """Give every file-backed split of ``data`` its decoded store (``mode`` memory/disk)."""
    if mode == "none":
        return data
    from kcnn.data.images import bad_images_as_errors

    root = cache_root(cache_dir)
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if not isinstance(split, FileSplit) or len(split) == 0 or split.cache is not None:
            continue
        with bad_images_as_errors(f"while building the {mode} cache", [split]):
            if mode == "memory":
                split.cache = MemoryStore(split.images())
            else:
                split.cache = disk_store(split, root, name)
    return data
