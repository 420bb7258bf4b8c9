"""Data sources, registered by the name a recipe's ``data.source.type`` uses.

Each source is a class built from the recipe's whole ``data`` section with two
methods:

* :meth:`Source.load` reads the samples and splits them (:func:`kcnn.data.dataset.assemble`)
  into the :class:`~kcnn.data.dataset.Dataset` the engine trains on;
* :meth:`Source.shape` tells the input shape and the output width (classes, or
  targets under regression) as cheaply as it can, without decoding images
  (``kcnn info RECIPE``).

| type        | reads                                                               |
|-------------|---------------------------------------------------------------------|
| `digits`    | scikit-learn's bundled 8×8 digits (pixels 0–16)                     |
| `npz`       | ``x``/``y`` arrays (+ ``x_val``/``x_test``, ``w``/``cost``, names)  |
| `directory` | ``root/<class>/<image>`` (or ``root/{train,val,test}/<class>/…``)   |
| `csv`       | rows of image path, label or targets, optional cost and split       |
| `keras`     | ``keras.datasets`` (mnist, fashion_mnist, cifar10, cifar100)        |
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kcnn.data.dataset import Dataset, FileSplit, SourceData, Split, assemble
from kcnn.errors import DataError
from kcnn.recipes import schema as S
from kcnn.registry import Registry

__all__ = ["SOURCES", "Dataset", "Source", "Split", "load_dataset", "make_source"]

_SPLIT_NAMES = ("train", "val", "test")

SOURCES: Registry[type[Source]] = Registry("data source")


class Source:
    """One kind of data source. Subclasses set ``type`` and implement :meth:`read`."""

    type: ClassVar[str]

    def __init__(self, data: S.Data):
        self.data = data
        self.cfg = data.source
        self.task = data.task

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    def read(self) -> SourceData:
        """The samples as the source has them, before splitting."""
        raise NotImplementedError

    def load(self) -> Dataset:
        """Read and split (file-backed splits get their decoded cache, ``data.cache``):
        the data set the engine trains on."""
        from kcnn.data.cache import attach_cache

        return attach_cache(assemble(self.data, self.read()), self.data.cache, self.data.cache_dir)

    def shape(self, need_outputs: bool = True) -> tuple[tuple[int, ...], int | None]:
        """(input shape, output width); the width may be None when ``need_outputs`` is false."""
        raise NotImplementedError

    def check(self) -> str:
        """Cheap checks that the data is there (no image is decoded): a one-line summary, or
        a :class:`DataError` (``kcnn recipe validate --data``)."""
        shape, outputs = self.shape(need_outputs=True)
        return f"{'×'.join(map(str, shape))} images, {outputs} outputs"


def make_source(data: S.Data) -> Source:
    return SOURCES.get(data.source.type)(data)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), if known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_batch_memory(data: S.Data, batch_size: int) -> None:
    """Refuse an image size whose training batch cannot fit in memory, before anything is
    read: per image the decoded uint8 copy, the float32 batch and its augmented copy."""
    shape, _ = make_source(data).shape(need_outputs=False)
    per_image = int(np.prod(shape)) * (1 + 4 + 4)
    need = per_image * batch_size
    free = available_memory()
    if free is not None and need > free // 2:
        where = ("data.source.image_size" if data.source.type in ("directory", "csv")
                 else "data.source.resize")
        raise DataError(f"{where}: images of {'×'.join(map(str, shape))} need about "
                        f"{need / 2**30:,.1f} GiB per batch of {batch_size} before the model's own "
                        f"activations, and {free / 2**30:,.1f} GiB is available; use a smaller "
                        f"image size or train.batch_size")


def load_dataset(data: S.Data) -> Dataset:
    """The recipe's data, read and split (see :func:`kcnn.data.dataset.assemble`)."""
    return make_source(data).load()


# ----------------------------------------------------------------------------- value checks
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


