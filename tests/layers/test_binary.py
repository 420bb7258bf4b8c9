"""BinaryConv2D / BinaryDense: the harness, sign(W)·α forward, the STE gradient, validation.

(Packed storage and the binary recipe are compression matters: tests/compress/test_binary.py.)
"""

import keras
import numpy as np
import pytest

from kcnn.layers import LAYERS, BinaryConv2D, BinaryDense
from kcnn.layers.binary import binarize

from . import harness
from .harness import assert_validation_error, call_layer, random_input, to_numpy


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
    # 3x3 "same" keeps 6x6; kernel and bias.
    harness.run_layer_checks(
        BinaryConv2D, {"filters": 4, "kernel_size": 3, "padding": "same"}, (2, 6, 6, 3), tmp_path,
        expected_output_shape=(2, 6, 6, 4), expected_num_trainable_weights=2,
    )


def test_binary_conv2d_harness_strided_valid_without_bias(tmp_path):
    # (7 - 2) // 2 + 1 = 3 rows, (6 - 3) // 2 + 1 = 2 columns; the kernel only.
    harness.run_layer_checks(
        BinaryConv2D,
        {"filters": 2, "kernel_size": (2, 3), "strides": 2, "use_bias": False, "scale": False},
        (2, 7, 6, 3), tmp_path, expected_output_shape=(2, 3, 2, 2),
        expected_num_trainable_weights=1, fit=False, mixed_precision=False,
    )


def test_binary_dense_harness(tmp_path):
    harness.run_layer_checks(
        BinaryDense, {"units": 3, "activation": "relu"}, (4, 5), tmp_path,
        expected_output_shape=(4, 3), expected_num_trainable_weights=2,
    )


def test_registered_aliases():
    assert LAYERS["BinaryConv2D"] is BinaryConv2D and LAYERS["binary_conv2d"] is BinaryConv2D
    assert LAYERS["BinaryDense"] is BinaryDense and LAYERS["binary_dense"] is BinaryDense


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
    np.testing.assert_allclose(to_numpy(layer.binary_kernel()), wb, rtol=1e-6)
    expected = conv_same_nhwc(x, wb) + b
    np.testing.assert_allclose(to_numpy(call_layer(layer, x)), expected, rtol=1e-4, atol=1e-4)
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
    np.testing.assert_allclose(to_numpy(call_layer(layer, x)),
                               x @ (np.where(w >= 0, 1, -1) * alpha) + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clip", [1.0, 0.5, None])
def test_straight_through_gradient(clip):
    w = np.array([[-2.0, -0.9, 0.2], [0.45, 0.7, 1.5]], "float32")
    coef = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "float32")
    grad = harness.gradient(lambda v: binarize(v, scale=True, gradient_clip=clip) * coef, w)
    passes = np.ones_like(w) if clip is None else (np.abs(w) <= clip).astype("float32")
    np.testing.assert_allclose(grad, coef * passes, rtol=1e-6)


def test_training_moves_real_weights_and_keeps_two_levels():
    x = random_input((32, 6), seed=3)
    y = (x[:, 0] > 0).astype("int64")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, BinaryDense(2, name="bin")(inputs))
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = to_numpy(model.get_layer("bin").kernel).copy()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    after = to_numpy(model.get_layer("bin").kernel)
    assert not np.allclose(before, after)
    wb = to_numpy(model.get_layer("bin").binary_kernel())
    assert all(len(np.unique(np.abs(wb[:, o]).round(6))) == 1 for o in range(2))


def test_usable_from_a_layer_list_recipe(tmp_path):
    from kcnn.models import create_model

    model = create_model("layers", num_classes=10, input_shape=(8, 8, 1), layers=[
        {"type": "binary_conv2d", "filters": 8, "kernel_size": 3, "padding": "same"},
        "ReLU", "Flatten", {"BinaryDense": {"units": 16}}, "ReLU"])
    kinds = [type(layer).__name__ for layer in model.layers]
    assert "BinaryConv2D" in kinds and "BinaryDense" in kinds
    x = np.zeros((2, 8, 8, 1), "float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: BinaryConv2D(0, 3), "Received: filters=0"),
        (lambda: BinaryDense(-2), "Received: units=-2"),
        (lambda: BinaryDense(2, gradient_clip=0), "Received: gradient_clip=0"),
        (lambda: BinaryConv2D(2, 3, padding="full"), "Received: padding='full'"),
        (lambda: BinaryConv2D(2, 3, strides=2, dilation_rate=2), "cannot be combined"),
        (lambda: BinaryConv2D(2, (3, 0)), r"Received: kernel_size=\(3, 0\)"),
        (lambda: BinaryConv2D(2, 3, data_format="nhwc"), "Received: data_format='nhwc'"),
    ],
)
def test_validation_errors(make, match):
    assert_validation_error(make, match)


def test_conv_rejects_unknown_channels_in_build():
    assert_validation_error(
        lambda: BinaryConv2D(2, 3).build((None, 8, 8, None)), "channel dimension .* must be known"
    )


def test_dense_rejects_unknown_width_in_build():
    assert_validation_error(
        lambda: BinaryDense(2).build((None, None)), "last dimension .* must be known"
    )
