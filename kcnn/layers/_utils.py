"""Argument checks, shape arithmetic and config helpers shared by the kcnn layers.

Everything here is plain Python or plain Keras (serializers, a ``Conv2D``
sub-layer), except the few helpers that take a tensor and use
:mod:`keras.ops`, so the layers that call them keep running on every Keras
backend.
"""

from __future__ import annotations

import numbers

import keras
from keras import ops

# The get_config keys of the arguments every 2D convolution layer here takes.
CONV2D_ARGUMENTS = ("filters", "kernel_size", "strides", "padding", "dilation_rate", "data_format")

_PADDINGS = ("valid", "same")
_DATA_FORMATS = ("channels_last", "channels_first")


def normalize_tuple(value, n, name):
    """Returns ``value`` as a tuple of ``n`` positive ints.

    Accepts one int (repeated ``n`` times) or a sequence of ``n`` ints.
    """
    if isinstance(value, bool):
        raise ValueError(
            f"`{name}` must be a positive integer or a tuple of {n} positive "
            f"integers. Received: {name}={value!r}"
        )
    if isinstance(value, numbers.Integral):
        items = (int(value),) * n
    else:
        try:
            items = tuple(value)
        except TypeError:
            items = None
        if (
            items is None
            or len(items) != n
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items)
        ):
            raise ValueError(
                f"`{name}` must be a positive integer or a tuple of {n} positive "
                f"integers. Received: {name}={value!r}"
            )
        items = tuple(int(v) for v in items)
    if any(v <= 0 for v in items):
        raise ValueError(
            f"`{name}` must contain only positive integers. Received: {name}={value!r}"
        )
    return items


def standardize_padding(padding):
    """Returns ``"valid"`` or ``"same"`` (case-insensitive input)."""
    value = padding.lower() if isinstance(padding, str) else padding
    if value not in _PADDINGS:
        raise ValueError(f"`padding` must be one of {_PADDINGS}. Received: padding={padding!r}")
    return value


def standardize_data_format(data_format):
    """Returns ``"channels_last"`` or ``"channels_first"``.

    ``None`` means the global default, ``keras.config.image_data_format()``.
    """
    if data_format is None:
        return keras.config.image_data_format()
    value = data_format.lower() if isinstance(data_format, str) else data_format
    if value not in _DATA_FORMATS:
        raise ValueError(
            f"`data_format` must be one of {_DATA_FORMATS} or None. "
            f"Received: data_format={data_format!r}"
        )
    return value


def check_positive_number(value, name, minimum=0.0, inclusive=False):
    """Raises unless ``value`` is a real number above (or at) ``minimum``."""
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and value == value  # not NaN
        and value != float("inf")
        and (value >= minimum if inclusive else value > minimum)
    )
    if not ok:
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        raise ValueError(f"`{name}` must be a finite number {bound}. Received: {name}={value!r}")
    return float(value)


def check_positive_int(value, name, allow_none=False):
    """Returns ``value`` as an int; raises unless it is a positive integer (or None if allowed)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        expected = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return int(value)


def check_bool(value, name):
    """Raises unless ``value`` is a Python bool."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a boolean. Received: {name}={value!r}")
    return value


def check_strides_or_dilation(strides, dilation_rate):
    """Raises when both the (normalized) strides and dilation rate exceed 1.

    Like Keras' ``Conv2D``, a convolution here either strides or dilates.
    """
    if max(strides) > 1 and max(dilation_rate) > 1:
        raise ValueError(
            "`strides` > 1 cannot be combined with `dilation_rate` > 1. "
            f"Received: strides={strides}, dilation_rate={dilation_rate}"
        )


def channel_axis(data_format):
    """The channel axis of a 4D tensor: -1 (channels last) or 1 (channels first)."""
    return -1 if data_format == "channels_last" else 1


def spatial_dims(shape, data_format):
    """``(height, width)`` of a 4D shape in ``data_format``."""
    if data_format == "channels_first":
        return shape[2], shape[3]
    return shape[1], shape[2]


