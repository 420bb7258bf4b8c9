"""Data sources, splits and their error messages."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from kcnn.data.sources import load_dataset
from kcnn.errors import DataError
from kcnn.recipes.schema import Data


def data_cfg(**source):
    return Data(source=source)


def test_digits_test_split_is_sklearns_25_percent_random_state_0():
    d = load_dataset(data_cfg(type="digits"))
    bunch = load_digits()
    _, x_test, _, y_test = train_test_split(
        bunch.images, bunch.target, test_size=0.25, stratify=bunch.target, random_state=0
    )
    assert len(d.test) == 450
    np.testing.assert_array_equal(np.sort(d.test.y), np.sort(y_test))
    # same images, in index order
    ours = {x.tobytes() for x in d.test.x[..., 0].astype("float64")}
    theirs = {x.tobytes() for x in x_test.astype("float64")}
    assert ours == theirs
    assert len(d.train) + len(d.val) == 1347 and len(d.val) == 135
    assert d.num_classes == 10 and d.input_shape == (8, 8, 1)


def test_digits_resize():
    d = load_dataset(data_cfg(type="digits", resize=16))
    assert d.input_shape == (16, 16, 1)
    assert 0 <= d.train.x.min() and d.train.x.max() <= 16.0 + 1e-4


def test_splits_are_stratified_and_disjoint():
    d = load_dataset(data_cfg(type="digits"))
    share = np.bincount(load_digits().target) / 1797
    for split in (d.val, d.test):
        counts = np.bincount(split.y, minlength=10)
        assert np.abs(counts - share * len(split)).max() <= 1.0
    assert len(d.train) + len(d.val) + len(d.test) == 1797


def test_npz_source_and_own_split(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.random((40, 6, 6)), y=np.arange(40) % 4,
             x_test=rng.random((8, 6, 6)), y_test=np.arange(8) % 4)
    d = load_dataset(data_cfg(type="npz", path=str(path)))
    assert d.input_shape == (6, 6, 1) and d.num_classes == 4
    assert len(d.test) == 8 and len(d.train) + len(d.val) == 40


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"x": np.zeros((4, 3, 3))}, "missing array 'y'"),
        ({"y": np.zeros(4)}, "missing array 'x'"),
        ({"x": np.zeros((4, 3, 3)), "y": np.zeros(5)}, "'x' has 4 samples but 'y' has 5"),
        ({"x": np.zeros((4, 3, 3)), "y": np.array([0, 1, 0.5, 1])}, "labels must be integers"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_dataset(data_cfg(type="npz", path=str(path)))
    assert "bad.npz" in str(info.value)


def test_labels_outside_num_classes(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((20, 3, 3)), y=np.arange(20) % 5)
    cfg = Data(source={"type": "npz", "path": str(path)}, num_classes=3)
    with pytest.raises(DataError, match=r"label [34] is outside 0..2"):
        load_dataset(cfg)


def test_negative_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((20, 3, 3)), y=(np.arange(20) % 3) - 1)
    with pytest.raises(DataError, match=r"label -1 is outside"):
        load_dataset(data_cfg(type="npz", path=str(path)))


def _png(path, value, size=(5, 5)):
    from PIL import Image

    Image.fromarray(np.full(size + (3,), value, dtype="uint8")).save(path)


def test_directory_source(tmp_path):
    for c, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(6):
            _png(tmp_path / name / f"{i}.png", 40 * c + i)
    d = load_dataset(Data(source={"type": "directory", "path": str(tmp_path), "image_size": [4, 4]},
                          split={"val": 0.2, "test": 0.2}))
    assert d.class_names == ["cat", "dog"] and d.input_shape == (4, 4, 3)
    assert len(d.train) + len(d.val) + len(d.test) == 12
    assert d.train.images().dtype == np.uint8


def test_directory_empty_class_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _png(tmp_path / "a" / "0.png", 1)
    with pytest.raises(DataError, match=r"class folder 'b' has no images"):
        load_dataset(Data(source={"type": "directory", "path": str(tmp_path)}))


def test_directory_unreadable_image(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken.png: unreadable image"):
        load_dataset(Data(source={"type": "directory", "path": str(tmp_path)}))


def test_directory_missing(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        load_dataset(Data(source={"type": "directory", "path": str(tmp_path / "none")}))
