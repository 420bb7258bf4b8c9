"""Stochastic pooling (Zeiler & Fergus, 2013)."""

from __future__ import annotations

import keras
from keras import ops

from kcnn.layers._pooling import BasePooling2D
from kcnn.layers._utils import from_channels_last, pool_windows, to_channels_last

# Below this, a pooling window's mean counts as zero (all its inputs are 0).
_TINY = 1e-30

# Multipliers of the 32-bit integer hash below (Wellons' "lowbias32"), and an
# odd constant that keeps a zero seed from giving a zero key.
_MIX_1 = 0x7FEB352D
_MIX_2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def _mix32(h):
    """A bijective avalanche hash of uint32 values (xor-shift / multiply rounds)."""
    h = ops.bitwise_xor(h, ops.right_shift(h, 16))
    h = h * ops.convert_to_tensor(_MIX_1, "uint32")
    h = ops.bitwise_xor(h, ops.right_shift(h, 15))
    h = h * ops.convert_to_tensor(_MIX_2, "uint32")
    return ops.bitwise_xor(h, ops.right_shift(h, 16))


def _hash_uniform(shape, size, seed):
    """Uniform floats in ``[0, 1)`` of ``shape`` (``size`` elements), from a 2-word ``seed``.

    Why not ``keras.random.uniform``: on TensorFlow it is a stateless Philox
    draw, which XLA compiles on CPU into a slow scalar loop; with Keras'
    ``fit`` (``jit_compile=True`` by default) that draw cost several times the
    whole pooling step. This is a counter-based generator written with
    integer ``keras.ops``, which every backend and XLA turn into a few cheap
    vectorised passes: element ``i`` gets ``mix(i * m + k)``, where the odd
    multiplier ``m`` and the offset ``k`` are hashed from both seed words.
    The ``SeedGenerator`` advances the second word on every call, so each
    call walks the 32-bit space along a different stride from a different
    start, and ``mix`` (a bijective avalanche hash) scrambles the walk. The
    top 23 bits make the float, as in TensorFlow's own ``stateless_uniform``,
    so ``u <= 1 - 2**-23`` and ``u * total`` stays below ``total``.
    """
    seed = ops.cast(seed, "uint32")
    golden = ops.convert_to_tensor(_GOLDEN, "uint32")
    key = _mix32(seed[0] + golden)
    one = ops.convert_to_tensor(1, "uint32")
    multiplier = ops.bitwise_or(ops.left_shift(_mix32(ops.bitwise_xor(seed[1], key)), one), one)
    offset = _mix32(multiplier + key)
    counter = ops.cast(ops.arange(size, dtype="int32"), "uint32")
    bits = _mix32(counter * multiplier + offset)
    u = ops.cast(ops.right_shift(bits, 9), "float32") * (2.0**-23)
    return ops.reshape(u, shape)


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
        seed: Optional integer seed of the layer's random draws. The draws
            depend only on the state of the layer's ``SeedGenerator`` (built
            from this seed and advanced once per training call), and are the
            same on every backend.
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
        """One draw per window: the drawn element itself, ``a_k``.

        The windows' elements are visited as ``K = ph * pw`` tensors of
        output shape (``pool_windows``). With the running sums
        ``cum_k = a_0 + ... + a_k`` and a threshold ``t = u * cum_{K-1}``
        with ``u ~ U[0, 1)``, element ``k`` is drawn when
        ``cum_{k-1} <= t < cum_k`` (the first ``k`` with ``t < cum_k``),
        which happens with probability ``a_k / sum a``. Zeros are never drawn
        (``cum_k == cum_{k-1}``), and as ``t < cum_{K-1}`` whenever the window
        has a positive element, the last element is the fallback only for
        those, or for all-zero windows (whose output is then 0). The choice is
        a chain of ``where``: the gradient reaches the drawn element only (for
        an all-zero window, a clamped input, whose gradient the ReLU zeroes).
        """
        views = pool_windows(x, self.pool_size, self.strides, self.padding)
        total = None
        running = []
        for view in views:
            total = view if total is None else total + view
            running.append(total)
        # ``next()`` advances the generator's state as ``keras.random`` would,
        # so a restored state replays the same draws.
        u = _hash_uniform(ops.shape(total), ops.size(total), self.seed_generator.next())
        threshold = ops.stop_gradient(u * total)
        outputs = views[-1]
        for view, cum in zip(views[-2::-1], running[-2::-1]):
            outputs = ops.where(threshold < cum, view, outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config
