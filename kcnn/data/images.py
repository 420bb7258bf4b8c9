"""Image files: listing with a header check, and decoding to a fixed size and colour mode.

Decoding uses Pillow for every format (JPEG, PNG, BMP, GIF, WebP, TIFF, …), so
the same function serves the streaming pipeline, the decoded caches and the
statistics pass, and every path gives the same pixels. Pillow releases the
GIL while it decodes and resizes, so tf.data's parallel calls decode in
parallel. What TensorFlow's in-graph decoders would get wrong is handled here:
EXIF orientation (applied, as a viewer shows the photo), CMYK JPEGs, palette
and 16-bit PNGs (scaled to 8 bits, not clipped), alpha (dropped).

A file whose header Pillow cannot read is found while listing, before
anything is trained; a file whose body is corrupt is found when it is first
decoded (the error names it).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# Extensions of the formats kcnn reads (Pillow decodes them all).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif",
                  ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".qoi")
# Bump when decoding changes, so decoded caches made by an older kcnn are not reused.
DECODE_VERSION = 1
BAD_IMAGE_MARKER = "kcnn-bad-image:"


class BadImage(Exception):
    """A file that cannot be decoded; ``str()`` carries a marker the trainer looks for."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{BAD_IMAGE_MARKER}{self.path}: {reason}")


def _reason(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]


def decode_native(path: str | Path, channels: int) -> np.ndarray:
    """One image file as uint8 ``(h, w, channels)`` at its own size, through Pillow: EXIF
    orientation applied, CMYK/palette/16-bit/float converted, alpha dropped."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = _to_8bit(im)
            out = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImage(path, f"unreadable image ({_reason(err)})") from None
    return out[..., None] if out.ndim == 2 else out


def decode(path: str | Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image file as uint8 ``(height, width, channels)``, through Pillow, bilinear-resized.

    (Training decodes in TensorFlow's graph instead, see :mod:`kcnn.data.pipeline`; this is
    the reference the tests compare modes and formats against.)"""
    from PIL import Image

    out = decode_native(path, channels)
    if out.shape[:2] != tuple(size):
        squeeze = out[..., 0] if channels == 1 else out
        im = Image.fromarray(squeeze).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        out = np.asarray(im, dtype=np.uint8)
        out = out[..., None] if out.ndim == 2 else out
    return out


def _to_8bit(im):
    """16-bit and 32-bit integer or float images scaled into 0–255 (Pillow's convert
    would clip them)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return im


# What TensorFlow's own decoders read exactly as a viewer shows it; anything else (WebP, TIFF,
# GIF (TF decodes it to 3 channels only), palette BMPs (TF ignores their colour table),
# CMYK JPEGs, 16-bit or 1-bit PNGs, EXIF-rotated photos) is decoded by Pillow.
_TF_FORMATS = {"JPEG": ("L", "RGB"), "PNG": ("L", "LA", "P", "PA", "RGB", "RGBA"),
               "BMP": ("RGB", "RGBA")}
_ORIENTATION = 0x0112


def check_header(path: str | Path) -> tuple[str | None, bool]:
    """(None, whether TensorFlow can decode it exactly) when Pillow can identify the file as
    an image, else (the reason, False)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            native = im.mode in _TF_FORMATS.get(im.format or "", ())
            if native and im.format == "JPEG":
                native = im.getexif().get(_ORIENTATION, 1) == 1
        if width < 1 or height < 1:
            return f"empty image ({width}×{height})", False
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f"unreadable image ({_reason(err)})", False
    return None, native


