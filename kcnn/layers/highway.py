"""Highway layers (Srivastava, Greff & Schmidhuber, 2015): dense and convolutional."""

from __future__ import annotations

import numbers

import keras
from keras import ops

from kcnn.layers._utils import (
    channel_axis,
    check_positive_int,
    config_entries,
    known_size,
    normalize_tuple,
    standardize_data_format,
)


def highway_gate_bias(depth):
    """Initial transform-gate bias for a highway network of ``depth`` layers.

    Srivastava et al. initialise the transform-gate bias negative so that at
    the start every layer mostly *carries* its input through, and deeper
    networks need a more negative start: they used -1, -2 and -3 for
    networks about 10, 20 and 30 layers deep. This helper returns those
    values, rounding ``depth`` to the nearest ten and staying at -3 beyond:

    ```
    depth < 15 -> -1.0      15 <= depth < 25 -> -2.0      depth >= 25 -> -3.0
    ```

    Args:
        depth: Positive integer, the number of highway layers.

    Returns:
        The bias as a float, to pass as ``transform_gate_bias``.

    Example:

    >>> highway_gate_bias(20)
    -2.0
    """
    check_positive_int(depth, "depth")
    if depth < 15:
        return -1.0
    if depth < 25:
        return -2.0
    return -3.0


def _check_gate_bias(value):
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and value == value
        and abs(value) != float("inf")
    )
    if not ok:
        raise ValueError(
            "`transform_gate_bias` must be a finite number. "
            f"Received: transform_gate_bias={value!r}"
        )
    return float(value)


class _Highway(keras.layers.Layer):
    """What the highway layers share: the arguments of ``H`` and ``T``, their
    weights, and the mixing rule ``y = x + T(x) * (H(x) - x)``.

    A subclass builds its weights with ``_add_highway_weights`` and says how
    one affine map (a matrix product or a convolution, plus a bias) applies,
    in ``_affine``.
    """

    def __init__(
        self,
        activation,
        transform_gate_bias,
        kernel_initializer,
        bias_initializer,
        kernel_regularizer,
        bias_regularizer,
        **kwargs,
    ):
        transform_gate_bias = _check_gate_bias(transform_gate_bias)
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)
        self.transform_gate_bias = transform_gate_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    def _add_highway_weights(self, kernel_shape, width):
        """``H``'s kernel and bias, then the gate's; the gate bias starts at ``b_T``."""
        kernel_args = dict(shape=kernel_shape, initializer=self.kernel_initializer,
                           regularizer=self.kernel_regularizer)
        bias_args = dict(shape=(width,), regularizer=self.bias_regularizer)
        gate_bias_initializer = keras.initializers.Constant(self.transform_gate_bias)
        self.kernel = self.add_weight(name="kernel", **kernel_args)
        self.bias = self.add_weight(name="bias", initializer=self.bias_initializer, **bias_args)
        self.gate_kernel = self.add_weight(name="gate_kernel", **kernel_args)
        self.gate_bias = self.add_weight(
            name="gate_bias", initializer=gate_bias_initializer, **bias_args
        )

    def _affine(self, x, kernel, bias):
        raise NotImplementedError

    def call(self, inputs):
        transformed = self.activation(self._affine(inputs, self.kernel, self.bias))
        gate = ops.sigmoid(self._affine(inputs, self.gate_kernel, self.gate_bias))
        # H*T + x*(1 - T) written as x + T*(H - x): one product fewer.
        return inputs + gate * (transformed - inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            config_entries(
                self,
                ("activation", "transform_gate_bias", "kernel_initializer", "bias_initializer",
                 "kernel_regularizer", "bias_regularizer"),
            )
        )
        return config


@keras.saving.register_keras_serializable(package="kcnn")
class HighwayDense(_Highway):
    """Fully connected highway layer.

    A plain layer ``H`` whose output is mixed with its input by a learned,
    input-dependent *transform gate* ``T``:

    ```
    H(x) = activation(x W_H + b_H)
    T(x) = sigmoid(x W_T + b_T)
    y    = H(x) * T(x) + x * (1 - T(x))
    ```

    ``1 - T`` is the *carry gate*. With ``T`` near 0 the layer passes its
    input through unchanged, which lets very deep stacks train with plain
    SGD. The gate bias ``b_T`` therefore starts negative
    (``transform_gate_bias``, -1 by default; see ``highway_gate_bias`` for
    the paper's depth-dependent values).

    The output has the width of the input. ``units`` is optional and only
    checked: if given it must equal the input width.

    Args:
        activation: Activation of ``H`` (name or callable). Defaults to
            ``"relu"``.
        transform_gate_bias: Float, the initial value of ``b_T``.
            Defaults to -1.
        units: Optional integer, the expected input (and output) width.
        kernel_initializer: Initializer of ``W_H`` and ``W_T``.
            Defaults to ``"glorot_uniform"``.
        bias_initializer: Initializer of ``b_H``. Defaults to ``"zeros"``.
        kernel_regularizer: Optional regularizer of ``W_H`` and ``W_T``.
        bias_regularizer: Optional regularizer of ``b_H`` and ``b_T``.
        **kwargs: Base layer keyword arguments, such as ``name`` and ``dtype``.

    Call arguments:
        inputs: A tensor of rank >= 2.

    Input shape:
        ``(..., width)`` with a known ``width``.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.random.normal((4, 32))
    >>> keras.ops.shape(HighwayDense(activation="relu", transform_gate_bias=-2.0)(x))
    (4, 32)

    Reference:
        - [Srivastava, Greff & Schmidhuber, 2015. Training Very Deep
          Networks](https://arxiv.org/abs/1507.06228)
        - [Srivastava, Greff & Schmidhuber, 2015. Highway Networks](
          https://arxiv.org/abs/1505.00387)
    """

    def __init__(
        self,
        activation="relu",
        transform_gate_bias=-1.0,
        units=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        units = check_positive_int(units, "units", allow_none=True)
        super().__init__(
            activation=activation,
            transform_gate_bias=transform_gate_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            **kwargs,
        )
        self.units = units
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        width = known_size(input_shape, -1, "last axis")
        if self.units is not None and self.units != width:
            raise ValueError(
                "A highway layer keeps the width of its input, so `units` must "
                f"equal the input width {width} (or be None). Received: units={self.units}"
            )
        self._add_highway_weights((width, width), width)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: width})

    def _affine(self, x, kernel, bias):
        return ops.matmul(x, kernel) + bias

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        return config


