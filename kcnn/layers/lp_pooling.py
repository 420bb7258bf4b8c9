"""Lp pooling: pooling as a normalised p-norm of each window."""

from __future__ import annotations

import keras
from keras import ops

from kcnn.layers._pooling import BasePooling2D
from kcnn.layers._utils import (
    check_positive_number,
    from_channels_last,
    pool_windows,
    to_channels_last,
    window_counts,
)


@keras.saving.register_keras_serializable(package="kcnn")
class LpPooling2D(BasePooling2D):
    """Lp pooling for 2D feature maps.

    Each window ``R`` is summarised by the power mean of its magnitudes:

    ```
    output = (sum_{i in R} |a_i| ** p / |R|) ** (1 / p)
    ```

    ``p = 1`` is average pooling of ``|a|``, ``p = 2`` the root mean square,
    and as ``p`` grows the result tends to the largest magnitude (max
    pooling): ``max|a| * |R| ** (-1/p) <= output <= max|a|``. Lp pooling sits
    between the two, and ``p`` sets how selective it is (Sermanet et al.
    found ``p`` around 2 to 4 best on house numbers).

    To stay finite for large ``p``, each window is first divided by its
    largest magnitude ``m``: ``output = m * (mean (|a_i| / m) ** p) ** (1/p)``,
    whose powers all lie in ``[0, 1]``, and the arithmetic runs in float32
    whatever the dtype policy. A window of zeros outputs 0 with a finite
    gradient. With ``padding="same"``, ``|R|`` counts only the real elements
    of a window that overlaps the border (as ``AveragePooling2D`` does).

    Args:
        p: Number >= 1, the exponent. Defaults to 2.
        pool_size: Integer or tuple of 2 integers, the window size.
            Defaults to ``(2, 2)``.
        strides: Integer, tuple of 2 integers, or ``None`` (same as
            ``pool_size``). Defaults to ``None``.
        padding: ``"valid"`` or ``"same"`` (case-insensitive).
            Defaults to ``"valid"``.
        data_format: ``"channels_last"`` or ``"channels_first"``; ``None``
            uses ``keras.config.image_data_format()``.
        **kwargs: Base layer keyword arguments, such as ``name`` and ``dtype``.

    Call arguments:
        inputs: A 4D tensor; only the magnitudes ``|a|`` of its values count.

    Input shape:
        ``(batch, height, width, channels)`` for ``"channels_last"``,
        ``(batch, channels, height, width)`` for ``"channels_first"``.

    Output shape:
        ``(batch, out_height, out_width, channels)`` (channels last) or
        ``(batch, channels, out_height, out_width)`` (channels first), with
        ``out = floor((size - pool) / stride) + 1`` for ``"valid"`` and
        ``out = ceil(size / stride)`` for ``"same"``.

    Example:

    >>> x = keras.random.normal((2, 8, 8, 3))
    >>> keras.ops.shape(LpPooling2D(p=3, pool_size=2)(x))
    (2, 4, 4, 3)

    Reference:
        - [Sermanet, Chintala & LeCun, 2012. Convolutional Neural Networks
          Applied to House Numbers Digit Classification](
          https://arxiv.org/abs/1204.3968)
        - [Boureau, Ponce & LeCun, 2010. A Theoretical Analysis of Feature
          Pooling in Visual Recognition](
          https://icml.cc/Conferences/2010/papers/638.pdf)
    """

    def __init__(
        self,
        p=2.0,
        pool_size=(2, 2),
        strides=None,
        padding="valid",
        data_format=None,
        **kwargs,
    ):
        p = check_positive_number(p, "p", minimum=1.0, inclusive=True)
        super().__init__(
            pool_size=pool_size, strides=strides, padding=padding, data_format=data_format, **kwargs
        )
        self.p = p

    def call(self, inputs):
        x = to_channels_last(inputs, self.data_format)
        x = ops.abs(ops.cast(x, "float32"))
        views = pool_windows(x, self.pool_size, self.strides, self.padding)
        count = window_counts(x, self.pool_size, self.strides, self.padding)
        if self.p == 1.0:
            outputs = _sum(views) / count
        else:
            outputs = self._scaled_power_mean(views, count)
        outputs = from_channels_last(outputs, self.data_format)
        return ops.cast(outputs, self.compute_dtype)

    def _scaled_power_mean(self, views, count):
        largest = views[0]
        for view in views[1:]:
            largest = ops.maximum(largest, view)
        nonzero = largest > 0
        scale = ops.where(nonzero, largest, 1.0)
        powered = [self._power(view / scale) for view in views]
        mean = _sum(powered) / count
        # The window's largest element contributes 1, so mean >= 1 / |R| > 0
        # except in all-zero windows, which take the harmless value 1 here.
        mean = ops.where(nonzero, mean, 1.0)
        return largest * self._root(mean)

    def _power(self, r):
        if self.p == 2.0:
            return ops.square(r)
        return ops.power(r, self.p)

    def _root(self, m):
        if self.p == 2.0:
            return ops.sqrt(m)
        return ops.power(m, 1.0 / self.p)

    def get_config(self):
        config = super().get_config()
        config["p"] = self.p
        return config


def _sum(tensors):
    total = tensors[0]
    for tensor in tensors[1:]:
        total = total + tensor
    return total
