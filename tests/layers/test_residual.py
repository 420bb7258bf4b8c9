"""ResidualBlock: harness, paper parameter counts (ResNet-20, ResNet-50), shortcuts, TFLite."""

import keras
import numpy as np
import pytest

from kcnn.layers import LAYERS, ResidualBlock

from . import harness
from .harness import assert_validation_error, call_layer, random_input, to_numpy


def count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


@pytest.mark.parametrize(
    "kwargs, full, output_shape, trainable, non_trainable",
    [
        # Stride 2 halves 8x8; two 3x3 convolutions (no bias) with BN, and option A's
        # shortcut adds nothing: 2 kernels + 2 x (gamma, beta); 2 x (mean, variance).
        ({"filters": 6, "strides": 2, "shortcut": "zero_pad"}, False, (2, 4, 4, 6), 6, 4),
        # Bottleneck: 4 * 2 = 8 channels out, which 3 input channels cannot carry, so a
        # projection too: 4 convolutions, each with a BN.
        (
            {"filters": 2, "kind": "bottleneck", "strides": 2, "kernel_regularizer": "l2"},
            True,
            (2, 4, 4, 8),
            12,
            8,
        ),
    ],
)
def test_harness(tmp_path, kwargs, full, output_shape, trainable, non_trainable):
    # The fit step and mixed precision run once per layer class (slow under JAX).
    harness.run_layer_checks(
        ResidualBlock, kwargs, (2, 8, 8, 3), tmp_path,
        expected_output_shape=output_shape, expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable, fit=full, mixed_precision=full,
    )


def test_registered_alias():
    assert LAYERS["residual_block"] is ResidualBlock


# Parameter counts do not depend on the initial values: zero initializers keep
# these builds cheap (random initializers compile once per shape under JAX).
ZEROS = {"kernel_initializer": "zeros"}


def cifar_resnet(depth=20, num_classes=10):
    """He et al. 2015, section 4.2: 6n+2 layers, 16/32/64 filters, option A shortcuts."""
    blocks = (depth - 2) // 6
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, **ZEROS)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for stage, filters in enumerate([16, 32, 64]):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = ResidualBlock(filters, strides=strides, shortcut="zero_pad", **ZEROS)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, **ZEROS)(x))


def test_cifar_resnet20_has_269722_trainable_parameters():
    model = cifar_resnet(20)
    assert count(model.trainable_weights) == 269_722
    assert model.output_shape == (None, 10)
    # Option A adds no parameters: 18 blocks x 2 convolutions, nothing else.
    assert sum(len(layer.convs) for layer in model.layers if isinstance(layer, ResidualBlock)) == 18
    assert all(
        layer.shortcut_conv is None for layer in model.layers if isinstance(layer, ResidualBlock)
    )


def test_cifar_resnet56_parameter_count():
    # 0.85M in the paper's table 6; exactly 853,018 with BN's gamma and beta.
    assert count(cifar_resnet(56).trainable_weights) == 853_018


def test_bottleneck_projection_block_matches_torchvision_resnet50_layer1_block0():
    block = ResidualBlock(64, kind="bottleneck", **ZEROS)  # 64 -> 256 channels: projection
    block.build((None, 56, 56, 64))
    # conv1x1 64*64 + conv3x3 9*64*64 + conv1x1 64*256 + proj 64*256, BN gamma/beta 64+64+256+256
    assert count(block.trainable_weights) == 75_008
    assert count(block.non_trainable_weights) == 2 * (64 + 64 + 256 + 256)
    assert block.compute_output_shape((None, 56, 56, 64)) == (None, 56, 56, 256)


def test_bottleneck_identity_block_parameter_count():
    block = ResidualBlock(64, kind="bottleneck", **ZEROS)
    block.build((None, 56, 56, 256))  # layer1[1]: identity shortcut
    assert block.shortcut_conv is None
    assert count(block.trainable_weights) == 256 * 64 + 9 * 64 * 64 + 64 * 256 + 2 * (64 + 64 + 256)


def test_resnet50_has_torchvision_parameter_count():
    # torchvision.models.resnet50(): 25,557,032 parameters.
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, **ZEROS)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, (filters, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = ResidualBlock(filters, kind="bottleneck", strides=strides, **ZEROS)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1000, **ZEROS)(x))
    assert count(model.trainable_weights) == 25_557_032
    assert model.layers[-3].output.shape == (None, 7, 7, 2048)


def test_identity_block_adds_its_input():
    block = ResidualBlock(3, kernel_initializer="zeros")  # F(x) = BN(0) = 0 at init
    x = random_input((2, 6, 6, 3), seed=51)
    np.testing.assert_allclose(
        to_numpy(call_layer(block, x, training=False)), np.maximum(x, 0), atol=1e-6
    )
    assert block.shortcut_conv is None


