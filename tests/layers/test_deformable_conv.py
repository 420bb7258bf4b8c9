"""DeformableConv2D: harness, zero offsets == Conv2D, random offsets against NumPy, TFLite."""

import keras
import numpy as np
import pytest

from kcnn.layers import LAYERS, DeformableConv2D

from . import harness
from .harness import assert_validation_error, call_layer, random_input, to_numpy


def numpy_bilinear(image, y, x):
    """image (H, W, C) at real (y, x), zeros outside."""
    h, w, _ = image.shape
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    total = np.zeros(image.shape[-1])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * image[yy, xx]
    return total


def numpy_deformable(x, offsets, kernel, bias, strides, padding, dilation):
    """Direct evaluation of y(p0) = sum_g w(g) x(p0 + g + dp_g) (float64)."""
    batch, h, w, _ = x.shape
    kh, kw, _, filters = kernel.shape
    _, oh, ow, _ = offsets.shape
    top = left = 0
    if padding == "same":
        top = max((oh - 1) * strides[0] + (kh - 1) * dilation[0] + 1 - h, 0) // 2
        left = max((ow - 1) * strides[1] + (kw - 1) * dilation[1] + 1 - w, 0) // 2
    out = np.zeros((batch, oh, ow, filters))
    for b in range(batch):
        for i in range(oh):
            for j in range(ow):
                for u in range(kh):
                    for v in range(kw):
                        k = u * kw + v
                        py = i * strides[0] - top + u * dilation[0] + offsets[b, i, j, 2 * k]
                        px = j * strides[1] - left + v * dilation[1] + offsets[b, i, j, 2 * k + 1]
                        out[b, i, j] += (
                            numpy_bilinear(x[b].astype("float64"), py, px) @ kernel[u, v]
                        )
    return out + bias


@pytest.mark.parametrize(
    "kwargs, full, output_shape, trainable",
    [
        # "same", stride 1: 8x8 kept; kernel, bias, offset kernel, offset bias.
        ({"filters": 4, "kernel_size": 3, "padding": "same"}, False, (2, 8, 8, 4), 4),
        (
            {
                "filters": 2,
                "kernel_size": (2, 3),
                "strides": 2,
                "use_bias": False,
                "activation": "relu",
                "offset_kernel_initializer": "random_normal",
                "kernel_regularizer": "l2",
            },
            True,
            # "valid", stride 2: (8 - 2) // 2 + 1 = 4 rows, (8 - 3) // 2 + 1 = 3 columns;
            # no bias, so kernel, offset kernel and offset bias.
            (2, 4, 3, 2),
            3,
        ),
    ],
)
def test_harness(tmp_path, kwargs, full, output_shape, trainable):
    # The fit step and mixed precision run once per layer class (slow under JAX).
    harness.run_layer_checks(
        DeformableConv2D, kwargs, (2, 8, 8, 3), tmp_path,
        expected_output_shape=output_shape, expected_num_trainable_weights=trainable,
        atol=1e-5, fit=full, mixed_precision=full,
    )


def test_registered_alias():
    assert LAYERS["deformable_conv2d"] is DeformableConv2D


@pytest.mark.parametrize(
    "padding, strides, kernel_size",
    [
        ("same", 1, 3),
        ("same", 2, 3),
        ("valid", 1, 3),
        ("valid", 2, 3),
        ("same", 2, (2, 3)),  # even, non-square kernel: asymmetric "same" padding
    ],
)
def test_zero_offsets_equal_conv2d(padding, strides, kernel_size):
    x = random_input((2, 8, 7, 3), seed=61)
    layer = DeformableConv2D(
        4, kernel_size, strides=strides, padding=padding, bias_initializer="random_normal"
    )
    y = to_numpy(call_layer(layer, x))
    conv = keras.layers.Conv2D(4, kernel_size, strides=strides, padding=padding)
    conv.build(x.shape)
    conv.set_weights([to_numpy(layer.kernel), to_numpy(layer.bias)])
    np.testing.assert_allclose(y, to_numpy(call_layer(conv, x)), rtol=1e-5, atol=1e-5)
    assert not np.any(to_numpy(layer.offset_kernel)) and not np.any(to_numpy(layer.offset_bias))