def _check_costs(w: np.ndarray, where: str) -> np.ndarray:
    """Per-sample costs as float32: finite, >= 0 and not all zero."""
    w = np.asarray(w, dtype="float32")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise DataError(f"{where} must be finite and >= 0 (per-sample costs)")
    if not np.any(w > 0):
        raise DataError(f"{where} is all zeros: no sample would count")
    return w


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    import keras

    out = keras.ops.image.resize(x, (size, size), interpolation="bilinear", antialias=False)
    return np.asarray(keras.ops.convert_to_numpy(out), dtype="float32")


def _file_split(cfg: S.DirectorySource | S.CsvSource, files: list[str], y: np.ndarray,
                w: np.ndarray | None, where: str) -> tuple[FileSplit, list[tuple[str, str]]]:
    """Header-check ``files`` and build the split; unreadable files stop here (one line)
    or are left out (``on_bad_image: skip``) and returned as ``(file, reason)``."""
    from kcnn.data.images import check_files

    ok, native, bad = check_files(files, f"checking {where}")
    if bad and cfg.on_bad_image == "error":
        path, reason = bad[0]
        more = f" ({len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        raise DataError(f"{path}: {reason}{more}; fix or remove it, or set "
                        f"data.source.on_bad_image: skip")
    keep = np.flatnonzero(ok)
    split = FileSplit(np.asarray(files, dtype=object)[keep], y[keep],
                      None if w is None else w[keep], tuple(cfg.image_size),
                      3 if cfg.color_mode == "rgb" else 1, native=native[keep])
    return split, bad


def _file_image_shape(src: S.DirectorySource | S.CsvSource) -> tuple[int, ...]:
    return (*src.image_size, 3 if src.color_mode == "rgb" else 1)