def test_zero_pad_shortcut_subsamples_and_pads_channels():
    block = ResidualBlock(5, strides=2, shortcut="zero_pad", kernel_initializer="zeros")
    x = random_input((2, 7, 7, 3), seed=52)
    y = to_numpy(call_layer(block, x, training=False))
    expected = np.zeros((2, 4, 4, 5), "float32")
    expected[..., :3] = np.maximum(x[:, ::2, ::2, :], 0)
    np.testing.assert_allclose(y, expected, atol=1e-6)


@harness.requires_channels_first_conv
def test_zero_pad_channels_first():
    block = ResidualBlock(
        5, strides=2, shortcut="zero_pad", kernel_initializer="zeros", data_format="channels_first"
    )
    x = random_input((2, 3, 6, 6), seed=53)
    y = to_numpy(call_layer(block, x, training=False))
    assert y.shape == (2, 5, 3, 3)
    np.testing.assert_allclose(y[:, :3], np.maximum(x[:, :, ::2, ::2], 0), atol=1e-6)
    np.testing.assert_array_equal(y[:, 3:], 0)


def test_projection_is_forced_even_when_shapes_match():
    block = ResidualBlock(3, shortcut="projection")
    block.build((None, 6, 6, 3))
    assert block.shortcut_conv is not None
    assert block.shortcut_conv.kernel.shape == (1, 1, 3, 3)


def test_auto_projects_when_the_stride_changes_the_shape():
    block = ResidualBlock(3, strides=2)
    block.build((None, 6, 6, 3))
    assert block.shortcut_conv is not None and block.shortcut_conv.strides == (2, 2)


def test_convolutions_have_no_bias_and_he_normal_init():
    assert isinstance(ResidualBlock(4).kernel_initializer, keras.initializers.HeNormal)
    block = ResidualBlock(4, kind="bottleneck", kernel_regularizer="l2", **ZEROS)
    block.build((None, 8, 8, 3))
    for conv in [*block.convs, block.shortcut_conv]:
        assert conv.bias is None
        # Each convolution gets its own copy of the block's initializer.
        assert isinstance(conv.kernel_initializer, keras.initializers.Zeros)
        assert conv.kernel_initializer is not block.kernel_initializer
        assert conv.kernel_regularizer is not None
    assert [c.kernel.shape for c in block.convs] == [(1, 1, 3, 4), (3, 3, 4, 4), (1, 1, 4, 16)]
    # Weight decay: one loss per convolution kernel.
    assert len(block.losses) == 4


def test_training_updates_batch_norm_statistics():
    block = ResidualBlock(3)
    x = random_input((4, 6, 6, 3), seed=54) + 2.0
    call_layer(block, x, training=True)
    assert not np.allclose(to_numpy(block.norms[0].moving_mean), 0)


@pytest.mark.parametrize("filters", [0, -4, 2.0, True])
def test_rejects_bad_filters(filters):
    assert_validation_error(lambda: ResidualBlock(filters), r"Received: filters=")


def test_rejects_bad_kind():
    assert_validation_error(lambda: ResidualBlock(4, kind="wide"), r"Received: kind='wide'")


def test_rejects_bad_strides():
    assert_validation_error(lambda: ResidualBlock(4, strides=0), r"Received: strides=0")


def test_rejects_bad_shortcut():
    assert_validation_error(lambda: ResidualBlock(4, shortcut="identity"), r"Received: shortcut=")


def test_rejects_bad_bn_momentum():
    assert_validation_error(lambda: ResidualBlock(4, bn_momentum=1.0), r"Received: bn_momentum=1.0")
    assert_validation_error(lambda: ResidualBlock(4, bn_momentum=-0.1), r"Received: bn_momentum=")


def test_rejects_bad_bn_epsilon():
    assert_validation_error(lambda: ResidualBlock(4, bn_epsilon=0), r"Received: bn_epsilon=0")


def test_rejects_bad_data_format():
    assert_validation_error(lambda: ResidualBlock(4, data_format="x"), r"Received: data_format=")


def test_zero_pad_cannot_narrow_in_build():
    block = ResidualBlock(4, shortcut="zero_pad")
    assert_validation_error(lambda: block.build((None, 8, 8, 6)), r"can only keep or widen")


def test_rejects_unknown_channels_in_build():
    assert_validation_error(lambda: ResidualBlock(4).build((None, 8, 8, None)), r"known size")


@harness.requires_tensorflow
@pytest.mark.parametrize(
    "kwargs",
    [{"filters": 6, "strides": 2, "shortcut": "zero_pad"}, {"filters": 2, "kind": "bottleneck"}],
)
def test_tflite_builtins(kwargs):
    harness.check_tflite(ResidualBlock(**kwargs), (2, 8, 8, 3))
