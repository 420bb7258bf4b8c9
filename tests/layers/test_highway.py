"""HighwayDense / HighwayConv2D: harness, identity when the gate is shut, NumPy formula, TFLite."""

import numpy as np
import pytest

from kcnn.layers import LAYERS, HighwayConv2D, HighwayDense, highway_gate_bias

from . import harness
from .harness import assert_validation_error, call_layer, random_input, to_numpy


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_harness_dense(tmp_path):
    # Same width out; W_H, b_H, W_T, b_T.
    harness.run_layer_checks(
        HighwayDense, {"activation": "tanh", "units": 6}, (4, 6), tmp_path,
        expected_output_shape=(4, 6), expected_num_trainable_weights=4,
    )


def test_harness_conv(tmp_path):
    # Same shape out; K_H, b_H, K_T, b_T.
    harness.run_layer_checks(
        HighwayConv2D, {"kernel_size": 3, "filters": 3}, (2, 8, 8, 3), tmp_path,
        expected_output_shape=(2, 8, 8, 3), expected_num_trainable_weights=4,
    )


def test_registered_aliases():
    assert LAYERS["highway_dense"] is HighwayDense
    assert LAYERS["highway_conv2d"] is HighwayConv2D


@pytest.mark.parametrize(
    "depth, bias",
    [
        (1, -1.0),
        (10, -1.0),
        (14, -1.0),
        (15, -2.0),
        (20, -2.0),
        (24, -2.0),
        (25, -3.0),
        (30, -3.0),
        (100, -3.0),
    ],
)
def test_gate_bias_follows_the_paper(depth, bias):
    assert highway_gate_bias(depth) == bias


@pytest.mark.parametrize("depth", [0, -5, 2.5, "10"])
def test_gate_bias_rejects_bad_depth(depth):
    assert_validation_error(lambda: highway_gate_bias(depth), r"Received: depth=")


def test_gate_bias_starts_at_transform_gate_bias():
    layer = HighwayDense(transform_gate_bias=-2.5)
    layer.build((None, 5))
    np.testing.assert_array_equal(to_numpy(layer.gate_bias), np.full(5, -2.5, "float32"))
    assert HighwayDense().transform_gate_bias == -1.0


@pytest.mark.parametrize(
    "layer_cls, shape", [(HighwayDense, (4, 6)), (HighwayConv2D, (2, 5, 5, 3))]
)
def test_closed_gate_is_identity(layer_cls, shape):
    layer = layer_cls(transform_gate_bias=-1e4, kernel_initializer="glorot_uniform")
    x = random_input(shape, seed=31) * 3.0
    np.testing.assert_allclose(to_numpy(call_layer(layer, x)), x, rtol=0, atol=0)


def test_open_gate_is_the_plain_layer():
    layer = HighwayDense(activation="relu", transform_gate_bias=1e4)
    x = random_input((4, 6), seed=32)
    y = to_numpy(call_layer(layer, x))
    expected = np.maximum(x @ to_numpy(layer.kernel) + to_numpy(layer.bias), 0)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_dense_matches_numpy():
    layer = HighwayDense(activation="tanh", bias_initializer="random_normal")
    x = random_input((4, 6), seed=33)
    y = to_numpy(call_layer(layer, x))
    h = np.tanh(x @ to_numpy(layer.kernel) + to_numpy(layer.bias))
    t = sigmoid(x @ to_numpy(layer.gate_kernel) + to_numpy(layer.gate_bias))
    np.testing.assert_allclose(y, h * t + x * (1 - t), rtol=1e-5, atol=1e-6)


def test_conv_matches_dense_for_1x1_kernels():
    conv = HighwayConv2D(kernel_size=1, activation="relu")
    dense = HighwayDense(activation="relu")
    x = random_input((2, 4, 4, 3), seed=34)
    conv.build(x.shape)
    dense.build(x.shape)
    dense.set_weights([w.reshape(w.shape[-2:]) if w.ndim == 4 else w for w in conv.get_weights()])
    np.testing.assert_allclose(
        to_numpy(call_layer(conv, x)), to_numpy(call_layer(dense, x)), rtol=1e-5, atol=1e-6
    )


@harness.requires_channels_first_conv
def test_conv_channels_first_matches_channels_last():
    harness.check_channels_first_matches_last(
        lambda data_format: HighwayConv2D(3, data_format=data_format, bias_initializer="ones"),
        random_input((2, 5, 5, 3), seed=35),
        rtol=1e-5,
        atol=1e-6,
    )


def test_dense_rejects_width_mismatch_in_build():
    layer = HighwayDense(units=8)
    assert_validation_error(
        lambda: layer.build((None, 6)), r"must equal the input width 6.*Received: units=8"
    )


def test_conv_rejects_width_mismatch_in_build():
    layer = HighwayConv2D(filters=8)
    assert_validation_error(
        lambda: layer.build((None, 5, 5, 3)), r"number of input channels 3.*Received: filters=8"
    )


def test_dense_rejects_unknown_width_in_build():
    assert_validation_error(lambda: HighwayDense().build((None, None)), r"known size")


def test_conv_rejects_unknown_channels_in_build():
    assert_validation_error(lambda: HighwayConv2D().build((None, 5, 5, None)), r"known size")


@pytest.mark.parametrize("bias", [float("inf"), float("nan"), "-1", None])
def test_rejects_bad_gate_bias(bias):
    assert_validation_error(
        lambda: HighwayDense(transform_gate_bias=bias), r"Received: transform_gate_bias="
    )


@pytest.mark.parametrize("units", [0, -3, 2.0])
def test_rejects_bad_units(units):
    assert_validation_error(lambda: HighwayDense(units=units), r"Received: units=")


def test_conv_rejects_bad_filters():
    assert_validation_error(lambda: HighwayConv2D(filters=0), r"Received: filters=0")


def test_conv_rejects_bad_kernel_size():
    assert_validation_error(lambda: HighwayConv2D(kernel_size=(3, 0)), r"Received: kernel_size=")


def test_conv_rejects_bad_dilation_rate():
    assert_validation_error(lambda: HighwayConv2D(dilation_rate=0), r"Received: dilation_rate=0")


def test_conv_rejects_bad_data_format():
    assert_validation_error(lambda: HighwayConv2D(data_format="nhwc"), r"Received: data_format=")


@harness.requires_tensorflow
def test_tflite_builtins():
    harness.check_tflite(HighwayDense(activation="relu"), (2, 6))
    harness.check_tflite(HighwayConv2D(3, bias_initializer="random_normal"), (2, 8, 8, 3))
