"""Convolutional highway network for CIFAR (Srivastava, Greff & Schmidhuber, 2015).

Every highway layer (:class:`kcnn.layers.HighwayConv2D`) mixes a 3×3
convolution ``H`` with its input through a learned transform gate ``T``:
``y = H(x)·T(x) + x·(1 − T(x))``. A highway layer keeps its width, so a plain
3×3 convolution sits wherever the width changes: the stem and the first
layer after each pooling. The gate bias starts at
:func:`kcnn.layers.highway_gate_bias` of the depth (−1 for about 10 layers,
−2 for about 20, −3 for 30 and more), so a deep network starts out mostly
carrying its input through.

Layout for ``depth`` weight layers: three stages of widths ``width``,
2·``width``, 4·``width``, each a plain 3×3 convolution followed by highway
layers (``depth − 4`` of them, shared out over the stages, earlier stages
taking the remainder), 2×2 pooling between stages, then the head (by
default a 1×1 convolution to the classes and global average pooling; that
convolution is the last weight layer).
"""

from __future__ import annotations

from collections.abc import Sequence

from kcnn.errors import KcnnError
from kcnn.models.common import check_common, classifier_model, conv_bn_relu, model_inputs, pool2d
from kcnn.models.registry import register_model


def stage_depths(depth: int, stages: int = 3) -> list[int]:
    """Highway layers per stage for a network of ``depth`` weight layers."""
    highway = depth - stages - 1
    if highway < stages:
        raise KcnnError(f"model.depth must be at least {2 * stages + 1} (one highway layer "
                        f"per stage; got {depth})")
    per, extra = divmod(highway, stages)
    return [per + (1 if s < extra else 0) for s in range(stages)]


@register_model
def highway_cifar(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    depth: int = 19,
    width: int = 32,
    dropout: float = 0.0,
    batch_norm: bool = False,
    pooling: str = "max",
    head: str = "gap",
    preprocessing=(),
):
    """Highway-``depth`` (default 19, the paper's 7.54% CIFAR-10 network's depth).

    ``width`` is the first stage's width. ``batch_norm`` adds batch
    normalization after the plain convolutions.
    """
    from kcnn.layers import HighwayConv2D, highway_gate_bias

    check_common(pooling, head, dropout)
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise KcnnError(f"model.depth must be an integer (got {depth!r})")
    counts = stage_depths(depth)
    gate_bias = highway_gate_bias(depth)
    inputs, x = model_inputs(input_shape, preprocessing)
    for s, count in enumerate(counts, start=1):
        if s > 1:
            x = pool2d(pooling, 2, 2, name=f"pool{s - 1}", padding="same")(x)
        x = conv_bn_relu(x, int(width) * 2 ** (s - 1), 3, batch_norm=batch_norm,
                         name=f"stage{s}_plain")
        for i in range(1, count + 1):
            x = HighwayConv2D(3, activation="relu", transform_gate_bias=gate_bias,
                              kernel_initializer="he_normal", name=f"stage{s}_highway{i}")(x)
    return classifier_model(inputs, x, num_classes, head, name=f"highway_cifar{depth}",
                            dropout=dropout)
