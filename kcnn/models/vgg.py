"""VGG (Simonyan & Zisserman, 2014): configurations A, B, D, E = VGG-11/13/16/19.

Stacks of 3×3 convolutions (two 3×3 layers see what one 5×5 sees, three see a
7×7, with fewer weights and more nonlinearities), 2×2 max pooling after each
of five stages, FC 4096, 4096, classes. ``vgg16`` at 224×224×3 and 1000
classes has 138,357,544 parameters, ``vgg19`` 143,667,240. The ``_bn``
variants put batch normalization after every convolution (which then has no
bias).
"""

from __future__ import annotations

from collections.abc import Sequence

from kcnn.models.common import (
    check_common,
    classifier_model,
    conv_bn_relu,
    fc_widths,
    maybe_pool,
    model_inputs,
    scaled,
)
from kcnn.models.registry import register_variant

STAGE_WIDTHS = (64, 128, 256, 512, 512)
CONVS_PER_STAGE = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


def _build(depth, *, num_classes, input_shape, width, fc_units, dropout, batch_norm, pooling,
           head, preprocessing):
    check_common(pooling, head, dropout)
    inputs, x = model_inputs(input_shape, preprocessing)
    for s, (filters, n) in enumerate(zip(STAGE_WIDTHS, CONVS_PER_STAGE[depth]), start=1):
        for i in range(1, n + 1):
            x = conv_bn_relu(x, scaled(filters, width), 3, batch_norm=batch_norm,
                             name=f"conv{s}_{i}", kernel_initializer="glorot_uniform")
        x = maybe_pool(x, pooling, 2, 2, name=f"pool{s}", padding="valid")
    name = f"vgg{depth}" + ("_bn" if batch_norm else "")
    return classifier_model(inputs, x, num_classes, head, name=name, fc_units=fc_widths(fc_units),
                            dropout=dropout, batch_norm=False)


_DOC = """VGG-{depth} (configuration {cfg}){bn}.

    ``width`` multiplies the convolution widths 64-128-256-512-512, ``fc_units``
    sets the FC widths (one int for both, or a list). A 2×2 pooling layer that
    the map can no longer afford is left out, so the network also builds at
    32×32 (five poolings bring 32 to 1) or smaller.
    """


def _entrypoint(depth: int, bn: bool):
    def builder(
        num_classes: int = 1000,
        input_shape: Sequence[int] = (224, 224, 3),
        width: float = 1.0,
        fc_units: int | Sequence[int] = 4096,
        dropout: float = 0.5,
        batch_norm: bool = bn,
        pooling: str = "max",
        head: str = "dense",
        preprocessing=(),
    ):
        return _build(depth, num_classes=num_classes, input_shape=input_shape, width=width,
                      fc_units=fc_units, dropout=dropout, batch_norm=batch_norm,
                      pooling=pooling, head=head, preprocessing=preprocessing)

    doc = _DOC.format(depth=depth, cfg="ABDE"[[11, 13, 16, 19].index(depth)],
                      bn=" with batch normalization" if bn else "")
    return register_variant(builder, f"vgg{depth}" + ("_bn" if bn else ""), doc)


vgg11 = _entrypoint(11, False)
vgg11_bn = _entrypoint(11, True)
vgg13 = _entrypoint(13, False)
vgg13_bn = _entrypoint(13, True)
vgg16 = _entrypoint(16, False)
vgg16_bn = _entrypoint(16, True)
vgg19 = _entrypoint(19, False)
vgg19_bn = _entrypoint(19, True)
