"""Local response normalization across channels (AlexNet)."""

from __future__ import annotations

import numbers

import keras
import numpy as np
from keras import ops

from kcnn.layers._utils import check_positive_number, config_entries, known_size

_ALPHA_MODES = ("sum", "mean")


@keras.saving.register_keras_serializable(package="kcnn")
class LocalResponseNormalization(keras.layers.Layer):
    """Local response normalization across neighbouring channels.

    Each activation is divided by a power of the energy of the ``size``
    channels centred on it, at the same spatial position. This is the
    "brightness normalization" of AlexNet: a strongly responding feature map
    damps its neighbours, a form of lateral inhibition.

    For an activation ``a[c]`` at channel ``c`` (``C`` channels in all):

    ```
    s[c] = sum_{j = max(0, c - r)}^{min(C - 1, c + r)} a[j]**2,   r = (size - 1) / 2
    b[c] = a[c] / (k + alpha_eff * s[c]) ** beta
    ```

    with ``alpha_eff = alpha`` when ``alpha_mode="sum"`` and
    ``alpha_eff = alpha / size`` when ``alpha_mode="mean"``. Channels beyond
    the edges count as zeros.

    **Porting note.** The AlexNet paper and
    ``tf.nn.local_response_normalization`` multiply the plain *sum* of the
    squares by ``alpha`` (``alpha_mode="sum"``, the default). Caffe's ``LRN``
    layer and PyTorch's ``torch.nn.LocalResponseNorm`` multiply the *mean*
    (``alpha / size``); with the same numbers the two differ by a factor
    ``size`` in ``alpha``. To reproduce a Caffe or PyTorch model, pass its
    ``alpha`` unchanged with ``alpha_mode="mean"`` (and mind that PyTorch's
    default ``k`` is 1, not 2). ``tf.nn`` takes ``depth_radius = (size - 1) / 2``
    instead of ``size``.

    The computation runs in float32 whatever the layer's dtype policy
    (the sum of squares overflows float16 easily) and the result is cast back
    to the compute dtype.

    Args:
        size: Odd positive integer ``n``, the number of channels in each
            window (the channel itself and ``(n - 1) / 2`` on each side).
            Defaults to 5, as in AlexNet.
        bias: The constant ``k`` (must be > 0). Defaults to 2.
        alpha: The scale ``alpha`` (must be >= 0). Defaults to 1e-4.
        beta: The exponent ``beta`` (must be >= 0). Defaults to 0.75.
        alpha_mode: ``"sum"`` (paper, TensorFlow) or ``"mean"`` (Caffe,
            PyTorch); see the porting note. Defaults to ``"sum"``.
        axis: Integer, the channel axis. Defaults to -1 (channels last); use
            1 for channels-first images.
        **kwargs: Base layer keyword arguments, such as ``name`` and ``dtype``.

    Call arguments:
        inputs: A tensor of rank >= 2.

    Input shape:
        Arbitrary; ``axis`` must have a known size.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.random.normal((2, 8, 8, 16))
    >>> y = LocalResponseNormalization(size=5, bias=2.0, alpha=1e-4, beta=0.75)(x)
    >>> keras.ops.shape(y)
    (2, 8, 8, 16)

    Reference:
        - [Krizhevsky, Sutskever & Hinton, 2012](
          https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks),
          section 3.3, "Local Response Normalization".
    """

    def __init__(
        self,
        size=5,
        bias=2.0,
        alpha=1e-4,
        beta=0.75,
        alpha_mode="sum",
        axis=-1,
        **kwargs,
    ):
        if (
            not isinstance(size, numbers.Integral)
            or isinstance(size, bool)
            or size <= 0
            or size % 2 == 0
        ):
            raise ValueError(f"`size` must be an odd positive integer. Received: size={size!r}")
        bias = check_positive_number(bias, "bias")
        alpha = check_positive_number(alpha, "alpha", inclusive=True)
        beta = check_positive_number(beta, "beta", inclusive=True)
        if alpha_mode not in _ALPHA_MODES:
            raise ValueError(
                f"`alpha_mode` must be one of {_ALPHA_MODES}. Received: alpha_mode={alpha_mode!r}"
            )
        if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
            raise ValueError(f"`axis` must be an integer. Received: axis={axis!r}")
        super().__init__(**kwargs)
        self.size = int(size)
        self.bias = bias
        self.alpha = alpha
        self.beta = beta
        self.alpha_mode = alpha_mode
        self.axis = int(axis)
        self.supports_masking = True
        self._band = None

    def build(self, input_shape):
        rank = len(input_shape)
        if not -rank <= self.axis < rank or self.axis in (0, -rank):
            raise ValueError(
                f"`axis` must name a non-batch axis of the rank-{rank} input "
                f"(shape {tuple(input_shape)}). Received: axis={self.axis}"
            )
        channels = known_size(input_shape, self.axis)
        self._channel_axis = self.axis % rank
        self._band = self._band_matrix(int(channels))
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={self.axis: channels})

    def _band_matrix(self, channels):
        """``C x C`` matrix with ``alpha_eff`` where ``|i - j| <= r`` and 0 elsewhere.

        ``squares @ band`` is the windowed sum of squares, already scaled by
        ``alpha_eff``: one small matrix product instead of ``size`` shifted
        additions, and it differentiates into one more product.
        """
        radius = (self.size - 1) // 2
        index = np.arange(channels)
        band = (np.abs(index[:, None] - index[None, :]) <= radius).astype("float32")
        scale = self.alpha / self.size if self.alpha_mode == "mean" else self.alpha
        return band * np.float32(scale)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        last = len(x.shape) - 1
        moved = self._channel_axis != last
        if moved:
            x = ops.moveaxis(x, self._channel_axis, -1)
        energy = ops.matmul(ops.square(x), ops.convert_to_tensor(self._band))
        outputs = x * self._inverse_power(energy + self.bias)
        if moved:
            outputs = ops.moveaxis(outputs, -1, self._channel_axis)
        return ops.cast(outputs, self.compute_dtype)

    def _inverse_power(self, d):
        """``d ** -beta``, with cheap forms for the common exponents."""
        if self.beta == 0.75:
            inv_sqrt = ops.rsqrt(d)
            return inv_sqrt * ops.sqrt(inv_sqrt)
        if self.beta == 0.5:
            return ops.rsqrt(d)
        if self.beta == 1.0:
            return 1.0 / d
        if self.beta == 0.0:
            return ops.ones_like(d)
        return ops.power(d, -self.beta)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            config_entries(self, ("size", "bias", "alpha", "beta", "alpha_mode", "axis"))
        )
        return config