# ----------------------------------------------------------------------------- digits
@SOURCES.register("digits")
class DigitsSource(Source):
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, pixels 0–16)."""

    type = "digits"

    def read(self) -> SourceData:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = bunch.images.astype("float32")[..., None]  # values 0..16
        if self.cfg.resize:
            x = _resize(x, self.cfg.resize)
        return SourceData(Split(x, bunch.target.astype("int64")), names=[str(c) for c in range(10)])

    def shape(self, need_outputs: bool = True):
        side = self.cfg.resize or 8
        return (side, side, 1), 10


# ----------------------------------------------------------------------------- npz
@SOURCES.register("npz")
class NpzSource(Source):
    """Arrays in an ``.npz`` file; see :class:`kcnn.recipes.schema.NpzSource`."""

    type = "npz"

    @property
    def path(self) -> Path:
        path = Path(self.cfg.path)
        if not path.is_file():
            raise DataError(f"data.source.path: npz file not found: {path}")
        return path

    def read(self) -> SourceData:
        path = self.path
        try:
            arrays = dict(np.load(path, allow_pickle=False))
        except Exception as err:
            raise DataError(f"{path}: cannot read npz file ({err})") from None
        for key in ("x", "y"):
            if key not in arrays:
                raise DataError(f"{path}: missing array {key!r} (found: {', '.join(sorted(arrays))})")
        main, val, test = (self._pair(arrays, xk, yk) for xk, yk in
                           (("x", "y"), ("x_val", "y_val"), ("x_test", "y_test")))
        main.w = self._sample_weights(arrays, len(main))
        name_key = "target_names" if self.regression else "class_names"
        names = [str(n) for n in arrays[name_key]] if name_key in arrays else None
        return SourceData(main, val, test, names)

    def _pair(self, arrays: dict[str, np.ndarray], xk: str, yk: str) -> Split | None:
        path = self.cfg.path
        if (xk in arrays) != (yk in arrays):
            raise DataError(f"{path}: {xk!r} and {yk!r} must be given together")
        if xk not in arrays:
            return None
        x, y = _images(arrays[xk], f"{path}: {xk}"), np.asarray(arrays[yk])
        if x.dtype.kind == "f":
            bad = int(x.size - np.count_nonzero(np.isfinite(x)))
            if bad:
                raise DataError(f"{path}: {xk!r} has {bad:,} non-finite pixel values (NaN or "
                                f"inf) in {int(np.any(~np.isfinite(x.reshape(len(x), -1)), axis=1).sum()):,} "
                                f"images; clean or drop them")
        if len(x) != len(y):
            raise DataError(f"{path}: {xk!r} has {len(x)} samples but {yk!r} has {len(y)}")
        convert = _targets if self.regression else _labels
        return Split(x, convert(y, f"{path}: {yk}"))

    def _sample_weights(self, arrays: dict[str, np.ndarray], n: int) -> np.ndarray | None:
        """The optional per-sample cost vector of the main arrays: ``w`` or ``cost``, shape (N,)."""
        path = self.cfg.path
        keys = [k for k in ("w", "cost") if k in arrays]
        if not keys:
            return None
        if len(keys) > 1:
            raise DataError(f"{path}: give per-sample weights as 'w' or 'cost', not both")
        w = np.asarray(arrays[keys[0]])
        if w.ndim == 2 and w.shape[1] == 1:
            w = w[:, 0]
        if w.shape != (n,) or w.dtype.kind not in "iuf":
            raise DataError(f"{path}: {keys[0]!r} must be {n} numbers, one per sample of 'x' "
                            f"(got shape {w.shape}, dtype {w.dtype})")
        return _check_costs(w, f"{path}: {keys[0]!r}")

    def shape(self, need_outputs: bool = True):
        """From the ``x.npy`` header (no array is read), and ``y`` when the width is needed."""
        import zipfile

        path = self.path
        with zipfile.ZipFile(path) as zf, zf.open("x.npy") as fh:
            version = np.lib.format.read_magic(fh)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, _ = read(fh)
        shape = tuple(shape[1:]) if len(shape) == 4 else (*shape[1:], 1)
        if not need_outputs:
            return shape, None
        with np.load(path) as data:
            if self.regression:
                y = data["y"]
                return shape, 1 if y.ndim == 1 else int(y.shape[1])
            return shape, int(max(int(data[k].max()) for k in ("y", "y_val", "y_test")
                                  if k in data.files)) + 1


# ----------------------------------------------------------------------------- directory
def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


@SOURCES.register("directory")
class DirectorySource(Source):
    """``root/<class>/<image>``, or ``root/{train,val,test}/<class>/<image>``."""

    type = "directory"

    def _layout(self) -> tuple[Path, Path, set[str], list[str]]:
        """(root, the folder holding the training classes, own split folders, class names)."""
        root = Path(self.cfg.path)
        if not root.is_dir():
            raise DataError(f"data.source.path: image folder not found: {root}")
        own = {p.name for p in _class_folders(root)} & set(_SPLIT_NAMES)
        base = root / "train" if "train" in own else root
        classes = [p.name for p in _class_folders(base)]
        if not classes:
            raise DataError(f"{base}: no class sub-folders found (expected {base}/<class>/<image>)")
        return root, base, own, classes

    def read(self) -> SourceData:
        root, base, own, classes = self._layout()
        skipped: list[tuple[str, str]] = []
        parts = {}
        for name, folder in (("train", base), ("val", root / "val"), ("test", root / "test")):
            if name == "train" or name in own:
                parts[name] = self._list_folder(folder, classes, name, skipped)
        return SourceData(parts["train"], parts.get("val"), parts.get("test"), classes, skipped)

    def _list_folder(self, root: Path, classes: list[str], name: str,
                     skipped: list[tuple[str, str]]) -> FileSplit:
        """The images of ``root/<class>/`` (files listed, not decoded)."""
        from kcnn.data.images import first_names, is_image_name

        files, labels, foreign = [], [], []
        for label, cls in enumerate(classes):
            folder = root / cls
            entries = sorted(e for e in folder.iterdir() if e.is_file()
                             and not e.name.startswith(".")) if folder.is_dir() else []
            images = [str(e) for e in entries if is_image_name(e.name)]
            foreign += [str(e) for e in entries if not is_image_name(e.name)]
            if not images:
                raise DataError(f"{folder}: class folder {cls!r} has no images")
            files += images
            labels += [label] * len(images)
        if foreign and self.cfg.on_bad_image == "error":
            n = len(foreign)
            raise DataError(f"{root}: {n} {'file is' if n == 1 else 'files are'} not an image "
                            f"kcnn reads ({first_names(foreign)}); remove "
                            f"{'it' if n == 1 else 'them'} or set data.source.on_bad_image: skip")
        skipped += [(f, "not an image file kcnn reads") for f in foreign]
        split, bad = _file_split(self.cfg, files, np.asarray(labels, np.int64), None,
                                 f"{name} images")
        skipped += bad
        for label, cls in enumerate(classes):
            if not np.any(split.y == label):
                raise DataError(f"{root / cls}: class folder {cls!r} has no readable images")
        return split

    def check(self) -> str:
        from kcnn.data.images import is_image_name

        root, base, own, classes = self._layout()
        total = 0
        for name in ["train" if "train" in own else "", *sorted(own - {"train"})]:
            folder = root / name if name else base
            for cls in classes:
                count = sum(1 for e in (folder / cls).iterdir() if e.is_file()
                            and is_image_name(e.name)) if (folder / cls).is_dir() else 0
                if count == 0:
                    raise DataError(f"{folder / cls}: class folder {cls!r} has no images")
                total += count
        return f"{len(classes)} classes, {total:,} image files"

    def shape(self, need_outputs: bool = True):
        shape = _file_image_shape(self.cfg)
        if not need_outputs:
            return shape, None
        root = Path(self.cfg.path)
        if not root.is_dir():
            raise DataError(f"data.source.path: image folder not found: {root} (set "
                            f"data.num_classes or model.num_classes to analyse without it)")
        return shape, len(self._layout()[3])


# ----------------------------------------------------------------------------- csv
@SOURCES.register("csv")
class CsvSource(Source):
    """Rows of (image path, label or targets[, cost][, split]); see :class:`S.CsvSource`."""

    type = "csv"

    @property
    def label_columns(self) -> list[str]:
        column = self.cfg.label_column
        return [column] if isinstance(column, str) else list(column)

    def _rows(self) -> tuple[Path, list[dict[str, Any]]]:
        """(path, rows) with every configured column checked to exist."""
        src, path = self.cfg, Path(self.cfg.path)
        if not path.is_file():
            raise DataError(f"data.source.path: CSV file not found: {path}")
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                columns = list(reader.fieldnames or [])
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DataError(f"{path}: cannot read CSV file ({err})") from None
        labels = self.label_columns
        if not self.regression and len(labels) != 1:
            raise DataError(f"{path}: data.source.label_column: classification takes one label "
                            f"column (got {labels})")
        wanted = [("image_column", src.image_column)] + [("label_column", c) for c in labels]
        wanted += [(k, getattr(src, k)) for k in ("weight_column", "split_column") if getattr(src, k)]
        for key, column in wanted:
            if column not in columns:
                raise DataError(f"{path}: data.source.{key}: no column {column!r} "
                                f"(columns: {', '.join(columns) or 'none'})")
        if not rows:
            raise DataError(f"{path}: the CSV file has a header but no rows")
        return path, rows

    def _image_files(self, path: Path, table: _Cells) -> list[str]:
        """Every row's image path (relative to ``root``, default the CSV's folder), checked
        to exist."""
        src = self.cfg
        root = Path(src.root).expanduser() if src.root else path.parent
        root = root if root.is_absolute() else path.parent / root
        files = []
        for i in range(len(table)):
            file = root / table.cell(i, src.image_column)
            if not file.is_file():
                raise DataError(f"{path}: line {i + 2}: image file not found: {file}")
            files.append(str(file))
        return files

    def read(self) -> SourceData:
        src = self.cfg
        path, rows = self._rows()
        table = _Cells(path, rows)
        files = self._image_files(path, table)
        y, names = self._targets(table) if self.regression else self._labels(table)
        w = None
        if src.weight_column:
            w = _check_costs(np.asarray([table.number(i, src.weight_column) for i in range(len(rows))]),
                             f"{path}: {src.weight_column!r}")
        part = self._split_column(table) if src.split_column else None
        whole, skipped = _file_split(src, files, y, w, "images")
        if part is not None:
            part = part[np.isin(np.asarray(files, dtype=object), whole.files)]
        if not src.split_column:
            return SourceData(whole, names=names, skipped=skipped)
        data = self._split_by_column(path, part, whole, names)
        data.skipped = skipped
        return data

    def check(self) -> str:
        path, rows = self._rows()
        self._image_files(path, _Cells(path, rows))
        _, outputs = self.shape(need_outputs=True)
        return f"{len(rows):,} rows, {outputs} {'targets' if self.regression else 'classes'}"

    def _targets(self, table: _Cells) -> tuple[np.ndarray, list[str]]:
        columns = self.label_columns
        y = np.asarray([[table.number(i, c) for c in columns] for i in range(len(table))], "float32")
        return _targets(y, f"{table.path}: {', '.join(columns)}"), columns

    def _labels(self, table: _Cells) -> tuple[np.ndarray, list[str] | None]:
        raw = [table.cell(i, self.label_columns[0]) for i in range(len(table))]
        try:
            return np.asarray([int(v) for v in raw], dtype="int64"), None
        except ValueError:  # class names: sorted, like the directory source's folders
            names = sorted(set(raw))
            return np.asarray([names.index(v) for v in raw], dtype="int64"), names

    def _split_column(self, table: _Cells) -> np.ndarray:
        column = self.cfg.split_column
        part = np.asarray([table.cell(i, column).lower() for i in range(len(table))])
        bad = np.flatnonzero(~np.isin(part, _SPLIT_NAMES))
        if len(bad):
            raise DataError(f"{table.path}: line {bad[0] + 2}: {column!r} must be train, val or "
                            f"test (got {str(part[bad[0]])!r})")
        return part

    def _split_by_column(self, path: Path, part: np.ndarray, whole: FileSplit,
                         names) -> SourceData:
        column = self.cfg.split_column
        splits = {name: whole.take(np.flatnonzero(part == name)) for name in _SPLIT_NAMES}
        if len(splits["train"]) == 0:
            raise DataError(f"{path}: no row has {column!r} = train")
        val, test = (splits[n] if len(splits[n]) else None for n in ("val", "test"))
        return SourceData(splits["train"], val, test, names)

    def shape(self, need_outputs: bool = True):
        shape = _file_image_shape(self.cfg)
        if self.regression or not need_outputs:
            return shape, len(self.label_columns)
        path, rows = self._rows()
        values = [(row.get(self.label_columns[0]) or "").strip() for row in rows]
        try:
            return shape, max(int(v) for v in values) + 1
        except ValueError:
            return shape, len(set(values))


class _Cells:
    """Checked access to a CSV's cells, with errors that name the file, line and column."""

    def __init__(self, path: Path, rows: list[dict[str, Any]]):
        self.path, self.rows = path, rows

    def __len__(self) -> int:
        return len(self.rows)

    def cell(self, i: int, column: str) -> str:
        value = (self.rows[i].get(column) or "").strip()
        if not value:
            raise DataError(f"{self.path}: line {i + 2}: empty {column!r}")
        return value

    def number(self, i: int, column: str) -> float:
        try:
            return float(self.cell(i, column))
        except ValueError:
            raise DataError(f"{self.path}: line {i + 2}: {column!r} must be a number "
                            f"(got {self.cell(i, column)!r})") from None


# ----------------------------------------------------------------------------- keras.datasets
# Image shape and classes of the keras.datasets sources, known without downloading.
KERAS_DATASETS = {
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
}


@SOURCES.register("keras")
class KerasDatasetSource(Source):
    """A ``keras.datasets`` data set (downloaded by Keras on first use)."""

    type = "keras"

    def read(self) -> SourceData:
        import keras

        name = self.cfg.name
        module = getattr(keras.datasets, name)
        try:
            (x, y), (xt, yt) = module.load_data()
        except Exception as err:
            raise DataError(f"data.source: could not load keras dataset {name!r} ({err})") from None
        return SourceData(Split(_images(x, name), _labels(y, name)),
                          test=Split(_images(xt, name), _labels(yt, name)))

    def shape(self, need_outputs: bool = True):
        return KERAS_DATASETS[self.cfg.name]
