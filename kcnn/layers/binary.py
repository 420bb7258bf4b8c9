"""Layers with binary weights (XNOR-Net style, weights only): ``BinaryConv2D``, ``BinaryDense``."""

from __future__ import annotations

import numbers

import keras
from keras import ops

from kcnn.layers._utils import (
    CONV2D_ARGUMENTS,
    channel_axis,
    check_positive_int,
    check_strides_or_dilation,
    config_entries,
    conv2d_output_shape,
    normalize_tuple,
    standardize_data_format,
    standardize_padding,
)


def _check_gradient_clip(value):
    if value is None:
        return None
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and value == value
        and 0 < value < float("inf")
    )
    if not ok:
        raise ValueError(
            "`gradient_clip` must be a finite number > 0, or None. "
            f"Received: gradient_clip={value!r}"
        )
    return float(value)


def binarize(kernel, scale=True, gradient_clip=1.0):
    """Binary weights with a straight-through gradient.

    Forward: ``sign(W) · α`` where ``sign(0) = +1`` and, when ``scale`` is true,
    ``α`` is the mean of ``|W|`` over every axis but the last (one value per
    output channel, XNOR-Net's optimal scale for weights). Without ``scale``
    the forward pass is ``sign(W)`` (BinaryConnect).

    Backward (straight-through estimator): the gradient reaches ``W`` unchanged
    where ``|W| <= gradient_clip`` and is zero elsewhere (the "hard tanh" STE of
    Courbariaux et al.; ``gradient_clip=None`` passes it everywhere). ``α`` is
    treated as a constant in the backward pass.

    The forward value is exactly ``sign(W) · α``:
    ``stop_gradient(sign(W)·α) + (p - stop_gradient(p))`` with ``p`` the
    (clipped) real weights adds an exact zero.
    """
    dtype = kernel.dtype
    w = ops.cast(kernel, "float32")  # the scale is a reduction: compute it in float32
    signs = ops.where(w >= 0, ops.ones_like(w), -ops.ones_like(w))
    if scale:
        axes = tuple(range(len(w.shape) - 1))
        signs = signs * ops.mean(ops.abs(w), axis=axes, keepdims=True)
    proxy = w if gradient_clip is None else ops.clip(w, -gradient_clip, gradient_clip)
    out = ops.stop_gradient(signs) + (proxy - ops.stop_gradient(proxy))
    return ops.cast(out, dtype)