def known_size(input_shape, axis, what="channel axis"):
    """``input_shape[axis]``; raises when that size is unknown (None)."""
    size = input_shape[axis]
    if size is None:
        raise ValueError(
            f"The {what} of the input must have a known size. "
            f"Received: input_shape={tuple(input_shape)}"
        )
    return size


def check_window_fits(input_shape, padding, data_format, window, what, dilation_rate=(1, 1)):
    """With ``"valid"`` padding, raises unless the known height and width hold one window.

    ``window`` is the kernel or pool size (2 ints), ``dilation_rate``
    spreads it; ``what`` names the window in the message.
    """
    if padding != "valid":
        return
    sizes = spatial_dims(input_shape, data_format)
    for size, kernel, dilation, name in zip(sizes, window, dilation_rate, ("height", "width")):
        if size is not None and size < (kernel - 1) * dilation + 1:
            raise ValueError(
                f"With padding='valid' the input {name} must be at least the {what}. "
                f"Received: input_shape={tuple(input_shape)}"
            )


_SERIALIZERS = (
    ("activation", keras.activations.serialize),
    ("_initializer", keras.initializers.serialize),
    ("_regularizer", keras.regularizers.serialize),
    ("_constraint", keras.constraints.serialize),
)


def config_entries(layer, names):
    """The ``get_config`` entries of the constructor arguments ``names``.

    Each value is read from the attribute of the same name. Activations,
    initializers, regularizers and constraints (recognised by Keras' argument
    names: ``activation``, ``*_initializer``, ``*_regularizer``,
    ``*_constraint``) are serialized; lists are copied; anything else is
    stored as it is.
    """
    config = {}
    for name in names:
        value = getattr(layer, name)
        for suffix, serialize in _SERIALIZERS:
            if name.endswith(suffix):
                value = serialize(value)
                break
        else:
            if isinstance(value, list):
                value = list(value)
        config[name] = value
    return config


def fresh_initializer(initializer):
    """A new initializer with the same configuration (one per sub-layer)."""
    return initializer.__class__.from_config(initializer.get_config())


def conv2d_sublayer(block, filters, kernel_size, *, strides, padding, use_bias, name):
    """A ``Conv2D`` inside ``block``, a layer built from convolutions.

    The convolution takes the block's ``data_format``, dtype policy and
    ``kernel_regularizer``, and its own copy of the block's
    ``kernel_initializer``.
    """
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        data_format=block.data_format,
        use_bias=use_bias,
        kernel_initializer=fresh_initializer(block.kernel_initializer),
        kernel_regularizer=block.kernel_regularizer,
        dtype=block.dtype_policy,
        name=name,
    )


def conv_output_length(length, kernel, stride, padding, dilation=1):
    """Output length of a convolution or pooling window along one axis.

    Works on Python ints (``None`` stays ``None``) with TensorFlow's
    ``"valid"`` / ``"same"`` conventions.
    """
    if length is None:
        return None
    effective = (kernel - 1) * dilation + 1
    if padding == "same":
        return (length + stride - 1) // stride
    return max((length - effective) // stride + 1, 0)


def conv2d_output_shape(input_shape, filters, kernel_size, strides, padding, dilation_rate,
                        data_format):
    """Output shape of a 2-D convolution layer with ``filters`` output channels."""
    if data_format == "channels_last":
        batch, height, width, _ = input_shape
    else:
        batch, _, height, width = input_shape
    h, w = (conv_output_length(n, k, s, padding, d) for n, k, s, d in
            zip((height, width), kernel_size, strides, dilation_rate))
    return (batch, h, w, filters) if data_format == "channels_last" else (batch, filters, h, w)


def pool2d_output_shape(input_shape, pool_size, strides, padding, data_format):
    """Output shape of a 2-D pooling layer (the channels are kept)."""
    channels = input_shape[channel_axis(data_format)]
    return conv2d_output_shape(input_shape, channels, pool_size, strides, padding, (1, 1),
                               data_format)


def same_padding_amounts(length, kernel, stride, dilation=1):
    """``(before, after)`` padding that TensorFlow's ``"same"`` adds on one axis.

    ``length`` may be an int or a scalar tensor (unknown spatial size).
    """
    effective = (kernel - 1) * dilation + 1
    out = (length + stride - 1) // stride
    total = (out - 1) * stride + effective - length
    if isinstance(total, numbers.Integral):
        total = max(int(total), 0)
    else:
        total = ops.maximum(total, 0)
    before = total // 2
    return before, total - before


def spatial_shape(x):
    """``(height, width)`` of a channels-last 4D tensor; static ints when known."""
    shape = ops.shape(x)
    return shape[1], shape[2]


def to_channels_last(x, data_format):
    if data_format == "channels_first":
        return ops.transpose(x, (0, 2, 3, 1))
    return x


def from_channels_last(x, data_format):
    if data_format == "channels_first":
        return ops.transpose(x, (0, 3, 1, 2))
    return x


def pad_same_2d(x, pool_size, strides, dilation=(1, 1)):
    """Zero-pads a channels-last tensor the way ``"same"`` windows see it."""
    height, width = spatial_shape(x)
    top, bottom = same_padding_amounts(height, pool_size[0], strides[0], dilation[0])
    left, right = same_padding_amounts(width, pool_size[1], strides[1], dilation[1])
    if all(isinstance(v, int) and v == 0 for v in (top, bottom, left, right)):
        return x
    return ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])


