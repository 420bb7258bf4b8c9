"""Fake quantization as TFLite's int8 kernels compute, for quantization-aware training.

No maintained Keras 3 library does quantization-aware training of convolutions: the
TensorFlow Model Optimization Toolkit (``tfmot.quantization.keras``) supports Keras 2
only, and Keras 3's own ``Model.quantize`` (int8, int4, float8, GPTQ, AWQ) quantizes
``Dense`` and ``EinsumDense`` for inference and skips convolutions. This module holds
the two pieces :mod:`kcnn.compress.qat` builds on, written with ``keras.ops`` (and
``keras.quantizers``) only:

* :func:`quantize_weights_per_channel` / :func:`fake_quant_weights`: symmetric, one
  scale per output channel, integers in ``[-127, 127]`` (TFLite's int8 convolution and
  fully-connected weights: ``scale_c = max|w_c| / 127``, zero point 0), 255 levels.
* :class:`FakeQuant`: per-tensor, asymmetric, 256 levels ``[-128, 127]`` over a range
  ``[min, max]`` that contains 0 (the nudged range TFLite computes from calibration),
  with ``min`` and ``max`` tracked as moving averages of the batch extremes in training.

Gradients pass straight through the rounding (straight-through estimator); for
activations, values clipped by the range get no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

WEIGHT_LEVELS = 127  # int8 weights: [-127, 127], symmetric


def _reduce_axes(ndim: int, keep_axes: Sequence[int]) -> list[int]:
    keep = {a % ndim for a in keep_axes}
    return [a for a in range(ndim) if a not in keep]


def quantize_weights_per_channel(kernel, keep_axes: Sequence[int] = (-1,)):
    """``kernel`` rounded to int8 levels, one symmetric scale per output channel.

    ``scale = max|w| / 127`` over every axis but ``keep_axes`` (the output channels:
    ``(-1,)`` for Conv2D and Dense kernels, ``(2, 3)`` for a DepthwiseConv2D kernel
    ``(kh, kw, in, multiplier)``); ``q = clip(round(w / scale), -127, 127)`` with ties
    away from zero (as TFLite rounds weights); returns ``q * scale``. A channel of zeros
    stays zero.
    """
    kernel = ops.convert_to_tensor(kernel)
    w = ops.cast(kernel, "float32")
    max_abs = ops.max(ops.abs(w), axis=_reduce_axes(len(w.shape), keep_axes), keepdims=True)
    scale = ops.where(max_abs > 0, max_abs / WEIGHT_LEVELS, ops.ones_like(max_abs))
    scaled = w / scale
    q = ops.clip(ops.sign(scaled) * ops.floor(ops.abs(scaled) + 0.5), -WEIGHT_LEVELS, WEIGHT_LEVELS)
    return ops.cast(q * scale, kernel.dtype)


def fake_quant_weights(kernel, keep_axes: Sequence[int] = (-1,)):
    """:func:`quantize_weights_per_channel` forward, identity backward (straight through)."""
    return kernel + ops.stop_gradient(quantize_weights_per_channel(kernel, keep_axes) - kernel)


@keras.saving.register_keras_serializable(package="kcnn")
class FakeQuant(keras.layers.Layer):
    """Per-tensor asymmetric fake quantization with a moving-average range.

    ``y = (clip(round(x / s) + z, q_min, q_max) - z) * s`` with ``s = (max - min) /
    (2^bits - 1)`` and the zero point ``z`` an integer, the range first nudged to
    contain 0 (``keras.quantizers.fake_quant_with_min_max_vars``; TFLite derives its
    int8 activation scale and zero point the same way from calibrated ranges).

    In training, ``min`` and ``max`` follow the batch minimum and maximum (extended to
    include 0) as exponential moving averages:
    ``min ← momentum · min + (1 − momentum) · batch_min``; the first training batch (or
    :meth:`observe`) initializes them. At inference the stored range is used; before any
    range is known the layer passes its input through.

    :meth:`observe` switches the layer to recording instead: it passes inputs through
    and widens the range to the global minimum and maximum it sees (what the TFLite
    calibrator records), for eager calls.

    Args:
        momentum: moving-average momentum of the range, in ``[0, 1)``.
        num_bits: bits of the quantized integer, 2 to 16 (8: int8 ``[-128, 127]``).
        **kwargs: base layer keyword arguments (``name``, ``dtype``).

    Call arguments:
        inputs: a float tensor of any shape.
        training: update the range from this batch (Keras sets it in ``fit``).

    Input shape: any. Output shape: the input's.

    Example:
        >>> x = keras.layers.Conv2D(8, 3, activation="relu")(keras.Input((8, 8, 1)))
        >>> x = FakeQuant(name="conv_fq")(x)

    Reference:
        Jacob et al., "Quantization and Training of Neural Networks for Efficient
        Integer-Arithmetic-Only Inference", CVPR 2018.
    """

    def __init__(self, momentum: float = 0.99, num_bits: int = 8, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum}")
        if not isinstance(num_bits, int) or isinstance(num_bits, bool) or not 2 <= num_bits <= 16:
            raise ValueError(f"`num_bits` must be an integer in [2, 16]. Received: num_bits={num_bits}")
        self.momentum = float(momentum)
        self.num_bits = num_bits
        self.observing = False
        self.supports_masking = True

    def build(self, input_shape):
        def scalar(name):
            return self.add_weight(shape=(), initializer="zeros", trainable=False, name=name,
                                   dtype="float32")

        self.range_min = scalar("range_min")
        self.range_max = scalar("range_max")
        self.initialized = scalar("initialized")  # 0.0 until a range is known

    def observe(self, on: bool = True) -> None:
        """Start (reset the range to [0, 0]) or stop recording the global range."""
        if on:
            self.range_min.assign(0.0)
            self.range_max.assign(0.0)
            self.initialized.assign(1.0)
        self.observing = on

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        batch_min = ops.stop_gradient(ops.minimum(ops.min(x), 0.0))
        batch_max = ops.stop_gradient(ops.maximum(ops.max(x), 0.0))
        if self.observing:
            self.range_min.assign(ops.minimum(self.range_min, batch_min))
            self.range_max.assign(ops.maximum(self.range_max, batch_max))
            return inputs
        if training:
            known = self.initialized > 0
            m = self.momentum
            low = ops.where(known, m * self.range_min + (1.0 - m) * batch_min, batch_min)
            high = ops.where(known, m * self.range_max + (1.0 - m) * batch_max, batch_max)
            self.range_min.assign(low)
            self.range_max.assign(high)
            self.initialized.assign(1.0)
        else:
            low, high = self.range_min, self.range_max
        high = ops.maximum(high, low + 1e-6)  # a constant-zero tensor: any positive width
        y = keras.quantizers.fake_quant_with_min_max_vars(
            x, low, high, num_bits=self.num_bits, narrow_range=False)
        if not training:
            y = ops.where(self.initialized > 0, y, x)
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "num_bits": self.num_bits}
