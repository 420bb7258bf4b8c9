"""Layers with shared weights (weight clustering): ``ClusteredConv2D``, ``ClusteredDense``,
``ClusteredDepthwiseConv2D``.

Each is its Keras layer with the kernel replaced by a **codebook** (trainable)
and integer **codes** (not trainable): the layer's ``kernel`` is looked up,

* scalar quantization (``subvector=None``): ``W[i] = codebook[codes[i]]``, a
  codebook of ``clusters`` values and one code per weight (``codes`` has the
  kernel's shape);
* product quantization (``subvector=D``): the kernel read as a matrix
  ``(rows, cols)`` (a Dense kernel as it is; a Conv2D kernel ``kh×kw×cin×cout``
  as ``(kh·kw·cin, cout)``; a DepthwiseConv2D kernel ``kh×kw×cin×m`` as
  ``(kh·kw, cin·m)``) is cut along its rows into ``rows / D`` sub-vectors per
  column; sub-vector ``j`` of column ``o`` is ``codebook[j, codes[j, o]]``, a
  codebook of shape ``(rows / D, clusters, D)`` and codes ``(rows / D, cols)``.

The lookup is ``keras.ops.take``, so the gradient that reaches a centroid is
the sum of the gradients of the weights that share it (Han et al., 2016,
"Deep Compression", §3.2), on every backend, and training keeps the sharing:
only the codebook moves. ``kcnn.compress.cluster`` fills codebook and codes by
k-means and turns the layers back into plain ones after fine-tuning.

Kernel regularizers and constraints are kept in the config but not applied to
the codebook (a penalty on the centroids is not the penalty on the kernel).

Reference: Gong et al., 2014, "Compressing Deep Convolutional Networks using
Vector Quantization"; Han et al., 2016, "Deep Compression".
"""

from __future__ import annotations

import math
import numbers

import keras
from keras import ops

from kcnn.layers._utils import check_positive_int


def _check_clusters(clusters):
    if not isinstance(clusters, numbers.Integral) or isinstance(clusters, bool) or not (
        1 <= clusters <= 65536
    ):
        raise ValueError(
            f"`clusters` must be an integer from 1 to 65536. Received: clusters={clusters!r}"
        )
    return int(clusters)


def shared_kernel(codebook, codes, kernel_shape, subvector=None):
    """The kernel of shape ``kernel_shape`` that ``codebook`` and ``codes`` describe
    (``keras.ops``; see the module docstring for the two layouts)."""
    if subvector is None:
        return ops.take(codebook, codes)
    parts, clusters, length = codebook.shape
    cols = codes.shape[-1]
    flat = ops.reshape(codebook, (parts * clusters, length))
    # Row j of the flat codebook starts at j·clusters. The offsets are broadcast by hand:
    # on TensorFlow, ops.add((n, n), (n, 1)) takes the bias_add shortcut of
    # keras-team/keras#20386 and adds along the wrong axis.
    offsets = ops.expand_dims(ops.arange(parts, dtype=codes.dtype) * clusters, -1)
    offsets = ops.broadcast_to(offsets, (parts, cols))
    sub = ops.take(flat, ops.add(codes, offsets), axis=0)  # (parts, cols, D)
    matrix = ops.reshape(ops.transpose(sub, (0, 2, 1)), (parts * length, cols))
    return ops.reshape(matrix, kernel_shape)


