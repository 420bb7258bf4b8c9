"""Residual blocks of ResNet (He, Zhang, Ren & Sun, 2015): basic and bottleneck."""

from __future__ import annotations

import keras
from keras import ops

from kcnn.layers._utils import (
    channel_axis,
    check_positive_int,
    check_positive_number,
    config_entries,
    conv2d_output_shape,
    conv2d_sublayer,
    known_size,
    normalize_tuple,
    standardize_data_format,
)

_KINDS = ("basic", "bottleneck")
_SHORTCUTS = ("auto", "projection", "zero_pad")
BOTTLENECK_EXPANSION = 4


@keras.saving.register_keras_serializable(package="kcnn")
class ResidualBlock(keras.layers.Layer):
    """A ResNet residual block: ``relu(F(x) + shortcut(x))``.

    ``F`` is a stack of convolutions (no bias), each followed by batch
    normalization, with ReLU between them:

    - ``kind="basic"``: ``3x3 (filters, stride s) -> 3x3 (filters)``;
      output width ``filters``. Used by ResNet-18/34 and the CIFAR ResNets.
    - ``kind="bottleneck"``: ``1x1 (filters) -> 3x3 (filters, stride s) ->
      1x1 (4 * filters)``; output width ``4 * filters``. Used by
      ResNet-50/101/152. The stride sits on the 3x3 convolution (as in
      torchvision, "ResNet v1.5"); the paper put it on the first 1x1. The
      parameter count is the same.

    The shortcut:

    - ``"zero_pad"`` (the paper's option A): identity, subsampled
      ``x[:, ::s, ::s]`` when ``strides > 1``, with zero channels appended
      when the block widens. No parameters. It cannot narrow.
    - ``"projection"`` (option B/C): a ``1x1`` convolution (stride s, no bias)
      and batch normalization, always.
    - ``"auto"``: identity when the input already has the output's width and
      ``strides == 1``, otherwise a projection (option B, the common choice
      for ImageNet ResNets).

    ``y = relu(BN(conv(...)) + shortcut(x))``: the last ReLU comes after the
    addition.

    Args:
        filters: Positive integer, the width of the block's convolutions (the
            output has ``filters`` channels for ``"basic"``,
            ``4 * filters`` for ``"bottleneck"``).
        kind: ``"basic"`` or ``"bottleneck"``. Defaults to ``"basic"``.
        strides: Integer or tuple of 2 integers, the block's subsampling.
            Defaults to 1.
        shortcut: ``"auto"``, ``"projection"`` or ``"zero_pad"``.
            Defaults to ``"auto"``.
        kernel_initializer: Initializer of every kernel. Defaults to
            ``"he_normal"``.
        kernel_regularizer: Optional regularizer of every kernel (weight
            decay).
        bn_momentum: Momentum of the batch normalization moving statistics.
            Defaults to 0.99 (Keras' default; PyTorch's 0.1 is 0.9 here).
        bn_epsilon: Epsilon of the batch normalizations. Defaults to 1e-3.
        data_format: ``"channels_last"`` or ``"channels_first"``; ``None``
            uses ``keras.config.image_data_format()``.
        **kwargs: Base layer keyword arguments, such as ``name`` and ``dtype``.

    Call arguments:
        inputs: A 4D tensor.
        training: Python boolean, passed to the batch normalization layers:
            batch statistics (True) or their moving averages (False or None).

    Input shape:
        ``(batch, height, width, channels)`` for ``"channels_last"``,
        ``(batch, channels, height, width)`` for ``"channels_first"``.

    Output shape:
        ``(batch, ceil(height / s), ceil(width / s), out_channels)`` (channels
        last), ``out_channels`` being ``filters`` or ``4 * filters``.

    Example:

    >>> x = keras.random.normal((2, 8, 8, 16))
    >>> keras.ops.shape(ResidualBlock(32, strides=2, shortcut="zero_pad")(x))
    (2, 4, 4, 32)
    >>> keras.ops.shape(ResidualBlock(16, kind="bottleneck")(x))
    (2, 8, 8, 64)

    Reference:
        - [He, Zhang, Ren & Sun, 2015. Deep Residual Learning for Image
          Recognition](https://arxiv.org/abs/1512.03385)
    """

    def __init__(
        self,
        filters,
        kind="basic",
        strides=1,
        shortcut="auto",
        kernel_initializer="he_normal",
        kernel_regularizer=None,
        bn_momentum=0.99,
        bn_epsilon=1e-3,
        data_format=None,
        **kwargs,
    ):
        filters = check_positive_int(filters, "filters")
        if kind not in _KINDS:
            raise ValueError(f"`kind` must be one of {_KINDS}. Received: kind={kind!r}")
        strides = normalize_tuple(strides, 2, "strides")
        if shortcut not in _SHORTCUTS:
            raise ValueError(
                f"`shortcut` must be one of {_SHORTCUTS}. Received: shortcut={shortcut!r}"
            )
        bn_momentum = check_positive_number(bn_momentum, "bn_momentum", inclusive=True)
        if bn_momentum >= 1.0:
            raise ValueError(
                f"`bn_momentum` must be in [0, 1). Received: bn_momentum={bn_momentum!r}"
            )
        bn_epsilon = check_positive_number(bn_epsilon, "bn_epsilon")
        data_format = standardize_data_format(data_format)
        super().__init__(**kwargs)
        self.filters = filters
        self.kind = kind
        self.strides = strides
        self.shortcut = shortcut
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.data_format = data_format
        self._channel_axis = channel_axis(data_format)
        self.out_channels = self.filters * (BOTTLENECK_EXPANSION if kind == "bottleneck" else 1)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.convs = []
        self.norms = []
        self.shortcut_conv = None
        self.shortcut_norm = None
        self._shortcut_mode = None

    def _conv(self, filters, kernel_size, strides, name):
        return conv2d_sublayer(
            self, filters, kernel_size, strides=strides, padding="same", use_bias=False, name=name
        )

    def _norm(self, name):
        return keras.layers.BatchNormalization(
            axis=self._channel_axis,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, input_shape):
        in_channels = known_size(input_shape, self._channel_axis)
        if self.kind == "basic":
            plan = [(self.filters, 3, self.strides), (self.filters, 3, 1)]
        else:
            plan = [
                (self.filters, 1, 1),
                (self.filters, 3, self.strides),
                (self.out_channels, 1, 1),
            ]
        shape = tuple(input_shape)
        for index, (width, kernel, strides) in enumerate(plan):
            conv = self._conv(width, kernel, strides, f"conv{index}")
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm = self._norm(f"bn{index}")
            norm.build(shape)
            self.convs.append(conv)
            self.norms.append(norm)

        same_shape = in_channels == self.out_channels and self.strides == (1, 1)
        if self.shortcut == "zero_pad":
            if in_channels > self.out_channels:
                raise ValueError(
                    "shortcut='zero_pad' can only keep or widen the channels, but the "
                    f"input has {in_channels} channels and the block outputs "
                    f"{self.out_channels}. Use shortcut='projection'. "
                    f"Received: shortcut={self.shortcut!r}"
                )
            self._shortcut_mode = "identity" if same_shape else "zero_pad"
        elif self.shortcut == "projection" or not same_shape:
            self._shortcut_mode = "projection"
            self.shortcut_conv = self._conv(self.out_channels, 1, self.strides, "shortcut_conv")
            self.shortcut_conv.build(tuple(input_shape))
            self.shortcut_norm = self._norm("shortcut_bn")
            self.shortcut_norm.build(shape)
        else:
            self._shortcut_mode = "identity"
        self._in_channels = int(in_channels)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={self._channel_axis: in_channels})

    def call(self, inputs, training=None):
        x = inputs
        last = len(self.convs) - 1
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(conv(x), training=training)
            if index < last:
                x = ops.relu(x)
        return ops.relu(x + self._shortcut(inputs, training))

    def _shortcut(self, inputs, training):
        if self._shortcut_mode == "identity":
            return inputs
        if self._shortcut_mode == "projection":
            return self.shortcut_norm(self.shortcut_conv(inputs), training=training)
        # Option A: subsample, then append zero channels.
        sh, sw = self.strides
        extra = self.out_channels - self._in_channels
        if self.data_format == "channels_last":
            x = inputs[:, ::sh, ::sw, :]
            pad = [[0, 0], [0, 0], [0, 0], [0, extra]]
        else:
            x = inputs[:, :, ::sh, ::sw]
            pad = [[0, 0], [0, extra], [0, 0], [0, 0]]
        return ops.pad(x, pad) if extra else x

    def compute_output_shape(self, input_shape):
        # Every convolution pads "same", so only the stride changes the spatial size.
        return conv2d_output_shape(input_shape, self.out_channels, (3, 3), self.strides, "same",
                                   (1, 1), self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update(
            config_entries(
                self,
                ("filters", "kind", "strides", "shortcut", "kernel_initializer",
                 "kernel_regularizer", "bn_momentum", "bn_epsilon", "data_format"),
            )
        )
        return config