def window_slices(x, pool_size, strides, out_height, out_width):
    """The ``ph*pw`` strided views of a channels-last tensor, one per window offset.

    ``x`` is already padded. View ``i*pw + j`` holds, for every output
    position ``(r, c)``, the element at row ``r*sh + i`` and column
    ``c*sw + j``: together the views enumerate each window in row-major order.
    """
    sh, sw = strides
    views = []
    for i in range(pool_size[0]):
        for j in range(pool_size[1]):
            views.append(
                x[
                    :,
                    i : i + (out_height - 1) * sh + 1 : sh,
                    j : j + (out_width - 1) * sw + 1 : sw,
                    :,
                ]
            )
    return views


def pool_windows(x, pool_size, strides, padding):
    """The elements of every pooling window of a channels-last tensor.

    Returns ``ph * pw`` tensors of shape ``(batch, out_h, out_w, channels)``;
    tensor ``i * pw + j`` holds element ``(i, j)`` of each window (row-major),
    zeros where a ``"same"`` window hangs over the border.

    Non-overlapping windows (``strides == pool_size``) are cut out with a
    reshape and ``unstack``, whose gradient is a cheap ``stack``; other
    windows use strided slices of the (padded) input.
    """
    height, width = spatial_shape(x)
    if padding == "same":
        out_height = (height + strides[0] - 1) // strides[0]
        out_width = (width + strides[1] - 1) // strides[1]
        x = pad_same_2d(x, pool_size, strides)
    else:
        out_height = (height - pool_size[0]) // strides[0] + 1
        out_width = (width - pool_size[1]) // strides[1] + 1
    if tuple(strides) != tuple(pool_size):
        return window_slices(x, pool_size, strides, out_height, out_width)
    ph, pw = pool_size
    exact = (
        isinstance(height, int)
        and isinstance(width, int)
        and height == out_height * ph
        and width == out_width * pw
    )
    if padding == "valid" and not exact:
        x = x[:, : out_height * ph, : out_width * pw, :]
    blocks = ops.reshape(x, (-1, out_height, ph, out_width, pw, x.shape[-1]))
    views = []
    for row in ops.unstack(blocks, num=ph, axis=2):
        views.extend(ops.unstack(row, num=pw, axis=3))
    return views


def window_counts(x, pool_size, strides, padding):
    """Number of real (non-padding) elements in each window, ``(1, oh, ow, 1)``.

    For ``"valid"`` windows this is the plain Python int ``ph * pw``.
    """
    if padding == "valid":
        return pool_size[0] * pool_size[1]
    height, width = spatial_shape(x)
    ones = ops.ones((1, height, width, 1), dtype="float32")
    views = pool_windows(ones, pool_size, strides, padding)
    count = views[0]
    for view in views[1:]:
        count = count + view
    return count