class _Clustered:
    """What the three clustered layers share: codebook and codes instead of a kernel.

    ``ROW_AXES``: how many leading kernel axes form a row of the product-quantization
    matrix (Dense 1, Conv2D 3, DepthwiseConv2D 2).
    """

    ROW_AXES = 1

    def _init_clustering(self, clusters, subvector, lora_rank):
        if lora_rank:
            raise ValueError(f"clustered layers do not support LoRA. Received: lora_rank={lora_rank!r}")
        self.clusters = _check_clusters(clusters)
        self.subvector = check_positive_int(subvector, "subvector", allow_none=True)

    def matrix_shape(self, kernel_shape):
        """``(rows, cols)``: the kernel as the matrix product quantization cuts."""
        rows = math.prod(kernel_shape[: self.ROW_AXES])
        return rows, math.prod(kernel_shape) // rows

    def _build_codebook(self, kernel_shape):
        self._kernel_shape = tuple(int(d) for d in kernel_shape)
        if self.subvector is None:
            codebook_shape, codes_shape = (self.clusters,), self._kernel_shape
        else:
            rows, cols = self.matrix_shape(self._kernel_shape)
            if rows % self.subvector:
                raise ValueError(
                    f"`subvector` must divide the kernel's {rows} rows "
                    f"(kernel shape {self._kernel_shape}). Received: subvector={self.subvector}"
                )
            parts = rows // self.subvector
            codebook_shape = (parts, self.clusters, self.subvector)
            codes_shape = (parts, cols)
        self.codebook = self.add_weight(
            name="codebook", shape=codebook_shape, initializer="glorot_uniform",
            trainable=True, dtype=self.dtype,
        )
        self.codes = self.add_weight(
            name="codes", shape=codes_shape, initializer="zeros", trainable=False, dtype="int32",
        )

    @property
    def kernel(self):
        if not self.built:
            raise AttributeError("You must build the layer before accessing `kernel`.")
        kernel = shared_kernel(self.codebook, self.codes, self._kernel_shape, self.subvector)
        return ops.cast(kernel, self.compute_dtype)

    def set_clusters(self, codebook, codes):
        """Assign the codebook and the codes (shapes as built; codes in ``[0, clusters)``)."""
        import numpy as np

        codebook, codes = np.asarray(codebook), np.asarray(codes)
        if codebook.shape != tuple(self.codebook.shape) or codes.shape != tuple(self.codes.shape):
            raise ValueError(
                f"expected a codebook {tuple(self.codebook.shape)} and codes "
                f"{tuple(self.codes.shape)}. Received: {codebook.shape} and {codes.shape}"
            )
        if codes.size and (codes.min() < 0 or codes.max() >= self.clusters):
            raise ValueError(f"codes must lie in [0, {self.clusters}). "
                             f"Received: codes in [{codes.min()}, {codes.max()}]")
        self.codebook.assign(codebook.astype(self.codebook.dtype))
        self.codes.assign(codes.astype("int32"))

    # The plain layers save ``kernel`` (and Dense its quantization state); these have
    # their own variables, saved and loaded in order like any Keras layer's.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def _add_clustering_config(self, config):
        config.update({"clusters": self.clusters, "subvector": self.subvector})
        return config