@keras.saving.register_keras_serializable(package="kcnn")
class HighwayConv2D(_Highway):
    """Convolutional highway layer.

    The highway rule of ``HighwayDense`` with convolutions: ``H`` and the
    transform gate ``T`` are ``kernel_size`` convolutions with ``"same"``
    padding and stride 1, so the output keeps the input's height, width and
    channels:

    ```
    H(x) = activation(conv(x, K_H) + b_H)
    T(x) = sigmoid(conv(x, K_T) + b_T)
    y    = H(x) * T(x) + x * (1 - T(x))
    ```

    The gate bias ``b_T`` starts at ``transform_gate_bias`` (-1 by default;
    see ``highway_gate_bias``). ``filters`` is optional and only checked: if
    given it must equal the number of input channels.

    Args:
        kernel_size: Integer or tuple of 2 integers. Defaults to 3.
        activation: Activation of ``H`` (name or callable). Defaults to
            ``"relu"``.
        transform_gate_bias: Float, the initial value of ``b_T``.
            Defaults to -1.
        filters: Optional integer, the expected number of input (and output)
            channels.
        dilation_rate: Integer or tuple of 2 integers. Defaults to 1.
        data_format: ``"channels_last"`` or ``"channels_first"``; ``None``
            uses ``keras.config.image_data_format()``.
        kernel_initializer: Initializer of ``K_H`` and ``K_T``.
            Defaults to ``"glorot_uniform"``.
        bias_initializer: Initializer of ``b_H``. Defaults to ``"zeros"``.
        kernel_regularizer: Optional regularizer of ``K_H`` and ``K_T``.
        bias_regularizer: Optional regularizer of ``b_H`` and ``b_T``.
        **kwargs: Base layer keyword arguments, such as ``name`` and ``dtype``.

    Call arguments:
        inputs: A 4D tensor, the input of ``H`` and ``T`` and the part that
            the carry gate passes through.

    Input shape:
        ``(batch, height, width, channels)`` for ``"channels_last"``,
        ``(batch, channels, height, width)`` for ``"channels_first"``.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.random.normal((2, 8, 8, 16))
    >>> keras.ops.shape(HighwayConv2D(kernel_size=3)(x))
    (2, 8, 8, 16)

    Reference:
        - [Srivastava, Greff & Schmidhuber, 2015. Training Very Deep
          Networks](https://arxiv.org/abs/1507.06228)
    """

    def __init__(
        self,
        kernel_size=3,
        activation="relu",
        transform_gate_bias=-1.0,
        filters=None,
        dilation_rate=1,
        data_format=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        kernel_size = normalize_tuple(kernel_size, 2, "kernel_size")
        dilation_rate = normalize_tuple(dilation_rate, 2, "dilation_rate")
        filters = check_positive_int(filters, "filters", allow_none=True)
        data_format = standardize_data_format(data_format)
        super().__init__(
            activation=activation,
            transform_gate_bias=transform_gate_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            **kwargs,
        )
        self.kernel_size = kernel_size
        self.filters = filters
        self.dilation_rate = dilation_rate
        self.data_format = data_format
        self._channel_axis = channel_axis(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = known_size(input_shape, self._channel_axis)
        if self.filters is not None and self.filters != channels:
            raise ValueError(
                "A highway layer keeps the width of its input, so `filters` must "
                f"equal the number of input channels {channels} (or be None). "
                f"Received: filters={self.filters}"
            )
        self._add_highway_weights((*self.kernel_size, channels, channels), channels)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={self._channel_axis: channels})

    def _affine(self, x, kernel, bias):
        y = ops.conv(
            x,
            kernel,
            strides=1,
            padding="same",
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
        )
        if self.data_format == "channels_first":
            bias = ops.reshape(bias, (1, -1, 1, 1))
        return y + bias

    def get_config(self):
        config = super().get_config()
        config.update(
            config_entries(self, ("kernel_size", "filters", "dilation_rate", "data_format"))
        )
        return config
