"""LocalResponseNormalization: harness, tf.nn reference, NumPy reference, validation, TFLite."""

import numpy as np
import pytest

from kcnn.layers import LAYERS, LocalResponseNormalization

from . import harness
from .harness import assert_validation_error, call_layer, random_input, to_numpy


def numpy_lrn(x, size, bias, alpha, beta, mean=False, axis=-1):
    x = np.moveaxis(x.astype("float64"), axis, -1)
    radius = (size - 1) // 2
    channels = x.shape[-1]
    padded = np.pad(np.square(x), [(0, 0)] * (x.ndim - 1) + [(radius, radius)])
    energy = sum(padded[..., i : i + channels] for i in range(size))
    scale = alpha / size if mean else alpha
    return np.moveaxis(x / (bias + scale * energy) ** beta, -1, axis)


def test_harness(tmp_path):
    # Same shape out; no weights (the band matrix is a constant).
    harness.run_layer_checks(
        LocalResponseNormalization, {"size": 3, "alpha": 0.1}, (2, 8, 8, 6), tmp_path,
        expected_output_shape=(2, 8, 8, 6), expected_num_trainable_weights=0,
    )


def test_defaults_are_alexnet():
    layer = LocalResponseNormalization()
    assert (layer.size, layer.bias, layer.alpha, layer.beta) == (5, 2.0, 1e-4, 0.75)
    assert layer.alpha_mode == "sum"
    assert LAYERS["lrn"] is LocalResponseNormalization
    assert LAYERS["LocalResponseNormalization"] is LocalResponseNormalization


@harness.requires_tensorflow
@pytest.mark.parametrize(
    "size, bias, alpha, beta",
    [(5, 2.0, 1e-4, 0.75), (3, 1.0, 0.5, 0.75), (5, 2.0, 0.3, 0.6), (1, 1.5, 1.0, 1.0)],
)
def test_matches_tf_nn(size, bias, alpha, beta):
    import tensorflow as tf

    x = random_input((2, 4, 4, 12), seed=3) * 3.0
    expected = tf.nn.local_response_normalization(
        x, depth_radius=(size - 1) // 2, bias=bias, alpha=alpha, beta=beta
    ).numpy()
    got = to_numpy(
        call_layer(LocalResponseNormalization(size=size, bias=bias, alpha=alpha, beta=beta), x)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha_mode", ["sum", "mean"])
def test_matches_numpy(alpha_mode):
    x = random_input((2, 3, 3, 7), seed=4) * 2.0
    layer = LocalResponseNormalization(size=5, bias=1.0, alpha=0.8, beta=0.7, alpha_mode=alpha_mode)
    expected = numpy_lrn(x, 5, 1.0, 0.8, 0.7, mean=alpha_mode == "mean")
    np.testing.assert_allclose(
        to_numpy(call_layer(layer, x)), expected, rtol=1e-5, atol=1e-6
    )


def test_mean_mode_is_sum_mode_with_alpha_over_size():
    x = random_input((2, 3, 3, 8), seed=5)
    mean = call_layer(LocalResponseNormalization(size=5, alpha=0.5, alpha_mode="mean"), x)
    total = call_layer(LocalResponseNormalization(size=5, alpha=0.1, alpha_mode="sum"), x)
    np.testing.assert_allclose(
        to_numpy(mean), to_numpy(total), rtol=1e-6
    )


def test_channels_first_axis():
    x = random_input((2, 6, 3, 3), seed=6)
    got = call_layer(LocalResponseNormalization(size=3, alpha=0.5, axis=1), x)
    expected = numpy_lrn(x, 3, 2.0, 0.5, 0.75, axis=1)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-5, atol=1e-6)


def test_float16_input_does_not_overflow():
    # 300**2 * 5 overflows float16 (max 65504); the layer works in float32.
    x = np.full((1, 2, 2, 5), 300.0, dtype="float16")
    layer = LocalResponseNormalization(size=5, bias=1.0, alpha=1.0, beta=0.5, dtype="mixed_float16")
    got = to_numpy(call_layer(layer, x)).astype("float64")
    expected = numpy_lrn(x.astype("float32"), 5, 1.0, 1.0, 0.5)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=2e-3)


@pytest.mark.parametrize("size", [0, 4, -3, 2.0, True])
def test_rejects_bad_size(size):
    assert_validation_error(
        lambda: LocalResponseNormalization(size=size), r"odd positive integer.*Received: size="
    )


def test_rejects_bad_bias():
    assert_validation_error(lambda: LocalResponseNormalization(bias=0.0), r"Received: bias=0.0")


def test_rejects_bad_alpha():
    assert_validation_error(lambda: LocalResponseNormalization(alpha=-1.0), r"Received: alpha=-1.0")


def test_rejects_bad_beta():
    assert_validation_error(
        lambda: LocalResponseNormalization(beta=float("nan")), r"Received: beta=nan"
    )


def test_rejects_bad_alpha_mode():
    assert_validation_error(
        lambda: LocalResponseNormalization(alpha_mode="avg"), r"Received: alpha_mode='avg'"
    )


def test_rejects_bad_axis_type():
    assert_validation_error(lambda: LocalResponseNormalization(axis="c"), r"Received: axis='c'")


def test_rejects_batch_axis_in_build():
    layer = LocalResponseNormalization(axis=0)
    assert_validation_error(lambda: layer.build((2, 4, 4, 3)), r"non-batch axis.*Received: axis=0")


def test_rejects_unknown_channels_in_build():
    layer = LocalResponseNormalization()
    assert_validation_error(lambda: layer.build((2, 4, 4, None)), r"known size")


@harness.requires_tensorflow
def test_tflite_builtins():
    harness.check_tflite(LocalResponseNormalization(size=5, alpha=0.1), (2, 8, 8, 6))
