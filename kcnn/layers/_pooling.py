"""The arguments, checks and output shape that the kcnn 2-D pooling layers share."""

from __future__ import annotations

import keras

from kcnn.layers._utils import (
    check_window_fits,
    config_entries,
    normalize_tuple,
    pool2d_output_shape,
    standardize_data_format,
    standardize_padding,
)


class BasePooling2D(keras.layers.Layer):
    """Base class of ``LpPooling2D`` and ``StochasticPooling2D``.

    It validates and stores ``pool_size``, ``strides`` (``None`` means
    ``pool_size``), ``padding`` and ``data_format``, checks in ``build`` that a
    ``"valid"`` window fits the input, and computes the output shape. The
    subclasses add their own arguments and ``call``.
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None,
                 **kwargs):
        pool_size = normalize_tuple(pool_size, 2, "pool_size")
        strides = pool_size if strides is None else normalize_tuple(strides, 2, "strides")
        padding = standardize_padding(padding)
        data_format = standardize_data_format(data_format)
        super().__init__(**kwargs)
        self.pool_size = pool_size
        self.strides = strides
        self.padding = padding
        self.data_format = data_format
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        check_window_fits(input_shape, self.padding, self.data_format, self.pool_size,
                          f"pool size {self.pool_size}")

    def compute_output_shape(self, input_shape):
        return pool2d_output_shape(input_shape, self.pool_size, self.strides, self.padding,
                                   self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update(config_entries(self, ("pool_size", "strides", "padding", "data_format")))
        return config
