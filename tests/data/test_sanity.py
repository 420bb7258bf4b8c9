"""Data sanity at load, before anything is written: non-finite pixels, stray labels,
images too large for memory; and ``kcnn recipe validate --data``."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from kcnn.cli.main import app
from kcnn.data.sources import check_batch_memory, load_dataset
from kcnn.errors import DataError
from kcnn.recipes import loads


def npz_recipe(path, extra: str = "") -> str:
    return (f"name: n\ndata:\n  source: {{type: npz, path: {path}}}\n{extra}"
            f"model: {{name: simple_cnn}}\n")


def test_non_finite_pixels_are_counted_and_refused(tmp_path):
    x = np.random.default_rng(0).random((40, 8, 8, 1)).astype("float32")
    x[3, 0, 0, 0] = np.nan
    x[7, 1:3, 2, 0] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 4)
    with pytest.raises(DataError, match=r"d.npz: 'x' has 3 non-finite pixel values \(NaN or "
                                        r"inf\) in 2 images"):
        load_dataset(loads(npz_recipe(tmp_path / "d.npz")).data)


def test_a_stray_label_is_refused_unless_classes_are_named(tmp_path):
    y = np.arange(200) % 10
    y[17] = 57
    np.savez(tmp_path / "d.npz", x=np.zeros((200, 8, 8, 1), "float32"), y=y)
    with pytest.raises(DataError, match=r"labels run 0\.\.57 but 47 of those 58 classes have no "
                                        r"training sample \(10\.\.56; label 57 appears 1 time\)"):
        load_dataset(loads(npz_recipe(tmp_path / "d.npz")).data)
    named = load_dataset(loads(npz_recipe(tmp_path / "d.npz", "  num_classes: 58\n")).data)
    assert named.num_classes == 58


def test_an_image_size_that_cannot_fit_is_refused_with_the_estimate(tmp_path):
    (tmp_path / "a").mkdir()
    recipe = loads(f"name: big\ndata:\n  source: {{type: directory, path: {tmp_path}, "
                   f"image_size: [60000, 60000]}}\nmodel: {{name: simple_cnn}}\n")
    with pytest.raises(DataError, match=r"data.source.image_size: images of 60000×60000×3 need "
                                        r"about [0-9,.]+ GiB per batch of 32 .* GiB is available"):
        check_batch_memory(recipe.data, 32)
    small = loads(f"name: ok\ndata:\n  source: {{type: directory, path: {tmp_path}, "
                  f"image_size: [64, 64]}}\nmodel: {{name: simple_cnn}}\n")
    check_batch_memory(small.data, 32)  # 64×64 fits


def test_recipe_validate_data_checks_paths_and_classes(tmp_path):
    good = tmp_path / "good.yaml"
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "b").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "1.png").write_bytes(b"")
    good.write_text(f"name: g\ndata: {{source: {{type: directory, path: {tmp_path / 'imgs'}}}}}\n"
                    f"model: {{name: simple_cnn}}\n")
    runner = CliRunner()
    assert runner.invoke(app, ["recipe", "validate", str(good)]).exit_code == 0  # schema only
    result = runner.invoke(app, ["recipe", "validate", "--data", str(good)])
    assert result.exit_code == 2
    assert "class folder 'b' has no images" in result.output
    (tmp_path / "imgs" / "b" / "2.jpg").write_bytes(b"")
    result = runner.invoke(app, ["recipe", "validate", "--data", str(good)])
    assert result.exit_code == 0 and "(data: 2 classes, 2 image files)" in result.output
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: m\ndata: {source: {type: directory, path: nowhere}}\n"
                       "model: {name: simple_cnn}\n")
    result = runner.invoke(app, ["recipe", "validate", "--data", str(missing)])
    assert result.exit_code == 2 and "image folder not found" in result.output
