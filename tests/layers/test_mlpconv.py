"""MLPConv2D: harness, equality with the plain Keras stack, parameter counts, validation, TFLite."""

import keras
import numpy as np
import pytest

from kcnn.layers import LAYERS, MLPConv2D

from . import harness
from .harness import assert_validation_error, call_layer, random_input, to_numpy


@pytest.mark.parametrize(
    "kwargs, full, output_shape, trainable, non_trainable",
    [
        # "same", stride 1: 8x8 kept, 4 channels; a kernel and a bias per convolution.
        ({"filters": [6, 4, 4], "kernel_size": 3}, False, (2, 8, 8, 4), 6, 0),
        (
            {
                "filters": [4, 5],
                "kernel_size": 3,
                "strides": 2,
                "padding": "valid",
                "batch_norm": True,
                "kernel_regularizer": "l2",
            },
            True,
            # (8 - 3) // 2 + 1 = 3. Per convolution: its kernel (no bias), BN's gamma
            # and beta; BN's moving mean and variance are not trainable.
            (2, 3, 3, 5),
            6,
            4,
        ),
    ],
)
def test_harness(tmp_path, kwargs, full, output_shape, trainable, non_trainable):
    # The fit step and mixed precision run once per layer class (slow under JAX).
    harness.run_layer_checks(
        MLPConv2D, kwargs, (2, 8, 8, 3), tmp_path,
        expected_output_shape=output_shape, expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable, fit=full, mixed_precision=full,
    )


def test_registered_aliases():
    assert LAYERS["mlpconv2d"] is MLPConv2D
    assert LAYERS["MLPConv2D"] is MLPConv2D


def test_equals_the_keras_stack():
    block = MLPConv2D([6, 5, 4], kernel_size=3, strides=2, padding="same", activation="relu")
    x = random_input((2, 8, 8, 3), seed=41)
    y = to_numpy(call_layer(block, x))
    reference = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(5, 1, activation="relu"),
            keras.layers.Conv2D(4, 1, activation="relu"),
        ]
    )
    reference.set_weights(block.get_weights())
    np.testing.assert_allclose(y, to_numpy(call_layer(reference, x)), rtol=1e-5, atol=1e-6)
    assert y.shape == (2, 4, 4, 4)
    assert np.all(y >= 0)


def test_batch_norm_stack_and_parameter_count():
    block = MLPConv2D([8, 6], kernel_size=5, batch_norm=True)
    block.build((None, 8, 8, 3))
    # conv 5x5x3x8 (no bias) + BN(8) gamma/beta, conv 1x1x8x6 + BN(6)
    trainable = sum(int(np.prod(w.shape)) for w in block.trainable_weights)
    assert trainable == 5 * 5 * 3 * 8 + 2 * 8 + 8 * 6 + 2 * 6
    non_trainable = sum(int(np.prod(w.shape)) for w in block.non_trainable_weights)
    assert non_trainable == 2 * 8 + 2 * 6
    x = random_input((4, 8, 8, 3), seed=42)
    y = to_numpy(call_layer(block, x, training=True))
    # In training, BN then ReLU: every channel has mean of relu(N(0, 1))-like values >= 0.
    assert np.all(y >= 0) and y.shape == (4, 8, 8, 6)


def test_nin_cifar_block_parameter_count():
    # The first mlpconv block of NIN on CIFAR-10: 5x5 conv 192, 1x1 160, 1x1 96.
    block = MLPConv2D([192, 160, 96], kernel_size=5, kernel_initializer="zeros")
    block.build((None, 32, 32, 3))
    count = sum(int(np.prod(w.shape)) for w in block.trainable_weights)
    assert count == (5 * 5 * 3 * 192 + 192) + (192 * 160 + 160) + (160 * 96 + 96)


def test_single_int_filters_is_one_convolution():
    block = MLPConv2D(4, kernel_size=3)
    assert block.get_config()["filters"] == [4]
    assert block.compute_output_shape((None, 6, 6, 3)) == (None, 6, 6, 4)


@harness.requires_channels_first_conv
def test_channels_first():
    block = MLPConv2D([4, 2], kernel_size=3, data_format="channels_first", batch_norm=True)
    y = call_layer(block, random_input((2, 3, 6, 6), seed=43), training=False)
    assert tuple(y.shape) == (2, 2, 6, 6)
    assert block.norms[0].axis == 1


@pytest.mark.parametrize("filters", [[], [4, 0], [4, -1], [4, 2.0], "8", None])
def test_rejects_bad_filters(filters):
    assert_validation_error(lambda: MLPConv2D(filters, 3), r"Received: filters=")


def test_rejects_bad_kernel_size():
    assert_validation_error(lambda: MLPConv2D([4], 0), r"Received: kernel_size=0")


def test_rejects_bad_strides():
    assert_validation_error(lambda: MLPConv2D([4], 3, strides=-1), r"Received: strides=-1")


def test_rejects_bad_padding():
    assert_validation_error(lambda: MLPConv2D([4], 3, padding="full"), r"Received: padding=")


def test_rejects_bad_batch_norm():
    assert_validation_error(lambda: MLPConv2D([4], 3, batch_norm="yes"), r"Received: batch_norm=")


def test_rejects_bad_data_format():
    assert_validation_error(lambda: MLPConv2D([4], 3, data_format="x"), r"Received: data_format=")


def test_rejects_unknown_channels_in_build():
    assert_validation_error(lambda: MLPConv2D([4], 3).build((None, 8, 8, None)), r"known size")


@harness.requires_tensorflow
def test_tflite_builtins():
    block = MLPConv2D([6, 4], kernel_size=3, batch_norm=True)
    block.build((None, 8, 8, 3))
    # Non-trivial BN statistics so that inference-mode folding is exercised.
    for norm in block.norms:
        norm.moving_mean.assign(np.linspace(-0.5, 0.5, norm.moving_mean.shape[0]))
        norm.moving_variance.assign(np.linspace(0.5, 2.0, norm.moving_variance.shape[0]))
    harness.check_tflite(block, (2, 8, 8, 3))
