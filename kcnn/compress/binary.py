"""Packed storage of binary weights (``kcnn.layers.BinaryConv2D`` / ``BinaryDense``).

A binary kernel needs one bit per weight (its sign) plus, with ``scale=True``,
one float32 ``α`` per output channel; biases and every other weight of the
model stay float32. :func:`pack_kernel` does the packing (``numpy.packbits``,
sign bit 1 for ``w >= 0``), :func:`unpack_kernel` restores ``sign(W)·α``
exactly, and :func:`weight_storage` counts the bytes of a whole model.

The counts are of the weights themselves (no file-format overhead): TFLite
has no 1-bit tensor type, so an exported binary model still stores float32
(or, with ``--quantize``, int8) kernels; the packed figure is what a
bit-serial runtime would load.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _binary_layers():
    from kcnn.layers.binary import BinaryConv2D, BinaryDense

    return (BinaryConv2D, BinaryDense)


def pack_kernel(kernel: np.ndarray, scale: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``(bits, alpha)``: the signs packed 8 per byte (C order), and α per output channel."""
    w = np.asarray(kernel, dtype="float32")
    bits = np.packbits((w >= 0).ravel())
    alpha = np.abs(w).reshape(-1, w.shape[-1]).mean(axis=0).astype("float32") if scale else None
    return bits, alpha


def unpack_kernel(bits: np.ndarray, alpha: np.ndarray | None, shape) -> np.ndarray:
    """The forward-pass kernel ``sign(W)·α`` from :func:`pack_kernel`'s output."""
    n = int(np.prod(shape))
    signs = np.unpackbits(bits)[:n].astype("float32") * 2 - 1
    signs = signs.reshape(shape)
    return signs * alpha if alpha is not None else signs


def _layers(model):
    return model._flatten_layers(include_self=False, recursive=True)


def weight_storage(model) -> dict[str, Any]:
    """Bytes of the model's weights: all float32 vs binary kernels packed.

    Returns ``float32_bytes``, ``packed_bytes``, their ratio, the number of
    binary weights and a per-layer list for the binary layers.
    """
    binary = _binary_layers()
    packed_ids: set[int] = set()
    layers = []
    packed_total = 0
    for layer in _layers(model):
        if not isinstance(layer, binary) or not layer.built:
            continue
        kernel = np.asarray(layer.kernel.numpy())
        bits, alpha = pack_kernel(kernel, layer.scale)
        size = int(bits.nbytes + (alpha.nbytes if alpha is not None else 0))
        packed_ids.add(id(layer.kernel))
        packed_total += size
        layers.append({"layer": layer.name, "weights": int(kernel.size),
                       "float32_bytes": int(kernel.size * 4), "packed_bytes": size})
    float_bytes = 0
    for w in model.weights:
        n = int(np.prod(w.shape))
        float_bytes += 4 * n
        if id(w) not in packed_ids:
            packed_total += 4 * n
    return {
        "float32_bytes": float_bytes,
        "packed_bytes": packed_total,
        "ratio": packed_total / float_bytes if float_bytes else 1.0,
        "binary_weights": sum(row["weights"] for row in layers),
        "layers": layers,
    }
