"""The mlpconv block of Network in Network (Lin, Chen & Yan, 2013)."""

from __future__ import annotations

import numbers

import keras

from kcnn.layers._utils import (
    channel_axis,
    check_bool,
    config_entries,
    conv2d_output_shape,
    conv2d_sublayer,
    known_size,
    normalize_tuple,
    standardize_data_format,
    standardize_padding,
)


@keras.saving.register_keras_serializable(package="kcnn")
class MLPConv2D(keras.layers.Layer):
    """An mlpconv block: a ``k x k`` convolution followed by ``1 x 1`` convolutions.

    Network in Network replaces the linear filter of a convolution by a
    small multilayer perceptron slid over the image. A shared MLP applied to
    every ``k x k`` patch is exactly a ``k x k`` convolution followed by
    ``1 x 1`` convolutions, each with its nonlinearity:

    ```
    z_1 = act(BN(conv_kxk(x, filters[0])))
    z_j = act(BN(conv_1x1(z_{j-1}, filters[j-1])))      j = 2 .. len(filters)
    ```

    (``BN`` only with ``batch_norm=True``; the convolutions then have no
    bias, since BN's offset replaces it.) NIN's CIFAR-10 model stacks three
    such blocks, e.g. ``filters=[192, 160, 96], kernel_size=5``.

    Args:
        filters: List of positive integers: the width of the ``k x k``
            convolution, then of each ``1 x 1`` convolution. A single
            integer means one convolution.
        kernel_size: Integer or tuple of 2 integers, the size of the first
            convolution.
        strides: Integer or tuple of 2 integers, strides of the first
            convolution. Defaults to 1.
        padding: ``"valid"`` or ``"same"``, padding of the first convolution.
            Defaults to ``"same"``.
        batch_norm: Whether to put batch normalization between each
            convolution and its activation. Defaults to False.
        activation: Activation after every convolution. Defaults to
            ``"relu"``.
        data_format: ``"channels_last"`` or ``"channels_first"``; ``None``
            uses ``keras.config.image_data_format()``.
        kernel_initializer: Initializer of every kernel. Defaults to
            ``"he_normal"``.
        kernel_regularizer: Optional regularizer of every kernel.
        **kwargs: Base layer keyword arguments, such as ``name`` and ``dtype``.

    Call arguments:
        inputs: A 4D tensor.
        training: Python boolean, passed to the batch normalization layers
            (only used with ``batch_norm=True``).

    Input shape:
        ``(batch, height, width, channels)`` for ``"channels_last"``,
        ``(batch, channels, height, width)`` for ``"channels_first"``.

    Output shape:
        ``(batch, out_height, out_width, filters[-1])`` (channels last), the
        spatial size being that of the first convolution.

    Example:

    >>> x = keras.random.normal((2, 8, 8, 3))
    >>> keras.ops.shape(MLPConv2D(filters=[32, 16, 16], kernel_size=3)(x))
    (2, 8, 8, 16)

    Reference:
        - [Lin, Chen & Yan, 2013. Network In Network](
          https://arxiv.org/abs/1312.4400)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        batch_norm=False,
        activation="relu",
        data_format=None,
        kernel_initializer="he_normal",
        kernel_regularizer=None,
        **kwargs,
    ):
        if isinstance(filters, numbers.Integral) and not isinstance(filters, bool):
            filters = [filters]
        try:
            filters = list(filters)
        except TypeError:
            filters = None
        if not filters or not all(
            isinstance(f, numbers.Integral) and not isinstance(f, bool) and f > 0 for f in filters
        ):
            raise ValueError(
                "`filters` must be a non-empty list of positive integers. "
                f"Received: filters={filters!r}"
            )
        kernel_size = normalize_tuple(kernel_size, 2, "kernel_size")
        strides = normalize_tuple(strides, 2, "strides")
        padding = standardize_padding(padding)
        data_format = standardize_data_format(data_format)
        batch_norm = check_bool(batch_norm, "batch_norm")
        super().__init__(**kwargs)
        self.filters = [int(f) for f in filters]
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.batch_norm = batch_norm
        self.activation = keras.activations.get(activation)
        self.data_format = data_format
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.convs = []
        self.norms = []

    def build(self, input_shape):
        axis = channel_axis(self.data_format)
        known_size(input_shape, axis)
        shape = tuple(input_shape)
        for index, width in enumerate(self.filters):
            first = index == 0
            conv = conv2d_sublayer(
                self,
                width,
                self.kernel_size if first else 1,
                strides=self.strides if first else 1,
                padding=self.padding if first else "valid",
                use_bias=not self.batch_norm,
                name=f"conv{index}",
            )
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            self.convs.append(conv)
            if self.batch_norm:
                norm = keras.layers.BatchNormalization(
                    axis=axis, dtype=self.dtype_policy, name=f"bn{index}"
                )
                norm.build(shape)
                self.norms.append(norm)

    def call(self, inputs, training=None):
        x = inputs
        for index, conv in enumerate(self.convs):
            x = conv(x)
            if self.batch_norm:
                x = self.norms[index](x, training=training)
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape):
        # The 1x1 convolutions keep the first convolution's spatial size.
        return conv2d_output_shape(input_shape, self.filters[-1], self.kernel_size, self.strides,
                                   self.padding, (1, 1), self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update(
            config_entries(
                self,
                ("filters", "kernel_size", "strides", "padding", "batch_norm", "activation",
                 "data_format", "kernel_initializer", "kernel_regularizer"),
            )
        )
        return config
