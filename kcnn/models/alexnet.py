"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) and a small-input variant.

Five convolutions and three fully connected layers; local response
normalization after conv1 and conv2; overlapping 3×3 pooling with stride 2;
dropout 0.5 in the FC layers. The paper split conv2, conv4 and conv5 over two
GPUs: ``groups=2`` reproduces that as grouped convolutions (60,965,224
parameters at 227×227×3 and 1000 classes), ``groups=1`` is the single-tower
network (62,378,344).
"""

from __future__ import annotations

from collections.abc import Sequence

from kcnn.errors import KcnnError
from kcnn.models.common import (
    check_common,
    classifier_model,
    conv_bn_relu,
    fc_widths,
    maybe_pool,
    model_inputs,
    scaled,
)
from kcnn.models.registry import register_model

# (filters, kernel, stride, grouped, pool after, LRN after) per convolution.
_IMAGENET = [
    (96, 11, 4, False, True, True),
    (256, 5, 1, True, True, True),
    (384, 3, 1, False, False, False),
    (384, 3, 1, True, False, False),
    (256, 3, 1, True, True, False),
]
# The same layout scaled to 32×32 images: 5×5 and 3×3 kernels at stride 1.
_CIFAR = [
    (64, 5, 1, False, True, True),
    (192, 5, 1, True, True, True),
    (384, 3, 1, False, False, False),
    (256, 3, 1, True, False, False),
    (256, 3, 1, True, True, False),
]


def _build(cfg, *, name, num_classes, input_shape, groups, lrn, width, fc_units, dropout,
           batch_norm, pooling, head, preprocessing):
    from kcnn.layers import LocalResponseNormalization

    check_common(pooling, head, dropout)
    if groups not in (1, 2):
        raise KcnnError(f"model.groups must be 1 (one tower) or 2 (the paper's two GPUs) "
                        f"(got {groups!r})")
    inputs, x = model_inputs(input_shape, preprocessing)
    for i, (filters, kernel, stride, grouped, pool, norm) in enumerate(cfg, start=1):
        x = conv_bn_relu(
            x, scaled(filters, width, 2 * groups), kernel, strides=stride,
            padding="valid" if stride > 1 else "same", groups=groups if grouped else 1,
            batch_norm=batch_norm, use_bias=True if not batch_norm else False,
            kernel_initializer="glorot_uniform", name=f"conv{i}",
        )
        if norm and lrn:
            x = LocalResponseNormalization(size=5, bias=2.0, alpha=1e-4, beta=0.75,
                                           name=f"lrn{i}")(x)
        if pool:
            x = maybe_pool(x, pooling, 3, 2, name=f"pool{i}", padding="valid")
    return classifier_model(inputs, x, num_classes, head, name=name, fc_units=fc_widths(fc_units),
                            dropout=dropout, batch_norm=batch_norm)


@register_model
def alexnet(
    num_classes: int = 1000,
    input_shape: Sequence[int] = (227, 227, 3),
    groups: int = 2,
    lrn: bool = True,
    width: float = 1.0,
    fc_units: int | Sequence[int] = 4096,
    dropout: float = 0.5,
    batch_norm: bool = False,
    pooling: str = "max",
    head: str = "dense",
    preprocessing=(),
):
    """AlexNet at 227×227: conv 96 11×11/4, 256 5×5, 384, 384, 256 3×3; FC 4096, 4096.

    ``groups`` (1 or 2) splits conv2, conv4 and conv5 into two towers as in
    the paper. ``lrn`` adds local response normalization after conv1 and
    conv2 (no weights). ``width`` multiplies every convolution's width and
    ``fc_units`` sets the FC widths (one int for both, or a list). Pooling
    that a small input can no longer afford is left out (see
    :func:`kcnn.models.common.maybe_pool`), so it also builds at 32×32.
    """
    return _build(_IMAGENET, name="alexnet", num_classes=num_classes, input_shape=input_shape,
                  groups=groups, lrn=lrn, width=width, fc_units=fc_units, dropout=dropout,
                  batch_norm=batch_norm, pooling=pooling, head=head,
                  preprocessing=preprocessing)


@register_model
def alexnet_cifar(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    groups: int = 1,
    lrn: bool = True,
    width: float = 1.0,
    fc_units: int | Sequence[int] = 1024,
    dropout: float = 0.5,
    batch_norm: bool = False,
    pooling: str = "max",
    head: str = "dense",
    preprocessing=(),
):
    """AlexNet's layout for 32×32 images: conv 64 5×5, 192 5×5, 384, 256, 256 3×3
    (stride 1, ``same``), LRN after conv1 and conv2, 3×3/2 pooling after conv1,
    conv2 and conv5, FC 1024, 1024."""
    return _build(_CIFAR, name="alexnet_cifar", num_classes=num_classes,
                  input_shape=input_shape, groups=groups, lrn=lrn, width=width,
                  fc_units=fc_units, dropout=dropout, batch_norm=batch_norm, pooling=pooling,
                  head=head, preprocessing=preprocessing)