def test_zero_offsets_equal_dilated_conv2d():
    padding = "same"
    x = random_input((2, 8, 8, 3), seed=62)
    layer = DeformableConv2D(4, 3, padding=padding, dilation_rate=2)
    conv = keras.layers.Conv2D(4, 3, padding=padding, dilation_rate=2)
    conv.build(x.shape)
    layer.build(x.shape)
    conv.set_weights([to_numpy(layer.kernel), to_numpy(layer.bias)])
    np.testing.assert_allclose(
        to_numpy(call_layer(layer, x)), to_numpy(call_layer(conv, x)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "strides, padding, dilation",
    [((1, 1), "same", (1, 1)), ((2, 2), "valid", (1, 1)), ((1, 1), "same", (2, 1))],
)
def test_random_offsets_match_numpy(strides, padding, dilation):
    x = random_input((2, 6, 6, 2), seed=63)
    layer = DeformableConv2D(
        3,
        3,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        offset_kernel_initializer=keras.initializers.RandomNormal(0, 0.5, seed=1),
        bias_initializer="random_normal",
    )
    y = to_numpy(call_layer(layer, x))
    offsets = to_numpy(
        keras.ops.conv(x, layer.offset_kernel, strides, padding, dilation_rate=dilation)
    ) + to_numpy(layer.offset_bias)
    # Offsets span several pixels, so samples fall between pixels and outside the image.
    assert np.abs(offsets).max() > 2.0
    expected = numpy_deformable(
        x, offsets, to_numpy(layer.kernel), to_numpy(layer.bias), strides, padding, dilation
    )
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shift", [0.5, -1.25, 6.5, -40.0])
def test_offsets_across_and_past_the_border_match_numpy(shift):
    # Samples straddling the border (one corner inside), and samples whose
    # four corners all lie outside the image (zeros), among in-image ones.
    x = random_input((2, 5, 6, 2), seed=67)
    layer = DeformableConv2D(
        3,
        3,
        padding="same",
        offset_kernel_initializer=keras.initializers.RandomNormal(0, 0.5, seed=5),
        bias_initializer="random_normal",
    )
    layer.build(x.shape)
    bias = np.random.default_rng(68).normal(shift, 1.0, size=18).astype("float32")
    layer.offset_bias.assign(bias)
    y = to_numpy(call_layer(layer, x))
    offsets = to_numpy(
        keras.ops.conv(x, layer.offset_kernel, 1, "same")
    ) + to_numpy(layer.offset_bias)
    expected = numpy_deformable(
        x, offsets, to_numpy(layer.kernel), to_numpy(layer.bias), (1, 1), "same", (1, 1)
    )
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_weights_keep_their_names_shapes_and_order():
    # Saved models store these four variables in this order; the offset
    # kernel's channels stay interleaved (dy_0, dx_0, dy_1, dx_1, ...).
    layer = DeformableConv2D(4, (2, 3))
    layer.build((None, 8, 8, 3))
    assert [(w.path.split("/")[-1], tuple(w.shape)) for w in layer.weights] == [
        ("kernel", (2, 3, 3, 4)),
        ("bias", (4,)),
        ("offset_kernel", (2, 3, 3, 12)),
        ("offset_bias", (12,)),
    ]
    # A (dy, dx) = (0, 1) offset on tap 0 only: channel 1 is tap 0's dx.
    x = random_input((1, 4, 4, 1), seed=69)
    layer = DeformableConv2D(1, 1, kernel_initializer="ones", use_bias=False)
    layer.build(x.shape)
    layer.offset_bias.assign(np.array([0.0, 1.0], "float32"))
    expected = np.zeros((4, 4), "float32")
    expected[:, :3] = x[0, :, 1:, 0]
    np.testing.assert_allclose(to_numpy(call_layer(layer, x))[0, ..., 0], expected, atol=1e-6)


def test_integer_offset_shifts_the_sampling_grid():
    # A 1x1 deformable conv whose offset is (+1, -1) everywhere reads x[i+1, j-1].
    x = random_input((1, 5, 5, 1), seed=64)
    layer = DeformableConv2D(1, 1, kernel_initializer="ones", use_bias=False)
    layer.build(x.shape)
    layer.offset_bias.assign(np.array([1.0, -1.0], "float32"))
    y = to_numpy(call_layer(layer, x))[0, ..., 0]
    expected = np.zeros((5, 5), "float32")
    expected[:4, 1:] = x[0, 1:, :4, 0]
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_gradient_reaches_offsets_and_input():
    x = random_input((1, 6, 6, 2), seed=65)
    layer = DeformableConv2D(
        2,
        3,
        padding="same",
        offset_kernel_initializer=keras.initializers.RandomNormal(0, 0.3, seed=2),
    )
    layer.build(x.shape)
    grad = harness.gradient(layer, x)
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
    model = keras.Sequential([keras.Input((6, 6, 2)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = to_numpy(layer.offset_kernel)
    model.fit(x, np.ones((1, 6, 6, 2), "float32"), verbose=0)
    assert not np.allclose(to_numpy(layer.offset_kernel), before)


def test_channels_first_matches_channels_last():
    x = random_input((2, 6, 6, 3), seed=66)
    init = keras.initializers.RandomNormal(0, 0.5, seed=3)
    harness.check_channels_first_matches_last(
        lambda data_format: DeformableConv2D(
            4, 3, offset_kernel_initializer=init, data_format=data_format
        ),
        x,
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("filters", [0, -1, 2.5, None])
def test_rejects_bad_filters(filters):
    assert_validation_error(lambda: DeformableConv2D(filters, 3), r"Received: filters=")


def test_rejects_bad_kernel_size():
    assert_validation_error(lambda: DeformableConv2D(4, (3, 3, 3)), r"Received: kernel_size=")


def test_rejects_bad_strides():
    assert_validation_error(lambda: DeformableConv2D(4, 3, strides=0), r"Received: strides=0")


def test_rejects_bad_padding():
    assert_validation_error(lambda: DeformableConv2D(4, 3, padding="full"), r"Received: padding=")


def test_rejects_bad_dilation_rate():
    assert_validation_error(
        lambda: DeformableConv2D(4, 3, dilation_rate=-2), r"Received: dilation_rate="
    )


def test_rejects_strides_with_dilation():
    assert_validation_error(
        lambda: DeformableConv2D(4, 3, strides=2, dilation_rate=2),
        r"Received: strides=\(2, 2\), dilation_rate=\(2, 2\)",
    )


def test_rejects_bad_use_bias():
    assert_validation_error(lambda: DeformableConv2D(4, 3, use_bias="no"), r"Received: use_bias=")


def test_rejects_bad_data_format():
    assert_validation_error(
        lambda: DeformableConv2D(4, 3, data_format="x"), r"Received: data_format="
    )


def test_rejects_unknown_channels_in_build():
    assert_validation_error(lambda: DeformableConv2D(4, 3).build((None, 8, 8, None)), r"known size")


def test_rejects_input_smaller_than_kernel_in_build():
    layer = DeformableConv2D(4, 3, dilation_rate=3)
    assert_validation_error(lambda: layer.build((None, 6, 8, 2)), r"dilated kernel size")


@harness.requires_tensorflow
def test_tflite_builtins():
    layer = DeformableConv2D(
        4,
        3,
        padding="same",
        offset_kernel_initializer=keras.initializers.RandomNormal(0, 0.5, seed=4),
    )
    ops = harness.check_tflite(layer, (2, 8, 8, 3))
    assert "GATHER" in ops
