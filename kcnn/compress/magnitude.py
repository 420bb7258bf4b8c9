"""Magnitude pruning (Han et al., 2015): zero the smallest weights of every kernel.

In every Conv2D / DepthwiseConv2D / SeparableConv2D / Dense kernel, the weights
with the smallest ``|w|`` are set to zero, layer by layer, so that each kernel
reaches the round's sparsity. During fine-tuning each pruned kernel carries a
mask as its variable constraint, which Keras' optimizers apply after every
update, so pruned weights stay exactly zero. The saved model is a plain Keras
model whose zeros are real zeros (the masks are saved beside it in
``masks.npz``). The dense TFLite file does not shrink; its gzipped size does.

Written for Keras 3 here because the TensorFlow Model Optimization Toolkit
(``tfmot.sparsity``) only supports Keras 2 models
(tensorflow/model-optimization#1119).
"""

from __future__ import annotations

from typing import Any

import numpy as np

PRUNABLE_KERNELS = {
    "Conv2D": ("kernel",),
    "Conv1D": ("kernel",),
    "Dense": ("kernel",),
    "DepthwiseConv2D": ("kernel", "depthwise_kernel"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
}


def _all_layers(model):
    yield from model._flatten_layers(include_self=False, recursive=True)


def prunable_kernels(model) -> list[tuple[str, Any]]:
    """``(layer_name/weight_name, variable)`` of every kernel magnitude pruning acts on."""
    out = []
    for layer in _all_layers(model):
        names = PRUNABLE_KERNELS.get(type(layer).__name__)
        if not names:
            continue
        for w in layer.weights:
            if w.name in names:
                out.append((f"{layer.name}/{w.name}", w))
    return out


def magnitude_masks(model, sparsity: float) -> dict[str, np.ndarray]:
    """Per kernel: keep the ``1 - sparsity`` share of weights with the largest ``|w|``
    (ties at the threshold broken by position). Already-zero weights go first."""
    masks = {}
    for key, var in prunable_kernels(model):
        w = np.asarray(var.numpy())
        n = w.size
        drop = int(round(sparsity * n))
        mask = np.ones(n, dtype=w.dtype)
        if drop > 0:
            order = np.argsort(np.abs(w).ravel(), kind="stable")
            mask[order[:drop]] = 0
        masks[key] = mask.reshape(w.shape)
    return masks


class _Mask:
    """A variable constraint: multiply by a fixed 0/1 mask after every optimizer update."""

    def __init__(self, mask, previous=None):
        import keras

        self.mask = keras.ops.convert_to_tensor(mask)
        self.previous = previous

    def __call__(self, w):
        if self.previous is not None:
            w = self.previous(w)
        return w * self.mask


def apply_masks(model, masks: dict[str, np.ndarray]) -> None:
    """Zero the masked weights now and keep them zero through training (until
    :func:`remove_masks`)."""
    for key, var in prunable_kernels(model):
        if key not in masks:
            continue
        mask = masks[key]
        var.assign(np.asarray(var.numpy()) * mask)
        previous = var.constraint.previous if isinstance(var.constraint, _Mask) else var.constraint
        var.constraint = _Mask(mask, previous)


def remove_masks(model) -> None:
    """Restore the kernels' own constraints (the zeros stay)."""
    for _, var in prunable_kernels(model):
        if isinstance(var.constraint, _Mask):
            var.constraint = var.constraint.previous


def sparsity_of(model) -> dict[str, float]:
    """Share of exact zeros per prunable kernel."""
    return {key: float(np.mean(np.asarray(var.numpy()) == 0)) for key, var in prunable_kernels(model)}


def mean_sparsity(model) -> float:
    """Share of exact zeros over all prunable kernels together."""
    values = [(np.asarray(v.numpy()) == 0) for _, v in prunable_kernels(model)]
    total = sum(v.size for v in values)
    return float(sum(v.sum() for v in values) / total) if total else 0.0
