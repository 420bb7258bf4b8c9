"""BinaryConv2D / BinaryDense: the harness, sign(W)·α forward, the STE gradient, packed storage."""

import keras
import numpy as np
import pytest

from kcnn.compress.binary import pack_kernel, unpack_kernel, weight_storage
from kcnn.layers import LAYERS, BinaryConv2D, BinaryDense
from kcnn.layers.binary import binarize
from tests.layers.harness import assert_validation_error, gradient, run_layer_checks


def reference_binary(w, scale=True):
    signs = np.where(w >= 0, 1.0, -1.0).astype("float32")
    if not scale:
        return signs
    alpha = np.abs(w).reshape(-1, w.shape[-1]).mean(axis=0)
    return signs * alpha


def conv_same_nhwc(x, k):
    """Plain NumPy 'same' convolution, stride 1, odd kernel (cross-correlation)."""
    kh, kw = k.shape[:2]
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    out = np.zeros((*x.shape[:3], k.shape[-1]), "float64")
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("bhwc,co->bhwo", xp[:, i:i + x.shape[1], j:j + x.shape[2]], k[i, j])
    return out


def test_binary_conv2d_harness(tmp_path):
    run_layer_checks(BinaryConv2D, {"filters": 4, "kernel_size": 3, "padding": "same"},
                     (2, 6, 6, 3), tmp_path)


def test_binary_dense_harness(tmp_path):
    run_layer_checks(BinaryDense, {"units": 3, "activation": "relu"}, (4, 5), tmp_path)


@pytest.mark.parametrize("scale", [True, False])
def test_conv_forward_is_sign_times_alpha(scale):
    rng = np.random.default_rng(1)
    layer = BinaryConv2D(5, 3, padding="same", scale=scale)
    x = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    layer.build(x.shape)
    w = rng.normal(size=(3, 3, 3, 5)).astype("float32")
    w[0, 0, 0, 0] = 0.0  # sign(0) = +1
    b = rng.normal(size=5).astype("float32")
    layer.set_weights([w, b])
    wb = reference_binary(w, scale)
    assert wb[0, 0, 0, 0] > 0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.binary_kernel()), wb, rtol=1e-6)
    expected = conv_same_nhwc(x, wb) + b
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-4,
                               atol=1e-4)
    # Only two magnitudes per output channel: ±α.
    for o in range(5):
        assert len(np.unique(np.abs(wb[..., o]).round(6))) == 1


def test_dense_forward_is_sign_times_alpha():
    rng = np.random.default_rng(2)
    layer = BinaryDense(4)
    x = rng.normal(size=(3, 6)).astype("float32")
    layer.build(x.shape)
    w = rng.normal(size=(6, 4)).astype("float32")
    b = rng.normal(size=4).astype("float32")
    layer.set_weights([w, b])
    alpha = np.abs(w).mean(axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)),
                               x @ (np.where(w >= 0, 1, -1) * alpha) + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clip", [1.0, 0.5, None])
def test_straight_through_gradient(clip):
    w = np.array([[-2.0, -0.9, 0.2], [0.45, 0.7, 1.5]], "float32")
    coef = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "float32")
    grad = gradient(lambda v: binarize(v, scale=True, gradient_clip=clip) * coef, w)
    passes = np.ones_like(w) if clip is None else (np.abs(w) <= clip).astype("float32")
    np.testing.assert_allclose(grad, coef * passes, rtol=1e-6)


def test_training_moves_real_weights_and_keeps_two_levels():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, BinaryDense(2, name="bin")(inputs))
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.get_layer("bin").kernel.numpy().copy()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    after = model.get_layer("bin").kernel.numpy()
    assert not np.allclose(before, after)
    wb = keras.ops.convert_to_numpy(model.get_layer("bin").binary_kernel())
    assert all(len(np.unique(np.abs(wb[:, o]).round(6))) == 1 for o in range(2))


def test_pack_unpack_round_trip():
    w = np.random.default_rng(4).normal(size=(3, 3, 5, 7)).astype("float32")
    bits, alpha = pack_kernel(w)
    assert bits.dtype == np.uint8 and bits.size == -(-w.size // 8) and alpha.shape == (7,)
    np.testing.assert_allclose(unpack_kernel(bits, alpha, w.shape),
                               keras.ops.convert_to_numpy(binarize(w)), rtol=1e-6)


def test_weight_storage_counts_one_bit_per_weight():
    inputs = keras.Input((8, 8, 1))
    x = BinaryConv2D(16, 3, use_bias=False, name="bin")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    report = weight_storage(model)
    # 144 binary weights → 18 bytes + 16 float32 α; the Dense layer stays float32.
    assert report["binary_weights"] == 144
    assert report["layers"] == [{"layer": "bin", "weights": 144, "float32_bytes": 576,
                                 "packed_bytes": 18 + 64}]
    assert report["float32_bytes"] == 4 * (144 + 170)
    assert report["packed_bytes"] == 82 + 4 * 170


def test_usable_from_a_layer_list_recipe(tmp_path):
    from kcnn.models import create_model

    assert LAYERS["BinaryConv2D"] is BinaryConv2D and LAYERS["binary_dense"] is BinaryDense
    model = create_model("layers", num_classes=10, input_shape=(8, 8, 1), layers=[
        {"type": "binary_conv2d", "filters": 8, "kernel_size": 3, "padding": "same"},
        "ReLU", "Flatten", {"BinaryDense": {"units": 16}}, "ReLU"])
    kinds = [type(layer).__name__ for layer in model.layers]
    assert "BinaryConv2D" in kinds and "BinaryDense" in kinds
    x = np.zeros((2, 8, 8, 1), "float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


def test_bundled_binary_recipe_validates():
    from kcnn.recipes import load
    from kcnn.recipes.load import RECIPES_DIR

    recipe = load(RECIPES_DIR / "digits_binary.yaml")
    types = [e.get("type") for e in recipe.model.kwargs["layers"] if isinstance(e, dict)]
    assert types.count("BinaryConv2D") == 4


def test_validation_errors():
    assert_validation_error(lambda: BinaryConv2D(0, 3), "Received: filters=0")
    assert_validation_error(lambda: BinaryDense(-2), "Received: units=-2")
    assert_validation_error(lambda: BinaryDense(2, gradient_clip=0), "Received: gradient_clip=0")
    assert_validation_error(lambda: BinaryConv2D(2, 3, padding="full"), "Received: padding='full'")
    assert_validation_error(lambda: BinaryConv2D(2, 3, strides=2, dilation_rate=2),
                            "cannot be combined")
    assert_validation_error(lambda: BinaryConv2D(2, (3, 0)), r"Received: kernel_size=\(3, 0\)")
    with pytest.raises(ValueError, match="channel dimension .* must be known"):
        BinaryConv2D(2, 3).build((None, 8, 8, None))
