"""Network in Network (Lin, Chen & Yan, 2013) for CIFAR-10.

Three mlpconv blocks (a k×k convolution followed by two 1×1 convolutions,
i.e. a small MLP slid over the image, :class:`kcnn.layers.MLPConv2D`):
5×5 192-160-96, 5×5 192-192-192 and 3×3 192-192-classes, with 3×3/2 pooling
and dropout 0.5 after the first two, and global average pooling of the
last block's class maps instead of fully connected layers (the ``gap``
head). About 0.97 M parameters for 10 classes.

``nin_small`` (a narrower version for tiny inputs) lives in
:mod:`kcnn.models.simple`.
"""

from __future__ import annotations

from collections.abc import Sequence

from kcnn.models.common import check_common, classifier_model, model_inputs, pool2d, scaled
from kcnn.models.registry import register_model

BLOCKS = ((5, (192, 160, 96)), (5, (192, 192, 192)), (3, (192, 192)))


@register_model
def nin_cifar(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    width: float = 1.0,
    dropout: float = 0.5,
    batch_norm: bool = False,
    pooling: str = "max",
    head: str = "gap",
    preprocessing=(),
):
    """NIN for 32×32 images: mlpconv 192-160-96, 192-192-192, 192-192-classes + GAP.

    ``width`` multiplies every block's widths. ``batch_norm`` adds batch
    normalization inside the blocks (not in the paper). With ``head: dense``
    or ``conv`` the third block keeps its 192 channels and one FC layer (or
    its convolutional form) maps the flattened map to the classes.
    """
    import keras

    from kcnn.layers import MLPConv2D

    check_common(pooling, head, dropout)
    inputs, x = model_inputs(input_shape, preprocessing)
    for b, (kernel, widths) in enumerate(BLOCKS, start=1):
        x = MLPConv2D([scaled(w, width) for w in widths], kernel, padding="same",
                      batch_norm=batch_norm, name=f"mlpconv{b}")(x)
        if b < len(BLOCKS):
            x = pool2d(pooling, 3, 2, name=f"pool{b}", padding="same")(x)
            if dropout:
                x = keras.layers.Dropout(dropout, name=f"dropout{b}")(x)
    # The third block's last 1×1 convolution to the classes is the `gap` head's.
    return classifier_model(inputs, x, num_classes, head, name="nin_cifar")