def check_files(paths: Sequence[str], progress_label: str = "checking images"
                ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Stat and header-check ``paths`` in a thread pool (the work is I/O): a mask of the
    readable ones, a mask of those TensorFlow decodes natively, and ``(path, reason)`` for
    the unreadable ones."""
    def one(path: str):
        try:
            st = os.stat(path)
        except OSError as err:
            return path, False, f"cannot read ({_reason(err)})"
        if st.st_size == 0:
            return path, False, "empty file"
        reason, native = check_header(path)
        return path, native, reason

    ok = np.ones(len(paths), bool)
    native = np.zeros(len(paths), bool)
    bad = []
    # Header parsing is Python holding the GIL: more threads than cores only adds switching
    # (they help where the stat and open wait on a network file system).
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = pool.map(one, paths)
        for i, (path, tf_native, reason) in enumerate(progress(results, len(paths),
                                                                progress_label)):
            native[i] = tf_native
            if reason is not None:
                ok[i] = False
                bad.append((path, reason))
    return ok, native, bad


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def decode_many(paths: Sequence[str], size: tuple[int, int], channels: int,
                sink: Callable[[int, np.ndarray], None] | None = None,
                label: str = "decoding images", threads: int | None = None) -> np.ndarray | None:
    """Decode ``paths`` in parallel. Each image goes to ``sink(i, image)`` when given
    (nothing is kept), else into one new uint8 array that is returned."""
    out = None
    if sink is None:
        out = np.empty((len(paths), *size, channels), np.uint8)

        def sink(i: int, image: np.ndarray) -> None:
            out[i] = image

    threads = threads or min(8, (os.cpu_count() or 2) * 2)

    def one(i: int) -> int:
        sink(i, decode(paths[i], size, channels))
        return i

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in progress(pool.map(one, range(len(paths))), len(paths), label):
            pass
    return out


# ----------------------------------------------------------------------------- progress
def show_progress() -> bool:
    """Progress bars only for a person watching: stdout and stderr are terminals."""
    return sys.stdout.isatty() and sys.stderr.isatty() and not os.environ.get("KCNN_NO_PROGRESS")


def progress(items: Iterable[Any], total: int, label: str, min_total: int = 256):
    """``items`` with a rich progress bar on stderr (when a person is watching and the
    job is big enough to take a moment)."""
    if total < min_total or not show_progress():
        yield from items
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        for item in items:
            yield item
            bar.advance(task)


def first_names(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def stat_fingerprint(files: Sequence[str], stats: Sequence[tuple[int, int]],
                     extra: Callable[[], str] = lambda: "") -> str:
    """A digest of a file list (names, sizes, mtimes) and decoding settings."""
    import hashlib

    h = hashlib.sha256(f"kcnn-decode-v{DECODE_VERSION}|{extra()}".encode())
    for f, (size, mtime) in zip(files, stats):
        h.update(f"{f}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


@contextlib.contextmanager
def bad_images_as_errors(when: str, splits: Sequence[Any] = ()):
    """An image that fails to decode inside tf.data surfaces as a TensorFlow error whose
    text carries :data:`kcnn.data.images.BAD_IMAGE_MARKER`; make it one user-facing line.
    TensorFlow's own decoders name no file: ``splits`` (default: the splits decoded most
    recently) are searched for it."""
    from kcnn.errors import DataError

    try:
        yield
    except BadImage as err:
        raise DataError(f"{err.path}: {err.reason} (found {when})") from None
    except Exception as err:
        text = str(err)
        hint = "fix or remove the file"
        if BAD_IMAGE_MARKER in text:
            detail = text.split(BAD_IMAGE_MARKER, 1)[1].splitlines()[0].strip()
            raise DataError(f"{detail} (found {when}; {hint})") from None
        if type(err).__name__ != "InvalidArgumentError" or not _DECODE_ERROR.search(text):
            raise
        found = find_undecodable(splits)  # TensorFlow's decoders do not name the file
        if found is None:
            raise
        raise DataError(f"{found[0]}: {found[1]} (found {when}; {hint})") from None


_DECODE_ERROR = re.compile(r"decode|JPEG|PNG|BMP|GIF|image format|Invalid .* data", re.I)


# File-backed splits whose images are being decoded (kcnn.data.decode registers them), so
# that a decode error TensorFlow reports without a file name can be traced to the file.
_LIVE: list[weakref.ref] = []


def register_split(split) -> None:
    """Note a file-backed split whose images are being decoded (most recent last)."""
    _LIVE[:] = [r for r in _LIVE if r() is not None and r() is not split]
    _LIVE.append(weakref.ref(split))


def live_splits() -> list[Any]:
    """The splits being decoded, most recently registered first."""
    return [s for s in (r() for r in reversed(_LIVE)) if s is not None]


def find_undecodable(splits: Sequence[Any] = (), limit_seconds: float = 600.0
                     ) -> tuple[str, str] | None:
    """After a decode error inside tf.data (TensorFlow's message names no file): the first
    file of the splits being decoded that Pillow cannot decode either, as (path, reason)."""
    import time

    start = time.monotonic()
    for split in list(splits) or live_splits():
        for i, path in enumerate(split.files):
            if split.native is not None and not split.native[i]:
                continue  # decoded by Pillow already: its errors name the file
            try:
                decode_native(path, split.channels)
            except BadImage as err:
                return err.path, err.reason
            if time.monotonic() - start > limit_seconds:
                return None
    return None
