"""Filters, feature maps, saliency and top patches: the arrays drawn and the PNGs written."""

import keras
import numpy as np
import pytest

from kcnn.errors import KcnnError
from kcnn.viz import visualize as V
from tests.viz.conftest import png_shape, tiny_model


def kernel(model, name):
    return keras.ops.convert_to_numpy(model.get_layer(name).kernel)


def test_first_layer_filters_in_grey_and_deeper_ones_as_channel_means(tmp_path):
    model = tiny_model()
    first = V.plot_filters(model, None, tmp_path / "f1.png")
    assert first["layer"] == "conv1_1" and first["mode"] == "gray"
    np.testing.assert_allclose(first["tiles"], np.moveaxis(kernel(model, "conv1_1")[:, :, 0], -1, 0))
    assert png_shape(tmp_path / "f1.png")[2] == 4

    deep = V.plot_filters(model, "conv2_1", tmp_path / "f2.png")
    assert deep["mode"] == "mean" and deep["tiles"].shape == (8, 3, 3)
    np.testing.assert_allclose(deep["tiles"],
                               np.moveaxis(kernel(model, "conv2_1").mean(axis=2), -1, 0), rtol=1e-6)
    assert (tmp_path / "f2.png").stat().st_size > 1000


def test_rgb_first_layer_filters_are_colour_images(tmp_path):
    out = V.plot_filters(tiny_model(channels=3), "first", tmp_path / "rgb.png")
    assert out["mode"] == "rgb" and out["tiles"].shape == (4, 3, 3, 3)
    assert out["tiles"].min() == 0.0 and out["tiles"].max() == 1.0


def test_errors_name_the_layer(tmp_path):
    model = tiny_model()
    with pytest.raises(KcnnError, match=r"no layer 'conv1_3'.*did you mean 'conv1_1'"):
        V.plot_filters(model, "conv1_3", tmp_path / "x.png")
    with pytest.raises(KcnnError, match="has no convolution kernel"):
        V.plot_filters(model, "gap", tmp_path / "x.png")


def test_feature_maps_are_the_layers_activations(tmp_path, digit_png):
    model = tiny_model()
    image = V.load_image(digit_png, (16, 16, 1), scale=16 / 255)
    assert image.shape == (1, 16, 16, 1) and 0 <= image.min() and image.max() <= 16
    out = V.plot_feature_maps(model, image, "conv1_1_relu", tmp_path / "maps.png")
    sub = keras.Model(model.input, model.get_layer("conv1_1_relu").output)
    np.testing.assert_allclose(out["maps"], keras.ops.convert_to_numpy(sub(image))[0], rtol=1e-5)
    assert out["maps"].shape == (16, 16, 4)
    assert (tmp_path / "maps.png").is_file()


def test_saliency_is_the_input_gradient_of_the_predicted_score(tmp_path, digit_png):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("saliency uses tf.GradientTape")
    model = tiny_model()
    image = V.load_image(digit_png, (16, 16, 1), scale=16 / 255).astype("float64")
    out = V.plot_saliency(model, image.astype("float32"), tmp_path / "sal.png")
    scores = keras.ops.convert_to_numpy(model(image.astype("float32")))[0]
    assert out["predicted"] == int(np.argmax(scores))
    sal = out["saliency"]
    assert sal.shape == (16, 16) and sal.min() >= 0 and sal.max() > 0
    # Finite difference at the most salient pixel (the network is piecewise linear).
    i, j = np.unravel_index(np.argmax(sal), sal.shape)
    eps = 1e-2
    bumped = image.copy()
    bumped[0, i, j, 0] += eps
    change = keras.ops.convert_to_numpy(model(bumped.astype("float32")))[0, out["predicted"]]
    assert abs(abs(change - scores[out["predicted"]]) / eps - sal[i, j]) < 0.05 * sal[i, j] + 1e-3


def test_top_patches_are_cut_by_the_receptive_field(tmp_path):
    from sklearn.datasets import load_digits

    model = tiny_model()
    small = load_digits().images[:40].astype("float32")[..., None]
    images = keras.ops.convert_to_numpy(keras.ops.image.resize(small, (16, 16)))
    out = V.plot_top_patches(model, "conv2_1", images, tmp_path / "p.png", per_channel=3,
                             channels=4)
    # conv1_1 (3) → pool (2×2/2) → conv2_1: 3 + 1 + 2·2 = 8
    assert out["receptive_field"].size == (8, 8)
    assert out["patches"].shape == (4, 3, 8, 8, 1)
    inside = out["patches"][~np.isnan(out["patches"])]
    assert inside.size and inside.min() >= 0 and inside.max() <= images.max()
    assert (tmp_path / "p.png").is_file()


def test_visualize_run_dir(tiny_run, digit_png):
    paths = V.visualize(tiny_run)  # nothing asked: the first layer's filters
    assert paths == [tiny_run / "plots" / "filters_conv1_1.png"] and paths[0].is_file()
    paths = V.visualize(tiny_run, feature_maps=str(digit_png), layers=["conv1_1", "conv2_1"],
                        out=tiny_run / "viz")
    assert [p.name for p in paths] == ["feature_maps_conv1_1_digit.png",
                                       "feature_maps_conv2_1_digit.png"]
    assert not [p for p in (tiny_run / "viz").iterdir() if p.name.startswith(".")]
    with pytest.raises(KcnnError, match="--feature-maps needs --layer"):
        V.visualize(tiny_run, feature_maps=str(digit_png))
    with pytest.raises(KcnnError, match="image not found"):
        V.visualize(tiny_run, saliency_image=str(tiny_run / "missing.png"))


def test_digits_runs_map_8_bit_images_to_the_digits_range():
    from kcnn.recipes import loads

    digits = loads("name: x\ndata: {source: {type: digits}}\nmodel: {name: simple_cnn}\n")
    cifar = loads("name: x\ndata: {source: {type: keras, name: cifar10}}\nmodel: {name: resnet20}\n")
    assert V.pixel_scale(digits) == pytest.approx(16 / 255)
    assert V.pixel_scale(cifar) == 1.0
