"""What crosses from :mod:`kcnn.data` into the engine: :class:`Split` and :class:`Dataset`,
and the deterministic splitting that turns what a source read into one.

A split holds images as ``(N, H, W, C)`` arrays (uint8 or float32, raw pixel
values: rescaling and standardization are part of the model) and integer labels
``(N,)``, or, under ``data.task: regression``, float32 targets ``(N, k)``. Code
outside :mod:`kcnn.data` asks a split for its length, labels, weights and
``image_shape``, and reads its images through :mod:`kcnn.data.pipeline`, so a
split can later be backed by files instead of an array.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kcnn.errors import DataError
from kcnn.recipes import schema as S


@dataclasses.dataclass
class Split:
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray | None = None  # per-sample weight (cost) for the loss; None: all 1

    def __len__(self) -> int:
        return len(self.y)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W, C) of one image."""
        return tuple(int(d) for d in self.x.shape[1:])

    def take(self, idx: np.ndarray) -> Split:
        """The samples at ``idx`` (weights included)."""
        return Split(self.x[idx], self.y[idx], None if self.w is None else self.w[idx])

    def images(self, idx: np.ndarray | None = None) -> np.ndarray:
        """The images (at ``idx``) as one array."""
        return self.x if idx is None else self.x[np.asarray(idx, dtype=np.int64)]

    def batches(self, batch_size: int):
        """The images in order, ``batch_size`` at a time."""
        for i in range(0, len(self), batch_size):
            yield self.x[i:i + batch_size]


@dataclasses.dataclass(eq=False)
class FileSplit:
    """A split backed by image files: paths and labels only; images are decoded when
    read (:mod:`kcnn.data.images`), or read from a decoded cache (:mod:`kcnn.data.cache`).

    Same interface as :class:`Split` (``len``, ``y``, ``w``, ``image_shape``, ``take``,
    ``images``, ``batches``), plus :meth:`load_batch`, which the tf.data pipeline calls.
    """

    files: np.ndarray  # absolute paths (dtype object)
    y: np.ndarray
    w: np.ndarray | None
    size: tuple[int, int]  # (height, width) every image is resized to
    channels: int
    cache: Any = None  # a decoded store aligned with ``files`` (kcnn.data.cache), or None
    native: np.ndarray | None = None  # per file: TensorFlow decodes it exactly (else Pillow)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (int(self.size[0]), int(self.size[1]), int(self.channels))

    def take(self, idx: np.ndarray) -> FileSplit:
        idx = np.asarray(idx, dtype=np.int64)
        return FileSplit(self.files[idx], self.y[idx], None if self.w is None else self.w[idx],
                         self.size, self.channels,
                         None if self.cache is None else self.cache.take(idx),
                         None if self.native is None else self.native[idx])

    def iter_images(self, idx: np.ndarray, batch_size: int = 64):
        """uint8 images at ``idx``, ``batch_size`` at a time: from the cache, else decoded
        in parallel by the same graph function training uses (:mod:`kcnn.data.pipeline`)."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.cache is not None:
            for i in range(0, len(idx), batch_size):
                yield self.cache.read(idx[i:i + batch_size])
            return
        from kcnn.data.decode import decode_files

        yield from decode_files(self, idx, batch_size)

    def load_batch(self, idx: np.ndarray) -> np.ndarray:
        """uint8 images at ``idx`` as one array."""
        return self.images(idx)

    def images(self, idx: np.ndarray | None = None) -> np.ndarray:
        """The images (at ``idx``) as one uint8 array."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx, dtype=np.int64)
        parts = list(self.iter_images(idx, 256))
        return np.concatenate(parts) if parts else np.zeros((0, *self.image_shape), np.uint8)

    def batches(self, batch_size: int):
        yield from self.iter_images(np.arange(len(self)), batch_size)


@dataclasses.dataclass
class SourceData:
    """What a source reads, before splitting: the main samples, the val/test splits
    the source has itself (or None), and the class (or target) names if it knows them."""

    train: Split | FileSplit
    val: Split | FileSplit | None = None
    test: Split | FileSplit | None = None
    names: list[str] | None = None
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, reason)


