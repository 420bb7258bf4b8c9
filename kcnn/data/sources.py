"""Data sources → in-memory train/val/test arrays with a deterministic stratified split.

Every source returns images as ``(N, H, W, C)`` arrays (uint8 or float32, raw
pixel values: rescaling and standardization are part of the model) and integer
labels ``(N,)``, or, under ``data.task: regression``, float32 targets ``(N, k)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kcnn.errors import DataError
from kcnn.recipes import schema as S

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclasses.dataclass
class Split:
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray | None = None  # per-sample weight (cost) for the loss; None: all 1

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> Split:
        """The samples at ``idx`` (weights included)."""
        return Split(self.x[idx], self.y[idx], None if self.w is None else self.w[idx])


@dataclasses.dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    num_classes: int  # regression: the number of targets (the model's output width)
    class_names: list[str]  # regression: the target names
    task: str = "classification"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.train.x.shape[1:])

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


# ----------------------------------------------------------------------------- sources
def _digits(src: S.DigitsSource, task: str):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype("float32")[..., None]  # values 0..16
    if src.resize:
        x = _resize(x, src.resize)
    return x, bunch.target.astype("int64"), None, None, [str(c) for c in range(10)]


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    import keras

    out = keras.ops.image.resize(x, (size, size), interpolation="bilinear", antialias=False)
    return np.asarray(keras.ops.convert_to_numpy(out), dtype="float32")


def _npz(src: S.NpzSource, task: str):
    path = Path(src.path)
    if not path.is_file():
        raise DataError(f"data.source.path: npz file not found: {path}")
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except Exception as err:
        raise DataError(f"{path}: cannot read npz file ({err})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: missing array {key!r} (found: {', '.join(sorted(arrays))})")
    convert = _targets if task == "regression" else _labels

    def pair(xk: str, yk: str):
        if (xk in arrays) != (yk in arrays):
            raise DataError(f"{path}: {xk!r} and {yk!r} must be given together")
        if xk not in arrays:
            return None
        x, y = _images(arrays[xk], f"{path}: {xk}"), np.asarray(arrays[yk])
        if len(x) != len(y):
            raise DataError(f"{path}: {xk!r} has {len(x)} samples but {yk!r} has {len(y)}")
        return Split(x, convert(y, f"{path}: {yk}"))

    main, val, test = pair("x", "y"), pair("x_val", "y_val"), pair("x_test", "y_test")
    name_key = "target_names" if task == "regression" else "class_names"
    names = [str(n) for n in arrays[name_key]] if name_key in arrays else None
    return main.x, main.y, val, test, names, _sample_weights(arrays, len(main), path)


def _sample_weights(arrays: dict[str, np.ndarray], n: int, path: Path) -> np.ndarray | None:
    """The optional per-sample cost vector of the main arrays: ``w`` or ``cost``, shape (N,)."""
    keys = [k for k in ("w", "cost") if k in arrays]
    if not keys:
        return None
    if len(keys) > 1:
        raise DataError(f"{path}: give per-sample weights as 'w' or 'cost', not both")
    w = np.asarray(arrays[keys[0]])
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.shape != (n,) or w.dtype.kind not in "iuf":
        raise DataError(f"{path}: {keys[0]!r} must be {n} numbers, one per sample of 'x' (got shape {w.shape}, dtype {w.dtype})")
    return _check_costs(w, f"{path}: {keys[0]!r}")


def _check_costs(w: np.ndarray, where: str) -> np.ndarray:
    """Per-sample costs as float32: finite, >= 0 and not all zero."""
    w = np.asarray(w, dtype="float32")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise DataError(f"{where} must be finite and >= 0 (per-sample costs)")
    if not np.any(w > 0):
        raise DataError(f"{where} is all zeros: no sample would count")
    return w


def _images(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{where}: expected images of shape (N, H, W[, C]) (got {x.shape})")
    if x.dtype != np.uint8:
        x = x.astype("float32")
    return x


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y).reshape(-1) if np.asarray(y).ndim == 2 and np.asarray(y).shape[1] == 1 else y
    if y.ndim != 1:
        raise DataError(f"{where}: expected integer labels of shape (N,) (got {y.shape})")
    if y.dtype.kind == "f":
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"{where}: labels must be integers (got non-integer values)")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{where}: labels must be integers (got dtype {y.dtype})")
    return y.astype("int64")


def _targets(y: np.ndarray, where: str) -> np.ndarray:
    """Regression targets as float32 ``(N, k)``: a vector becomes one column."""
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] == 0:
        raise DataError(f"{where}: expected regression targets of shape (N,) or (N, k) (got {y.shape})")
    if y.dtype.kind not in "iuf":
        raise DataError(f"{where}: regression targets must be numbers (got dtype {y.dtype})")
    y = y.astype("float32")
    if not np.all(np.isfinite(y)):
        raise DataError(f"{where}: regression targets must be finite (found NaN or inf)")
    return y


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_image(path: Path, src: S.DirectorySource | S.CsvSource) -> np.ndarray:
    """One image file as a uint8 (H, W, C) array of the source's size and colour mode."""
    import keras

    try:
        img = keras.utils.load_img(path, color_mode=src.color_mode, target_size=tuple(src.image_size))
    except Exception as err:
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None
    return np.asarray(keras.utils.img_to_array(img), dtype="uint8")