@keras.saving.register_keras_serializable(package="kcnn")
class ClusteredConv2D(_Clustered, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` whose kernel is looked up in a shared codebook.

    ``y = conv(x, W) + b`` with ``W = codebook[codes]`` (scalar) or built from
    sub-vector codebooks (``subvector=D``; the kernel as a ``(kh·kw·cin, cout)``
    matrix).

    Args:
        filters, kernel_size, …: as ``keras.layers.Conv2D``.
        clusters: number of shared values (scalar) or sub-vectors per codebook
            (product), e.g. ``2**bits``.
        subvector: ``None`` for scalar quantization, else the sub-vector length
            ``D`` of product quantization (must divide ``kh·kw·cin``).

    Call arguments:
        inputs: a 4D tensor, as for ``Conv2D``.

    Input shape / Output shape: as ``keras.layers.Conv2D``.

    Example:
        >>> layer = ClusteredConv2D(8, 3, clusters=16)
        >>> layer.build((None, 8, 8, 3))
        >>> layer.set_clusters(np.linspace(-1, 1, 16), np.zeros((3, 3, 3, 8), "int32"))

    Reference: Han et al., 2016, "Deep Compression"; Gong et al., 2014.
    """

    ROW_AXES = 3

    def __init__(self, filters, kernel_size, clusters=16, subvector=None, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self._init_clustering(clusters, subvector, self.lora_rank)

    def build(self, input_shape):
        axis = -1 if self.data_format == "channels_last" else 1
        input_channel = input_shape[axis]
        self.input_spec = keras.layers.InputSpec(min_ndim=self.rank + 2,
                                                 axes={axis: input_channel})
        if input_channel % self.groups != 0:
            raise ValueError(
                f"The number of input channels must be evenly divisible by the number of "
                f"groups. Received: groups={self.groups}, input_shape={input_shape}"
            )
        self.compute_output_shape(input_shape)
        self._build_codebook(self.kernel_size + (input_channel // self.groups, self.filters))
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.filters,), initializer=self.bias_initializer,
                regularizer=self.bias_regularizer, constraint=self.bias_constraint,
                trainable=True, dtype=self.dtype,
            )
        else:
            self.bias = None

    def get_config(self):
        return self._add_clustering_config(super().get_config())


@keras.saving.register_keras_serializable(package="kcnn")
class ClusteredDense(_Clustered, keras.layers.Dense):
    """``keras.layers.Dense`` whose kernel is looked up in a shared codebook.

    ``y = x·W + b`` with ``W = codebook[codes]`` (scalar) or built from
    sub-vector codebooks (``subvector=D`` must divide the input units).

    Args:
        units, activation, use_bias, …: as ``keras.layers.Dense``.
        clusters: number of shared values or sub-vectors per codebook.
        subvector: ``None`` (scalar quantization) or the sub-vector length ``D``.

    Call arguments:
        inputs: as for ``Dense``.

    Input shape / Output shape: as ``keras.layers.Dense``.

    Example:
        >>> layer = ClusteredDense(10, clusters=4, subvector=2)
        >>> layer.build((None, 16))   # codebook (8, 4, 2), codes (8, 10)

    Reference: Han et al., 2016, "Deep Compression"; Gong et al., 2014.
    """

    ROW_AXES = 1

    def __init__(self, units, clusters=16, subvector=None, **kwargs):
        super().__init__(units, **kwargs)
        if self.quantization_mode:
            raise ValueError("clustered layers are not Keras-quantized layers. "
                             f"Received: quantization_mode={self.quantization_mode!r}")
        self._init_clustering(clusters, subvector, self.lora_rank)

    def build(self, input_shape):
        self._build_codebook((input_shape[-1], self.units))
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.units,), initializer=self.bias_initializer,
                regularizer=self.bias_regularizer, constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_shape[-1]})

    def get_config(self):
        return self._add_clustering_config(super().get_config())


@keras.saving.register_keras_serializable(package="kcnn")
class ClusteredDepthwiseConv2D(_Clustered, keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` whose kernel is looked up in a shared codebook.

    The kernel ``kh×kw×cin×m`` is read as a ``(kh·kw, cin·m)`` matrix for
    product quantization (``subvector`` must divide ``kh·kw``).

    Args:
        kernel_size, depth_multiplier, …: as ``keras.layers.DepthwiseConv2D``.
        clusters: number of shared values or sub-vectors per codebook.
        subvector: ``None`` (scalar quantization) or the sub-vector length ``D``.

    Call arguments:
        inputs: a 4D tensor, as for ``DepthwiseConv2D``.

    Input shape / Output shape: as ``keras.layers.DepthwiseConv2D``.

    Example:
        >>> layer = ClusteredDepthwiseConv2D(3, clusters=4)

    Reference: Han et al., 2016, "Deep Compression"; Gong et al., 2014.
    """

    ROW_AXES = 2

    def __init__(self, kernel_size, clusters=16, subvector=None, **kwargs):
        super().__init__(kernel_size, **kwargs)
        self._init_clustering(clusters, subvector, None)

    def build(self, input_shape):
        axis = -1 if self.data_format == "channels_last" else 1
        input_channel = input_shape[axis]
        self.input_spec = keras.layers.InputSpec(min_ndim=self.rank + 2,
                                                 axes={axis: input_channel})
        self.compute_output_shape(input_shape)
        self._build_codebook(self.kernel_size + (input_channel, self.depth_multiplier))
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.depth_multiplier * input_channel,),
                initializer=self.bias_initializer, regularizer=self.bias_regularizer,
                constraint=self.bias_constraint, trainable=True, dtype=self.dtype,
            )
        else:
            self.bias = None

    def get_config(self):
        return self._add_clustering_config(super().get_config())


CLUSTERED_LAYERS = {
    "Conv2D": ClusteredConv2D,
    "Dense": ClusteredDense,
    "DepthwiseConv2D": ClusteredDepthwiseConv2D,
}