class _BinaryBase(keras.layers.Layer):
    """Arguments and weights shared by the binary layers."""

    def __init__(
        self,
        activation=None,
        use_bias=True,
        scale=True,
        gradient_clip=1.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.scale = bool(scale)
        self.gradient_clip = _check_gradient_clip(gradient_clip)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    def _add_weights(self, kernel_shape, out_channels):
        self.kernel = self.add_weight(
            name="kernel",
            shape=kernel_shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(out_channels,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )

    def binary_kernel(self):
        """The kernel the forward pass uses: ``sign(W)·α`` (or ``sign(W)``)."""
        return binarize(self.kernel, self.scale, self.gradient_clip)

    def _bias_and_activation(self, outputs, bias_shape=None):
        """Adds the bias (reshaped to ``bias_shape`` if given), then the activation."""
        if self.use_bias:
            bias = self.bias if bias_shape is None else ops.reshape(self.bias, bias_shape)
            outputs = outputs + bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            config_entries(
                self,
                ("activation", "use_bias", "scale", "gradient_clip", "kernel_initializer",
                 "bias_initializer", "kernel_regularizer", "bias_regularizer",
                 "kernel_constraint", "bias_constraint"),
            )
        )
        return config


@keras.saving.register_keras_serializable(package="kcnn")
class BinaryConv2D(_BinaryBase):
    """2D convolution whose weights are binarized in the forward pass.

    The layer keeps real-valued weights ``W`` (what the optimizer updates) and
    convolves with their binary version (XNOR-Net, weights only; inputs stay
    real):

    ```
    α[o]  = mean(|W[:, :, :, o]|)              (one scale per output channel)
    Wb    = sign(W) · α                          sign(0) = +1
    y     = activation(conv(x, Wb) + b)
    dL/dW = dL/dWb · 1[|W| <= gradient_clip]     (straight-through estimator)
    ```

    Stored packed, a kernel needs one bit per weight plus one float32 ``α``
    per output channel (``kcnn.compress.binary.weight_storage``), about 32×
    less than float32.

    Args:
        filters: Positive integer, the number of output channels.
        kernel_size: Int or tuple of 2 ints, the window size.
        strides: Int or tuple of 2 ints. Defaults to 1.
        padding: ``"valid"`` or ``"same"``. Defaults to ``"valid"``.
        dilation_rate: Int or tuple of 2 ints. Defaults to 1.
        data_format: ``"channels_last"``, ``"channels_first"`` or None (the
            Keras default).
        activation: Activation applied after the bias. Defaults to None.
        use_bias: Whether to add a (real-valued) bias. Defaults to True.
        scale: Multiply the signs by ``α`` (XNOR-Net); False gives plain
            ``±1`` weights (BinaryConnect). Defaults to True.
        gradient_clip: The STE passes the gradient where ``|W| <=
            gradient_clip`` (BinaryConnect's hard-tanh estimator); None passes it
            everywhere. Defaults to 1.0.
        kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, kernel_constraint, bias_constraint: As for ``Conv2D``;
            they act on the real-valued weights.
        **kwargs: Base layer keyword arguments, such as ``name`` and ``dtype``.

    Call arguments:
        inputs: A 4D tensor.

    Input shape:
        ``(batch, height, width, channels)`` (channels last) or
        ``(batch, channels, height, width)``.

    Output shape:
        ``(batch, new_height, new_width, filters)`` (channels last).

    Example:

    >>> x = keras.random.normal((2, 8, 8, 3))
    >>> BinaryConv2D(16, 3, padding="same")(x).shape
    (2, 8, 8, 16)

    Reference:
        - [Rastegari et al., 2016](https://arxiv.org/abs/1603.05279), XNOR-Net
        - [Courbariaux, Bengio & David, 2015](https://arxiv.org/abs/1511.00363),
          BinaryConnect
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        dilation_rate=(1, 1),
        data_format=None,
        activation=None,
        use_bias=True,
        scale=True,
        gradient_clip=1.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(
            activation=activation,
            use_bias=use_bias,
            scale=scale,
            gradient_clip=gradient_clip,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        self.filters = check_positive_int(filters, "filters")
        self.kernel_size = normalize_tuple(kernel_size, 2, "kernel_size")
        self.strides = normalize_tuple(strides, 2, "strides")
        self.padding = standardize_padding(padding)
        self.dilation_rate = normalize_tuple(dilation_rate, 2, "dilation_rate")
        self.data_format = standardize_data_format(data_format)
        check_strides_or_dilation(self.strides, self.dilation_rate)
        self._channel_axis = channel_axis(self.data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = input_shape[self._channel_axis]
        if channels is None:
            raise ValueError(
                "The channel dimension of the inputs to `BinaryConv2D` must be known. "
                f"Received: input_shape={input_shape}"
            )
        self._add_weights((*self.kernel_size, int(channels), self.filters), self.filters)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={self._channel_axis: channels})

    def call(self, inputs):
        outputs = ops.conv(
            inputs,
            self.binary_kernel(),
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
        )
        bias_shape = None if self.data_format == "channels_last" else (1, self.filters, 1, 1)
        return self._bias_and_activation(outputs, bias_shape)

    def compute_output_shape(self, input_shape):
        return conv2d_output_shape(input_shape, self.filters, self.kernel_size, self.strides,
                                   self.padding, self.dilation_rate, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update(config_entries(self, CONV2D_ARGUMENTS))
        return config


@keras.saving.register_keras_serializable(package="kcnn")
class BinaryDense(_BinaryBase):
    """Fully connected layer whose weights are binarized in the forward pass.

    ```
    α[o]  = mean(|W[:, o]|)                    (one scale per output unit)
    Wb    = sign(W) · α                          sign(0) = +1
    y     = activation(x @ Wb + b)
    dL/dW = dL/dWb · 1[|W| <= gradient_clip]     (straight-through estimator)
    ```

    Args:
        units: Positive integer, the output size.
        activation: Activation applied after the bias. Defaults to None.
        use_bias: Whether to add a (real-valued) bias. Defaults to True.
        scale: Multiply the signs by ``α`` (XNOR-Net); False gives plain
            ``±1`` weights (BinaryConnect). Defaults to True.
        gradient_clip: The STE passes the gradient where ``|W| <=
            gradient_clip``; None passes it everywhere. Defaults to 1.0.
        kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, kernel_constraint, bias_constraint: As for ``Dense``.
        **kwargs: Base layer keyword arguments, such as ``name`` and ``dtype``.

    Call arguments:
        inputs: A tensor of rank >= 2.

    Input shape:
        ``(batch, ..., input_dim)``.

    Output shape:
        ``(batch, ..., units)``.

    Example:

    >>> BinaryDense(4)(keras.random.normal((2, 16))).shape
    (2, 4)

    Reference:
        - [Rastegari et al., 2016](https://arxiv.org/abs/1603.05279), XNOR-Net
        - [Courbariaux, Bengio & David, 2015](https://arxiv.org/abs/1511.00363),
          BinaryConnect
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        scale=True,
        gradient_clip=1.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(
            activation=activation,
            use_bias=use_bias,
            scale=scale,
            gradient_clip=gradient_clip,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        self.units = check_positive_int(units, "units")
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(
                "The last dimension of the inputs to `BinaryDense` must be known. "
                f"Received: input_shape={input_shape}"
            )
        self._add_weights((int(dim), self.units), self.units)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: dim})

    def call(self, inputs):
        return self._bias_and_activation(ops.matmul(inputs, self.binary_kernel()))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        return config
