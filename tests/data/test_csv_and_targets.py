"""The CSV source (labels, class names, per-sample costs, own split) and regression targets."""

import numpy as np
import pytest
from PIL import Image

from kcnn.data.sources import load_dataset
from kcnn.errors import DataError
from kcnn.recipes.schema import Data


def _images(folder, n, size=6):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def _csv_data(path, task="classification", split=None, **source):
    return Data(task=task, split=split or {}, source={
        "type": "csv", "path": str(path), "image_size": [6, 6], "color_mode": "grayscale", **source})


def test_csv_class_names_costs_and_own_split(tmp_path):
    names = _images(tmp_path / "img", 12)
    labels = ["cat", "dog", "ant"] * 4
    parts = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    rows = [(f"img/{n}", lab, i + 1, p) for i, (n, lab, p) in enumerate(zip(names, labels, parts))]
    csv = _write_csv(tmp_path / "data.csv", ["image", "label", "cost", "split"], rows)
    d = load_dataset(_csv_data(csv, weight_column="cost", split_column="split"))
    assert d.class_names == ["ant", "cat", "dog"]  # sorted names give the indices
    np.testing.assert_array_equal(d.train.y, [1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(d.train.w, [1, 2, 3, 4, 5, 6])
    assert (len(d.train), len(d.val), len(d.test)) == (6, 3, 3)
    assert d.input_shape == (6, 6, 1) and d.train.images().dtype == np.uint8
    expected = np.asarray(Image.open(tmp_path / "img" / names[6]))
    np.testing.assert_array_equal(d.val.images([0])[0, ..., 0], expected)


def test_csv_integer_labels_root_and_stratified_split(tmp_path):
    names = _images(tmp_path / "pics", 20)
    rows = [(n, i % 2) for i, n in enumerate(names)]
    (tmp_path / "meta").mkdir()
    csv = _write_csv(tmp_path / "meta" / "d.csv", ["file", "y"], rows)
    d = load_dataset(_csv_data(csv, image_column="file", label_column="y", root="../pics",
                               split={"val": 0.2, "test": 0.2}))
    assert d.num_classes == 2 and d.class_names == ["0", "1"]
    assert len(d.train) + len(d.val) + len(d.test) == 20
    assert np.bincount(d.test.y).tolist() == [2, 2]  # stratified


@pytest.mark.parametrize("header,row,source,match", [
    (["image", "lbl"], ["img/img0.png", 0], {}, r"label_column: no column 'label' \(columns: image, lbl\)"),
    (["image", "label"], ["img/nope.png", 0], {}, r"line 2: image file not found: .*nope.png"),
    (["image", "label", "w"], ["img/img0.png", 0, "abc"], {"weight_column": "w"},
     r"line 2: 'w' must be a number \(got 'abc'\)"),
    (["image", "label", "w"], ["img/img0.png", 0, -1], {"weight_column": "w"}, r"'w' must be finite and >= 0"),
    (["image", "label", "s"], ["img/img0.png", 0, "holdout"], {"split_column": "s"},
     r"line 2: 's' must be train, val or test \(got 'holdout'\)"),
    (["image", "label"], ["img/img0.png", ""], {}, r"line 2: empty 'label'"),
    (["image", "a", "b"], ["img/img0.png", 0, 1], {"label_column": ["a", "b"]},
     r"classification takes one label column"),
])
def test_csv_errors(tmp_path, header, row, source, match):
    _images(tmp_path / "img", 1)
    csv = _write_csv(tmp_path / "d.csv", header, [row, row])
    with pytest.raises(DataError, match=match):
        load_dataset(_csv_data(csv, **source))


def test_csv_missing_file_and_no_rows(tmp_path):
    with pytest.raises(DataError, match="CSV file not found"):
        load_dataset(_csv_data(tmp_path / "missing.csv"))
    empty = _write_csv(tmp_path / "e.csv", ["image", "label"], [])
    with pytest.raises(DataError, match="header but no rows"):
        load_dataset(_csv_data(empty))


def test_csv_regression_targets(tmp_path):
    names = _images(tmp_path / "img", 10)
    rows = [(f"img/{n}", i * 0.5, -i) for i, n in enumerate(names)]
    csv = _write_csv(tmp_path / "r.csv", ["image", "a", "b"], rows)
    d = load_dataset(_csv_data(csv, task="regression", label_column=["a", "b"],
                               split={"val": 0.2, "test": 0.2}))
    assert d.is_regression and d.num_classes == 2 and d.class_names == ["a", "b"]
    assert d.class_counts is None
    every = np.concatenate([d.train.y, d.val.y, d.test.y])
    assert every.dtype == np.float32 and every.shape == (10, 2)
    np.testing.assert_allclose(np.sort(every[:, 0]), np.arange(10) * 0.5)
    np.testing.assert_allclose(every[:, 1], -2 * every[:, 0])  # rows stay together
    bad = _write_csv(tmp_path / "bad.csv", ["image", "a"], [(f"img/{names[0]}", "x")] * 2)
    with pytest.raises(DataError, match=r"line 2: 'a' must be a number"):
        load_dataset(_csv_data(bad, task="regression", label_column="a"))


def _npz_regression(tmp_path, y, **extra):
    path = tmp_path / "r.npz"
    np.savez(path, x=np.zeros((len(y), 4, 4), "float32"), y=y, **extra)
    return Data(task="regression", source={"type": "npz", "path": str(path)})


def test_npz_regression_vector_becomes_one_column_and_split_is_random(tmp_path):
    y = np.arange(40, dtype="float64")
    d = load_dataset(_npz_regression(tmp_path, y))
    assert d.train.y.shape[1] == 1 and d.class_names == ["target"] and d.num_classes == 1
    assert (len(d.train), len(d.val), len(d.test)) == (27, 3, 10)
    every = np.sort(np.concatenate([d.train.y, d.val.y, d.test.y])[:, 0])
    np.testing.assert_array_equal(every, y)  # each sample in exactly one split
    assert not np.array_equal(np.sort(d.test.y[:, 0]), y[-10:])  # shuffled, not a tail
    assert np.array_equal(load_dataset(_npz_regression(tmp_path, y)).test.y, d.test.y)  # seeded


def test_npz_regression_target_names_and_errors(tmp_path):
    d = load_dataset(_npz_regression(tmp_path, np.ones((8, 3)), target_names=np.array(["u", "v", "w"])))
    assert d.class_names == ["u", "v", "w"]
    with pytest.raises(DataError, match="must be finite"):
        load_dataset(_npz_regression(tmp_path, np.array([1.0, np.nan, 2.0, 3.0])))
    with pytest.raises(DataError, match=r"shape \(N,\) or \(N, k\)"):
        load_dataset(_npz_regression(tmp_path, np.ones((4, 2, 2))))
