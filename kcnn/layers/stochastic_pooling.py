"""Stochastic pooling (Zeiler & Fergus, 2013)."""

from __future__ import annotations

import keras
from keras import ops

from kcnn.layers._pooling import BasePooling2D
from kcnn.layers._utils import from_channels_last, pool_windows, to_channels_last

# Below this, a pooling window's mean counts as zero (all its inputs are 0).
_TINY = 1e-30


@keras.saving.register_keras_serializable(package="kcnn")
class StochasticPooling2D(BasePooling2D):
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
        pool_size, strides, padding, data_format: The pooling windows, as
            for ``AveragePooling2D``. ``pool_size``: an int or 2 ints,
            default ``(2, 2)``. ``strides``: an int, 2 ints, or ``None`` (the
            default: ``pool_size``). ``padding``: ``"valid"`` (the default)
            or ``"same"``, case-insensitive. ``data_format``:
            ``"channels_last"``, ``"channels_first"`` or ``None`` (the
            default: ``keras.config.image_data_format()``).
        seed: Optional integer seed of the layer's random draws.
        **kwargs: Base layer keyword arguments, such as ``name`` and ``dtype``.

    Call arguments:
        inputs: A 4D tensor, meant to be non-negative (negatives count as 0).
        training: Python boolean: sample (``True``) or take the expectation
            (``False``, the default).

    Input shape:
        ``(batch, height, width, channels)`` for ``"channels_last"``,
        ``(batch, channels, height, width)`` for ``"channels_first"``.

    Output shape:
        That of ``AveragePooling2D`` with the same arguments: the channels
        are kept, and each spatial size becomes
        ``floor((size - pool) / stride) + 1`` (``"valid"``) or
        ``ceil(size / stride)`` (``"same"``).

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
        super().__init__(
            pool_size=pool_size, strides=strides, padding=padding, data_format=data_format, **kwargs
        )
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

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

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config