@dataclasses.dataclass
class Dataset:
    train: Split | FileSplit
    val: Split | FileSplit
    test: Split | FileSplit
    num_classes: int  # regression: the number of targets (the model's output width)
    class_names: list[str]  # regression: the target names
    task: str = "classification"
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, reason)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.image_shape

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

    @property
    def sampler_labels(self) -> np.ndarray:
        """What the sampler orders: the class labels (one pseudo-class under regression)."""
        return np.zeros(len(self.train), np.int64) if self.is_regression else self.train.y

    @property
    def class_counts(self) -> np.ndarray | None:
        """Training samples per class (what class weights and priors are computed from);
        None under regression."""
        if self.is_regression:
            return None
        return np.bincount(self.train.y, minlength=self.num_classes)[: self.num_classes]

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; valid: train, val, test")
        return getattr(self, name)


# ----------------------------------------------------------------------------- split
def stratified_split(y: np.ndarray, fraction: float, seed: int,
                     stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with ``fraction`` of each class held out
    (``stratify=False``: of the whole set, for regression targets)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if fraction <= 0:
        return idx, idx[:0]
    if not stratify:
        if len(y) < 2:
            raise DataError(f"data: {len(y)} sample cannot be split (data.split)")
        keep, held = train_test_split(idx, test_size=fraction, random_state=seed)
        return np.sort(keep), np.sort(held)
    counts = np.bincount(y)
    present = counts[counts > 0]
    n_held = int(np.ceil(fraction * len(y)))
    # Stratify when every class can give a sample to both sides; tiny sets fall back to random.
    ok = present.min() >= 2 and len(present) <= n_held <= len(y) - len(present)
    stratify = y if ok else None
    keep, held = train_test_split(idx, test_size=fraction, stratify=stratify, random_state=seed)
    return np.sort(keep), np.sort(held)


def long_tail_counts(counts: np.ndarray, lt: S.LongTail) -> np.ndarray:
    """Per-class target counts of a long-tailed split, capped by what each class has.

    ``exp``: n_c = n_max · ratio^(−c/(C−1)); ``step``: the last ⌊C/2⌋ classes get
    n_max / ratio, the others n_max. Rounded, and at least 1 for a class that has samples.
    """
    counts = np.asarray(counts, dtype=np.int64)
    c = len(counts)
    n_max = int(counts.max(initial=0))
    if lt.profile == "exp":
        target = n_max * float(lt.ratio) ** (-np.arange(c) / max(c - 1, 1))
    else:
        target = np.where(np.arange(c) >= c - c // 2, n_max / float(lt.ratio), float(n_max))
    target = np.maximum(np.rint(target).astype(np.int64), 1)
    return np.minimum(counts, target)


def long_tail_indices(y: np.ndarray, num_classes: int, lt: S.LongTail) -> np.ndarray:
    """Sorted indices of a long-tailed subset of ``y`` (class 0 is the head); seeded by ``lt.seed``."""
    counts = np.bincount(y, minlength=num_classes)
    keep = long_tail_counts(counts, lt)
    rng = np.random.default_rng(lt.seed)
    chosen = [rng.choice(np.flatnonzero(y == c), size=int(keep[c]), replace=False)
              for c in range(num_classes) if keep[c] > 0]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, np.int64)


def select_classes(split: Split, classes: list[int], num_classes: int) -> Split:
    """Keep the samples of ``classes`` and relabel them 0..k-1 in that order."""
    missing = [c for c in classes if c >= num_classes]
    if missing:
        raise DataError(f"data.classes: class {missing[0]} does not exist (labels 0..{num_classes - 1})")
    if len(set(classes)) != len(classes):
        raise DataError(f"data.classes: repeated class in {classes}")
    lookup = np.full(num_classes, -1, dtype=np.int64)
    lookup[np.asarray(classes)] = np.arange(len(classes))
    keep = np.flatnonzero(lookup[split.y] >= 0)
    out = split.take(keep)
    out.y = lookup[out.y]
    return out


def first_per_class(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of at most ``n`` randomly chosen samples of each class (sorted)."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[:n] for c in np.unique(y)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def assemble(data: S.Data, raw: SourceData) -> Dataset:
    """Split what a source read into train/val/test, as the recipe's ``data`` section says.

    A source without its own test split loses ``split.test`` of each class to
    the test set (``random_state=split.seed``; for digits with the defaults this
    is scikit-learn's usual 25% stratified split with ``random_state=0``); val is
    then split off the rest the same way. ``data.long_tail`` then subsamples the
    training split only. Per-sample weights (npz ``w``/``cost``) follow their samples.
    """
    main, val, test, names = raw.train, raw.val, raw.test, raw.names
    if data.task == "regression":
        out = _regression_dataset(data, main, val, test, names)
        out.skipped = list(raw.skipped)
        return out
    given = [("train", main.y)] + [(n, s.y) for n, s in (("val", val), ("test", test)) if s is not None]
    num_classes = data.num_classes or int(max(labels.max(initial=-1) for _, labels in given) + 1)
    for split_name, labels in given:
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if len(bad):
            raise DataError(
                f"data: {split_name} label {bad[0]} is outside 0..{num_classes - 1} "
                f"(data.num_classes = {num_classes})"
            )
    train, val, test = _split_missing(main, val, test, data.split, stratify=True)
    if data.long_tail is not None:
        train = train.take(long_tail_indices(train.y, num_classes, data.long_tail))
    if data.classes is not None:
        names = [(names[c] if names and c < len(names) else str(c)) for c in data.classes]
        train, val, test = (select_classes(s, data.classes, num_classes) for s in (train, val, test))
        num_classes = len(data.classes)
    if data.samples_per_class is not None:
        train = train.take(first_per_class(train.y, data.samples_per_class, data.split.seed))
    _check_splits(train, val, test)
    if data.num_classes is None and raw.names is None:
        _check_classes_present(train.y, num_classes)
    if names is None or len(names) != num_classes:
        names = [str(c) for c in range(num_classes)]
    return Dataset(train, val, test, num_classes, names, skipped=list(raw.skipped))


def _regression_dataset(data: S.Data, train: Split, val: Split | None, test: Split | None,
                        names: list[str] | None) -> Dataset:
    """A regression data set: random (unstratified) splits of float targets (N, k)."""
    k = train.y.shape[1]
    for split_name, split in (("val", val), ("test", test)):
        if split is not None and split.y.shape[1] != k:
            raise DataError(f"data: {split_name} has {split.y.shape[1]} targets per sample, train {k}")
    train, val, test = _split_missing(train, val, test, data.split, stratify=False)
    _check_splits(train, val, test)
    if names is None or len(names) != k:
        names = ["target"] if k == 1 else [f"target_{i}" for i in range(k)]
    return Dataset(train, val, test, k, names, task="regression")


def _split_missing(train: Split, val: Split | None, test: Split | None, cfg: S.Split,
                   stratify: bool) -> tuple[Split, Split, Split]:
    """Split off the test part, then val, where the source did not give them."""
    if test is None:
        keep, held = stratified_split(train.y, cfg.test, cfg.seed, stratify=stratify)
        train, test = train.take(keep), train.take(held)
    if val is None:
        keep, held = stratified_split(train.y, cfg.val, cfg.seed, stratify=stratify)
        train, val = train.take(keep), train.take(held)
    return train, val, test


def _check_classes_present(y: np.ndarray, num_classes: int) -> None:
    """Integer labels 0..K-1 where some class has no training sample are almost always a
    stray label (a 57 among 0–9 would build a 58-class model): refuse them, unless the
    recipe names the classes (``data.num_classes``)."""
    counts = np.bincount(y, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty) == 0:
        return
    top = int(y.max())
    shown = (f"{empty[0]}..{empty[-1]}" if len(empty) > 3 and empty[-1] - empty[0] + 1 == len(empty)
             else ", ".join(str(c) for c in empty[:5]) + (" …" if len(empty) > 5 else ""))
    raise DataError(f"data: labels run 0..{top} but {len(empty)} of those {num_classes} classes "
                    f"have no training sample ({shown}; label {top} appears {counts[top]} "
                    f"time{'s' if counts[top] != 1 else ''}); fix the labels, or set "
                    f"data.num_classes to keep the empty classes")


def _check_splits(train: Split, val: Split, test: Split) -> None:
    for split_name, split in (("val", val), ("test", test)):
        if split.image_shape != train.image_shape:
            raise DataError(
                f"data: {split_name} images have shape {split.image_shape}, train {train.image_shape}"
            )
    if len(train) == 0:
        raise DataError("data: the training split is empty")
