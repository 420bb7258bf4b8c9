"""LpPooling2D: harness, NumPy references for p = 1, 2.5 and 64, stability, validation, TFLite."""

import keras
import numpy as np
import pytest

from kcnn.layers import LAYERS, LpPooling2D

from . import harness
from .harness import assert_validation_error, call_layer, numpy_windows, random_input, to_numpy


def numpy_lp(x, p, pool, strides, padding):
    """(mean over the window's real elements of |a|**p) ** (1/p), in float64."""
    magnitudes = np.abs(x.astype("float64"))
    windows = numpy_windows(magnitudes, pool, strides, padding)
    counts = numpy_windows(np.ones_like(magnitudes), pool, strides, padding).sum(-1)
    largest = windows.max(-1, keepdims=True)
    scale = np.where(largest > 0, largest, 1.0)
    mean = ((windows / scale) ** p).sum(-1) / counts
    return scale[..., 0] * mean ** (1.0 / p)


def test_harness(tmp_path):
    # 2x2 windows, stride 2: 8x8 -> 4x4; no weights.
    harness.run_layer_checks(
        LpPooling2D, {"p": 3.0, "pool_size": 2}, (2, 8, 8, 3), tmp_path,
        expected_output_shape=(2, 4, 4, 3), expected_num_trainable_weights=0,
    )


def test_registered_alias():
    assert LAYERS["lp_pooling2d"] is LpPooling2D


@pytest.mark.parametrize(
    "p, pool, strides, padding",
    [
        (1.0, (2, 2), (2, 2), "valid"),
        (2.0, (3, 3), (2, 2), "same"),
        (2.5, (2, 3), (1, 2), "valid"),
        (64.0, (2, 2), (2, 2), "valid"),
        (64.0, (3, 3), (2, 2), "same"),
    ],
)
def test_matches_numpy(p, pool, strides, padding):
    x = random_input((2, 7, 8, 3), seed=21)
    got = to_numpy(call_layer(LpPooling2D(p, pool, strides, padding), x))
    np.testing.assert_allclose(got, numpy_lp(x, p, pool, strides, padding), rtol=1e-5, atol=1e-6)


def test_p1_is_average_pooling_of_magnitudes():
    x = random_input((2, 8, 8, 3), seed=22)
    expected = call_layer(keras.layers.AveragePooling2D(2), np.abs(x))
    np.testing.assert_allclose(
        to_numpy(call_layer(LpPooling2D(1, 2), x)), to_numpy(expected), rtol=1e-6, atol=1e-7
    )


def test_large_p_approaches_max_pooling():
    x = random_input((2, 8, 8, 3), seed=23)
    max_pool = to_numpy(call_layer(keras.layers.MaxPooling2D(2), np.abs(x)))
    got = to_numpy(call_layer(LpPooling2D(64, 2), x))
    # max * (1/4)**(1/64) <= Lp <= max
    assert np.all(got <= max_pool * (1 + 1e-6))
    assert np.all(got >= max_pool * 0.25 ** (1 / 64) * (1 - 1e-6))
    got = to_numpy(call_layer(LpPooling2D(4096, 2), x))
    np.testing.assert_allclose(got, max_pool, rtol=1e-3)


def test_large_p_is_finite_for_large_and_small_values():
    # 1e30**64 and 1e-30**64 are far outside float32; the per-window scaling keeps them finite.
    x = np.array([1e30, 2e30, 1e-30, 3e-30], "float32").reshape(1, 2, 2, 1)
    x = np.concatenate([x, x * 0], axis=-1)
    y = to_numpy(call_layer(LpPooling2D(64, 2), x))
    expected = 2e30 * ((0.5**64 + 1.0) / 4) ** (1 / 64)
    np.testing.assert_allclose(y[0, 0, 0, 0], expected, rtol=1e-5)
    assert y[0, 0, 0, 1] == 0
    small = to_numpy(call_layer(LpPooling2D(64, 2), x[..., :1] * 1e-12))
    np.testing.assert_allclose(small[0, 0, 0, 0], expected * 1e-12, rtol=1e-5)


@pytest.mark.parametrize("p", [1.0, 2.0, 8.0])
def test_all_zero_window_has_finite_gradient(p):
    x = np.zeros((1, 4, 4, 1), "float32")
    x[0, 0, 1, 0] = -2.0
    layer = LpPooling2D(p, 2)
    y = to_numpy(call_layer(layer, x))
    assert y[0, 0, 0, 0] == pytest.approx(2.0 * 0.25 ** (1 / p))
    assert np.all(y.reshape(-1)[1:] == 0)
    grad = harness.gradient(layer, x)
    assert np.all(np.isfinite(grad))
    # d/da of (|a|**p / 4) ** (1/p) at the single non-zero a = -2
    assert grad[0, 0, 1, 0] == pytest.approx(-(0.25 ** (1 / p)), rel=1e-5)


def test_channels_first_matches_channels_last():
    got = harness.check_channels_first_matches_last(
        lambda data_format: LpPooling2D(3, 3, 2, "same", data_format=data_format),
        random_input((2, 6, 6, 3), seed=24),
    )
    assert got.shape == (2, 3, 3, 3)


@pytest.mark.parametrize("p", [0.5, 0, -2, float("inf"), float("nan"), "2", True])
def test_rejects_bad_p(p):
    assert_validation_error(
        lambda: LpPooling2D(p), r"`p` must be a finite number >= 1.*Received: p="
    )


def test_rejects_bad_pool_size():
    assert_validation_error(lambda: LpPooling2D(2, pool_size=(2, 0)), r"Received: pool_size=")


def test_rejects_bad_strides():
    assert_validation_error(lambda: LpPooling2D(2, strides=(1, 2, 3)), r"Received: strides=")


def test_rejects_bad_padding():
    assert_validation_error(lambda: LpPooling2D(2, padding="causal"), r"Received: padding=")


def test_rejects_bad_data_format():
    assert_validation_error(lambda: LpPooling2D(2, data_format="NCHW"), r"Received: data_format=")


def test_rejects_input_smaller_than_pool_in_build():
    layer = LpPooling2D(2, pool_size=5)
    assert_validation_error(lambda: layer.build((1, 8, 4, 2)), r"at least the pool size")


@harness.requires_tensorflow
@pytest.mark.parametrize(
    "kwargs",
    [{"p": 3.0, "pool_size": 2}, {"p": 2.0, "pool_size": 3, "strides": 2, "padding": "same"}],
)
def test_tflite_builtins(kwargs):
    harness.check_tflite(LpPooling2D(**kwargs), (2, 8, 8, 3))