def _load_folder(root: Path, classes: list[str], src: S.DirectorySource) -> Split:
    xs, ys = [], []
    for label, name in enumerate(classes):
        folder = root / name
        files = (
            sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if folder.is_dir()
            else []
        )
        if not files:
            raise DataError(f"{folder}: class folder {name!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
        for f in files:
            xs.append(_load_image(f, src))
            ys.append(label)
    return Split(np.stack(xs), np.asarray(ys, dtype="int64"))


def _directory(src: S.DirectorySource, task: str):
    root = Path(src.path)
    if not root.is_dir():
        raise DataError(f"data.source.path: image folder not found: {root}")
    own = {p.name for p in _class_folders(root)} & {"train", "val", "test"}
    base = root / "train" if "train" in own else root
    classes = [p.name for p in _class_folders(base)]
    if not classes:
        raise DataError(f"{base}: no class sub-folders found (expected {base}/<class>/<image>)")
    train = _load_folder(base, classes, src)
    val = _load_folder(root / "val", classes, src) if "val" in own else None
    test = _load_folder(root / "test", classes, src) if "test" in own else None
    return train.x, train.y, val, test, classes


def _keras(src: S.KerasSource, task: str):
    import keras

    module = getattr(keras.datasets, src.name)
    try:
        (x, y), (xt, yt) = module.load_data()
    except Exception as err:
        raise DataError(f"data.source: could not load keras dataset {src.name!r} ({err})") from None
    return _images(x, src.name), _labels(y, src.name), None, Split(_images(xt, src.name), _labels(yt, src.name)), None


_SPLIT_NAMES = ("train", "val", "test")


def _csv(src: S.CsvSource, task: str):
    """Rows of (image path, label or targets[, cost][, split]); see :class:`S.CsvSource`."""
    import csv

    path = Path(src.path)
    if not path.is_file():
        raise DataError(f"data.source.path: CSV file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read CSV file ({err})") from None
    label_columns = [src.label_column] if isinstance(src.label_column, str) else list(src.label_column)
    if task != "regression" and len(label_columns) != 1:
        raise DataError(f"{path}: data.source.label_column: classification takes one label column "
                        f"(got {label_columns})")
    wanted = [("image_column", src.image_column)] + [("label_column", c) for c in label_columns]
    wanted += [(k, getattr(src, k)) for k in ("weight_column", "split_column") if getattr(src, k)]
    for key, column in wanted:
        if column not in columns:
            raise DataError(f"{path}: data.source.{key}: no column {column!r} "
                            f"(columns: {', '.join(columns) or 'none'})")
    if not rows:
        raise DataError(f"{path}: the CSV file has a header but no rows")

    def cell(i: int, column: str) -> str:
        value = (rows[i].get(column) or "").strip()
        if not value:
            raise DataError(f"{path}: line {i + 2}: empty {column!r}")
        return value

    def number(i: int, column: str) -> float:
        try:
            return float(cell(i, column))
        except ValueError:
            raise DataError(f"{path}: line {i + 2}: {column!r} must be a number "
                            f"(got {cell(i, column)!r})") from None

    root = Path(src.root).expanduser() if src.root else path.parent
    root = root if root.is_absolute() else path.parent / root
    images = []
    for i in range(len(rows)):
        file = root / cell(i, src.image_column)
        if not file.is_file():
            raise DataError(f"{path}: line {i + 2}: image file not found: {file}")
        images.append(_load_image(file, src))
    x = np.stack(images)
    names = None
    if task == "regression":
        y = np.asarray([[number(i, c) for c in label_columns] for i in range(len(rows))], "float32")
        y, names = _targets(y, f"{path}: {', '.join(label_columns)}"), label_columns
    else:
        raw = [cell(i, label_columns[0]) for i in range(len(rows))]
        try:
            y = np.asarray([int(v) for v in raw], dtype="int64")
        except ValueError:  # class names: sorted, like the directory source's folders
            names = sorted(set(raw))
            y = np.asarray([names.index(v) for v in raw], dtype="int64")
    w = None
    if src.weight_column:
        w = _check_costs(np.asarray([number(i, src.weight_column) for i in range(len(rows))]),
                         f"{path}: {src.weight_column!r}")
    if not src.split_column:
        return x, y, None, None, names, w
    part = np.asarray([cell(i, src.split_column).lower() for i in range(len(rows))])
    bad = np.flatnonzero(~np.isin(part, _SPLIT_NAMES))
    if len(bad):
        raise DataError(f"{path}: line {bad[0] + 2}: {src.split_column!r} must be train, val or test "
                        f"(got {str(part[bad[0]])!r})")
    whole = Split(x, y, w)
    splits = {name: whole.take(np.flatnonzero(part == name)) for name in _SPLIT_NAMES}
    if len(splits["train"]) == 0:
        raise DataError(f"{path}: no row has {src.split_column!r} = train")
    main = splits["train"]
    val, test = (splits[n] if len(splits[n]) else None for n in ("val", "test"))
    return main.x, main.y, val, test, names, main.w


_SOURCES = {"digits": _digits, "npz": _npz, "directory": _directory, "keras": _keras, "csv": _csv}


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


def load_dataset(data: S.Data) -> Dataset:
    """Load the recipe's source and split it.

    A source without its own test split loses ``split.test`` of each class to
    the test set (``random_state=split.seed``; for digits with the defaults this
    is scikit-learn's usual 25% stratified split with ``random_state=0``); val is
    then split off the rest the same way. ``data.long_tail`` then subsamples the
    training split only. Per-sample weights (npz ``w``/``cost``) follow their samples.
    """
    x, y, val, test, names, *weights = _SOURCES[data.source.type](data.source, data.task)
    if data.task == "regression":
        return _regression_dataset(data, Split(x, y, weights[0] if weights else None), val, test, names)
    given = [("train", y)] + [(n, s.y) for n, s in (("val", val), ("test", test)) if s is not None]
    num_classes = data.num_classes or int(max(labels.max(initial=-1) for _, labels in given) + 1)
    for split_name, labels in given:
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if len(bad):
            raise DataError(
                f"data: {split_name} label {bad[0]} is outside 0..{num_classes - 1} "
                f"(data.num_classes = {num_classes})"
            )
    train, val, test = _split_missing(Split(x, y, weights[0] if weights else None), val, test,
                                      data.split, stratify=True)
    if data.long_tail is not None:
        train = train.take(long_tail_indices(train.y, num_classes, data.long_tail))
    if data.classes is not None:
        names = [(names[c] if names and c < len(names) else str(c)) for c in data.classes]
        train, val, test = (select_classes(s, data.classes, num_classes) for s in (train, val, test))
        num_classes = len(data.classes)
    if data.samples_per_class is not None:
        train = train.take(first_per_class(train.y, data.samples_per_class, data.split.seed))
    _check_splits(train, val, test)
    if names is None or len(names) != num_classes:
        names = [str(c) for c in range(num_classes)]
    return Dataset(train, val, test, num_classes, names)


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


def _check_splits(train: Split, val: Split, test: Split) -> None:
    for split_name, split in (("val", val), ("test", test)):
        if split.x.shape[1:] != train.x.shape[1:]:
            raise DataError(
                f"data: {split_name} images have shape {split.x.shape[1:]}, train {train.x.shape[1:]}"
            )
    if len(train) == 0:
        raise DataError("data: the training split is empty")
