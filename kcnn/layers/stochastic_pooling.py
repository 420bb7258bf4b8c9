"""Stochastic pooling (Zeiler & Fergus, 2013)."""

from __future__ import annotations

import keras
from keras import ops

from kcnn.layers._utils import (
    conv_output_length,
    from_channels_last,
    normalize_tuple,
    pool_windows,
    standardize_data_format,
    standardize_padding,
    to_channels_last,
)

# Below this, a pooling window's mean counts as zero (all its inputs are 0).
_TINY = 1e-30


@keras.saving.register_keras_serializable(package="kcnn")
class StochasticPooling2D(keras.layers.Layer):
    """Stochastic pooling for 2D feature maps.

    In training, each pooling window ``R`` outputs one of its activations,
    drawn at random with probability proportional to its value:

    ```
    p_i = a_i / sum_{j in R} a_j,      output = a_k  with  k ~ Multinomial(p)
    ```

    Only the drawn element receives the gradient, as in max pooling (which
    always draws the largest). At inference the layer outputs the expected
    value of the draw, the probability-weighted average

    ```
    sum_{i in R} p_i * a_i = sum_{i in R} a_i**2 / sum_{i in R} a_i
    ```

    computed as ``avg_pool(a**2) / avg_pool(a)``, which uses builtin
    operations only and converts to TFLite as two average poolings and a
    division.

    Inputs are meant to be non-negative (the output of a ReLU); negative
    values are clamped to 0 before pooling, so they are never drawn and never
    contribute. A window of zeros outputs 0 (and passes a zero gradient), in
    both modes. With ``padding="same"`` the windows that overlap the border
    are padded with zeros, which are never drawn either. The arithmetic runs
    in float32 and the result is cast to the compute dtype.

    Args:
        pool_size: Integer or tuple of 2 integers, the window size.
            Defaults to ``(2, 2)``.
        strides: Integer, tuple of 2 integers, or ``None`` (same as
            ``pool_size``). Defaults to ``None``.
        padding: ``"valid"`` or ``"same"`` (case-insensitive).
            Defaults to ``"valid"``.
        data_format: ``"channels_last"`` or ``"channels_first"``; ``None``
            uses ``keras.config.image_data_format()``.
        seed: Optional integer seed of the layer's random draws.
        **kwargs: Base layer keyword arguments, such as ``name`` and ``dtype``.

    Call arguments:
        inputs: A 4D tensor.
        training: Python boolean: sample (``True``) or take the expectation
            (``False``, the default).

    Input shape:
        ``(batch, height, width, channels)`` for ``"channels_last"``,
        ``(batch, channels, height, width)`` for ``"channels_first"``.

    Output shape:
        ``(batch, out_height, out_width, channels)`` (channels last) or
        ``(batch, channels, out_height, out_width)`` (channels first), with
        ``out = floor((size - pool) / stride) + 1`` for ``"valid"`` and
        ``out = ceil(size / stride)`` for ``"same"``.

    Example:

    >>> x = keras.ops.relu(keras.random.normal((4, 8, 8, 3)))
    >>> layer = StochasticPooling2D(pool_size=2, seed=0)
    >>> keras.ops.shape(layer(x, training=True))
    (4, 4, 4, 3)

    Reference:
        - [Zeiler & Fergus, 2013. Stochastic Pooling for Regularization of
          Deep Convolutional Neural Networks](https://arxiv.org/abs/1301.3557)
    """

    def __init__(
        self,
        pool_size=(2, 2),
        strides=None,
        padding="valid",
        data_format=None,
        seed=None,
        **kwargs,
    ):
        pool_size = normalize_tuple(pool_size, 2, "pool_size")
        strides = pool_size if strides is None else normalize_tuple(strides, 2, "strides")
        padding = standardize_padding(padding)
        data_format = standardize_data_format(data_format)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        super().__init__(**kwargs)
        self.pool_size = pool_size
        self.strides = strides
        self.padding = padding
        self.data_format = data_format
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        height, width = self._spatial(input_shape)
        if self.padding == "valid":
            for size, pool, name in (
                (height, self.pool_size[0], "height"),
                (width, self.pool_size[1], "width"),
            ):
                if size is not None and size < pool:
                    raise ValueError(
                        f"With padding='valid' the input {name} must be at least "
                        f"the pool size {self.pool_size}. "
                        f"Received: input_shape={tuple(input_shape)}"
                    )

    def _spatial(self, shape):
        if self.data_format == "channels_first":
            return shape[2], shape[3]
        return shape[1], shape[2]

    def call(self, inputs, training=False):
        x = to_channels_last(inputs, self.data_format)
        x = ops.relu(ops.cast(x, "float32"))
        if training:
            outputs = self._sample(x)
        else:
            outputs = self._expectation(x)
        outputs = from_channels_last(outputs, self.data_format)
        return ops.cast(outputs, self.compute_dtype)

    def _expectation(self, x):
        """``sum a**2 / sum a`` per window, via two average poolings."""
        kwargs = dict(
            pool_size=self.pool_size,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
        )
        mean_square = ops.average_pool(ops.square(x), **kwargs)
        mean = ops.average_pool(x, **kwargs)
        # Both means share the same divisor (the count of non-padded
        # elements), so it cancels. An all-zero window has mean_square == 0.
        return mean_square / ops.maximum(mean, _TINY)

    def _sample(self, x):
        """One draw per window; the output is ``sum_k mask_k * a_k``.

        The windows' elements are visited as ``K = ph * pw`` tensors of
        output shape (``pool_windows``). With the running sums
        ``cum_k = a_0 + ... + a_k`` and a threshold ``t = u * cum_{K-1}``
        with ``u ~ U[0, 1)``, element ``k`` is drawn when
        ``cum_{k-1} <= t < cum_k``, which happens with probability
        ``a_k / sum a``. The indicators ``[cum_k > t]`` are monotone in ``k``,
        so their successive differences form a one-hot mask. Zeros are never
        drawn (``cum_k == cum_{k-1}``), and an all-zero window gets an
        all-zero mask. The mask is a constant for differentiation, so the
        gradient reaches the drawn element only.
        """
        views = pool_windows(x, self.pool_size, self.strides, self.padding)
        total = None
        running = []
        for view in views:
            value = ops.stop_gradient(view)
            total = value if total is None else total + value
            running.append(total)
        u = keras.random.uniform(ops.shape(total), dtype="float32", seed=self.seed_generator)
        threshold = u * total
        outputs = None
        previous = None
        for view, cum in zip(views, running):
            above = ops.cast(cum > threshold, "float32")
            mask = above if previous is None else above - previous
            previous = above
            term = ops.stop_gradient(mask) * view
            outputs = term if outputs is None else outputs + term
        return outputs

    def compute_output_shape(self, input_shape):
        height, width = self._spatial(input_shape)
        out_height = conv_output_length(height, self.pool_size[0], self.strides[0], self.padding)
        out_width = conv_output_length(width, self.pool_size[1], self.strides[1], self.padding)
        if self.data_format == "channels_first":
            return (input_shape[0], input_shape[1], out_height, out_width)
        return (input_shape[0], out_height, out_width, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pool_size": self.pool_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "seed": self.seed,
            }
        )
        return config
