"""Deformable convolution, v1 (Dai et al., 2017)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from kcnn.layers._utils import (
    CONV2D_ARGUMENTS,
    channel_axis,
    check_bool,
    check_positive_int,
    check_strides_or_dilation,
    check_window_fits,
    config_entries,
    conv2d_output_shape,
    from_channels_last,
    known_size,
    normalize_tuple,
    same_padding_amounts,
    spatial_shape,
    standardize_data_format,
    standardize_padding,
    to_channels_last,
)


@keras.saving.register_keras_serializable(package="kcnn")
class DeformableConv2D(keras.layers.Layer):
    """2D deformable convolution (v1).

    A regular convolution samples the input on a fixed grid
    ``G = {(u * d_h, v * d_w)}``, ``0 <= u < k_h``, ``0 <= v < k_w``, around
    each output position ``p_0``. A deformable convolution shifts every grid
    point by a learned, position-dependent offset:

    ```
    y(p_0) = sum_{g in G} w(g) * x(p_0 + g + dp_g(p_0))
    ```

    The offsets ``dp`` (``2 * k_h * k_w`` numbers per output position, in the
    order ``(dy_0, dx_0, dy_1, dx_1, ...)`` with grid points in row-major
    order) come from a regular convolution of the same input with the same
    kernel size, strides, padding and dilation. Its kernel and bias start at
    zero, so an untrained layer equals ``Conv2D`` with the same kernel.
    ``x`` at fractional positions is interpolated bilinearly, and positions
    outside the image read zeros (as the zero padding of a convolution).

    Implementation: the four bilinear neighbours of every sampling position
    are fetched with a single ``take`` (gather) from a table of the
    zero-bordered input's 2x2 neighbourhoods; the weighted samples
    ``(batch, out_h, out_w, k_h * k_w, channels)`` then meet the kernel in one
    matrix product (an im2col with moving columns). The sampling runs in
    float32 whatever the dtype policy. Memory grows as ``4 * k_h * k_w`` times
    the input (the gathered corners), so this layer is meant for a few late
    layers of a network, as in the paper.

    Args:
        filters: Positive integer, the number of output channels.
        kernel_size: Integer or tuple of 2 integers.
        strides: Integer or tuple of 2 integers. Defaults to 1.
        padding: ``"valid"`` or ``"same"``. Defaults to ``"valid"``.
        dilation_rate: Integer or tuple of 2 integers, the spacing of the
            regular grid before deformation. Defaults to 1.
        use_bias: Whether to add a bias. Defaults to True.
        activation: Activation applied to the output. Defaults to None.
        data_format: ``"channels_last"`` or ``"channels_first"``; ``None``
            uses ``keras.config.image_data_format()``.
        kernel_initializer: Initializer of the kernel. Defaults to
            ``"glorot_uniform"``.
        bias_initializer: Initializer of the bias. Defaults to ``"zeros"``.
        kernel_regularizer: Optional regularizer of the kernel.
        bias_regularizer: Optional regularizer of the bias.
        offset_kernel_initializer: Initializer of the offset convolution's
            kernel. Defaults to ``"zeros"`` (the paper's choice).
        offset_kernel_regularizer: Optional regularizer of the offset kernel.
        **kwargs: Base layer keyword arguments, such as ``name`` and ``dtype``.

    Call arguments:
        inputs: A 4D tensor; the offsets are computed from it as well.

    Input shape:
        ``(batch, height, width, channels)`` for ``"channels_last"``,
        ``(batch, channels, height, width)`` for ``"channels_first"``.

    Output shape:
        ``(batch, out_height, out_width, filters)`` (channels last), the
        spatial size being that of ``Conv2D`` with the same arguments.

    Example:

    >>> x = keras.random.normal((2, 8, 8, 4))
    >>> keras.ops.shape(DeformableConv2D(8, 3, padding="same")(x))
    (2, 8, 8, 8)

    Reference:
        - [Dai, Qi, Xiong, Li, Zhang, Hu & Wei, 2017. Deformable
          Convolutional Networks](https://arxiv.org/abs/1703.06211)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        dilation_rate=1,
        use_bias=True,
        activation=None,
        data_format=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        offset_kernel_initializer="zeros",
        offset_kernel_regularizer=None,
        **kwargs,
    ):
        filters = check_positive_int(filters, "filters")
        kernel_size = normalize_tuple(kernel_size, 2, "kernel_size")
        strides = normalize_tuple(strides, 2, "strides")
        padding = standardize_padding(padding)
        dilation_rate = normalize_tuple(dilation_rate, 2, "dilation_rate")
        check_strides_or_dilation(strides, dilation_rate)
        use_bias = check_bool(use_bias, "use_bias")
        data_format = standardize_data_format(data_format)
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.dilation_rate = dilation_rate
        self.use_bias = use_bias
        self.activation = keras.activations.get(activation)
        self.data_format = data_format
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.offset_kernel_initializer = keras.initializers.get(offset_kernel_initializer)
        self.offset_kernel_regularizer = keras.regularizers.get(offset_kernel_regularizer)
        self._channel_axis = channel_axis(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = known_size(input_shape, self._channel_axis)
        check_window_fits(input_shape, self.padding, self.data_format, self.kernel_size,
                          "dilated kernel size", self.dilation_rate)
        kh, kw = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel",
            shape=(kh, kw, channels, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )
        else:
            self.bias = None
        self.offset_kernel = self.add_weight(
            name="offset_kernel",
            shape=(kh, kw, channels, 2 * kh * kw),
            initializer=self.offset_kernel_initializer,
            regularizer=self.offset_kernel_regularizer,
        )
        self.offset_bias = self.add_weight(
            name="offset_bias", shape=(2 * kh * kw,), initializer="zeros"
        )
        # Grid point k = u * kw + v sits at (u * dh, v * dw) from the window's corner.
        u, v = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
        self._grid_y = (u.reshape(-1) * self.dilation_rate[0]).astype("float32")
        self._grid_x = (v.reshape(-1) * self.dilation_rate[1]).astype("float32")
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={self._channel_axis: channels})

    def call(self, inputs):
        x = to_channels_last(inputs, self.data_format)
        offset_y, offset_x = self._offsets(x)
        samples = self._sample(ops.cast(x, "float32"), offset_y, offset_x)
        samples = ops.cast(samples, self.compute_dtype)
        # samples: (batch, oh, ow, K, C) -> (batch * oh * ow, K * C), matching
        # the kernel reshaped from (kh, kw, C, filters) to (K * C, filters). A
        # 2-D product: TensorFlow runs a 4-D by 2-D matmul as a broadcast
        # batch matmul, about twice as slow.
        shape = ops.shape(offset_y)
        kh, kw = self.kernel_size
        channels = x.shape[-1]
        patches = ops.reshape(samples, (-1, kh * kw * channels))
        kernel = ops.reshape(self.kernel, (kh * kw * channels, self.filters))
        outputs = ops.reshape(
            ops.matmul(patches, kernel), (shape[0], shape[1], shape[2], self.filters)
        )
        if self.use_bias:
            outputs = outputs + self.bias
        outputs = self.activation(outputs)
        return from_channels_last(outputs, self.data_format)

    def _offsets(self, x):
        """The row and column offsets, two float32 ``(batch, oh, ow, K)`` tensors.

        The offset kernel's output channels are interleaved
        ``(dy_0, dx_0, dy_1, ...)`` (the saved weights keep that order); they
        are regrouped on the small kernel, as ``(dy_0 .. dy_{K-1}, dx_0 ..)``,
        so that the convolution's output splits into two contiguous halves
        (slicing every other channel of the large output, and its gradient,
        costs more than the convolution on TensorFlow).
        """
        kh, kw = self.kernel_size
        taps = kh * kw
        kernel = ops.reshape(self.offset_kernel, (kh, kw, -1, taps, 2))
        kernel = ops.reshape(ops.transpose(kernel, (0, 1, 2, 4, 3)), (kh, kw, -1, 2 * taps))
        bias = ops.reshape(ops.transpose(ops.reshape(self.offset_bias, (taps, 2))), (2 * taps,))
        offsets = ops.conv(
            x,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format="channels_last",
        )
        offsets = ops.cast(offsets + bias, "float32")
        offset_y, offset_x = ops.split(offsets, 2, axis=-1)
        return offset_y, offset_x

    def _sample(self, x, offset_y, offset_x):
        """Bilinear samples of ``x`` at the deformed grid, ``(B, oh, ow, K, C)``.

        ``x`` is first laid out as a table with one row per 2x2 neighbourhood
        of the zero-bordered input (its four pixels side by side, ``4 * C``
        numbers), so one gather fetches the four corners of every sample
        (and its gradient is one scatter-add of wide rows). A sample whose
        top-left corner ``(y0, x0)`` lies in ``[-1, H - 1] x [-1, W - 1]``
        reads its neighbourhood there, the border supplying the zeros outside
        the image; any other sample has all four corners outside the image
        and gets zero weights.
        """
        height, width = spatial_shape(x)
        shape = ops.shape(offset_y)
        batch, out_h, out_w = shape[0], shape[1], shape[2]
        kh, kw = self.kernel_size
        sh, sw = self.strides
        if self.padding == "same":
            top, _ = same_padding_amounts(height, kh, sh, self.dilation_rate[0])
            left, _ = same_padding_amounts(width, kw, sw, self.dilation_rate[1])
        else:
            top = left = 0

        # Regular grid: output (i, j), point k -> (i*sh - top + gy_k, j*sw - left + gx_k).
        rows = ops.cast(ops.arange(out_h) * sh - top, "float32")
        cols = ops.cast(ops.arange(out_w) * sw - left, "float32")
        pos_y = ops.reshape(rows, (-1, 1, 1)) + ops.convert_to_tensor(self._grid_y) + offset_y
        pos_x = ops.reshape(cols, (1, -1, 1)) + ops.convert_to_tensor(self._grid_x) + offset_x
        y0 = ops.floor(pos_y)
        x0 = ops.floor(pos_x)
        wy = pos_y - y0  # weight of the lower neighbour row (y0 + 1)
        wx = pos_x - x0  # weight of the right neighbour column (x0 + 1)

        channels = x.shape[-1]
        # Neighbourhood (r, c) of the bordered input P holds P[r, c], P[r, c + 1],
        # P[r + 1, c], P[r + 1, c + 1]: four zero-paddings of x, r in [0, H], c in [0, W].
        table = ops.concatenate(
            [
                ops.pad(x, [[0, 0], [1 - down, down], [1 - right, right], [0, 0]])
                for down in (0, 1)
                for right in (0, 1)
            ],
            axis=-1,
        )
        table = ops.reshape(table, (-1, 4 * channels))
        last_row = ops.cast(height - 1, "float32")
        last_col = ops.cast(width - 1, "float32")
        inside = (y0 >= -1.0) & (y0 <= last_row) & (x0 >= -1.0) & (x0 <= last_col)
        row = ops.cast(ops.clip(y0 + 1.0, 0.0, last_row + 1.0), "int32")
        col = ops.cast(ops.clip(x0 + 1.0, 0.0, last_col + 1.0), "int32")
        row_stride = width + 1
        image_start = ops.reshape(ops.arange(batch, dtype="int32"), (-1, 1, 1, 1)) * (
            (height + 1) * row_stride
        )
        values = ops.take(table, image_start + row * row_stride + col, axis=0)
        values = ops.reshape(values, (batch, out_h, out_w, kh * kw, 4, channels))

        # Corner weights (B, oh, ow, K, 4), corners in the table's order; built
        # by broadcasting against constant corner flags rather than stacking
        # along the last axis (whose gradient is a slow element-wise unstack).
        lower = ops.convert_to_tensor(np.array([False, False, True, True]))
        right = ops.convert_to_tensor(np.array([False, True, False, True]))
        wy = ops.expand_dims(wy, -1)
        wx = ops.expand_dims(wx, -1)
        weights = ops.where(lower, wy, 1.0 - wy) * ops.where(right, wx, 1.0 - wx)
        weights = ops.where(ops.expand_dims(inside, -1), weights, 0.0)
        return ops.sum(values * ops.expand_dims(weights, -1), axis=-2)

    def compute_output_shape(self, input_shape):
        return conv2d_output_shape(input_shape, self.filters, self.kernel_size, self.strides,
                                   self.padding, self.dilation_rate, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update(
            config_entries(
                self,
                CONV2D_ARGUMENTS
                + ("use_bias", "activation", "kernel_initializer", "bias_initializer",
                   "kernel_regularizer", "bias_regularizer", "offset_kernel_initializer",
                   "offset_kernel_regularizer"),
            )
        )
        return config
