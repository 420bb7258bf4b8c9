"""Losses, registered by the name a recipe's ``train.loss.type`` uses.

Every loss takes integer class labels and the model's logits.
"""

from __future__ import annotations

from typing import Any

from kcnn.registry import Registry

LOSSES: Registry[Any] = Registry("loss")


def make_loss(config: Any, num_classes: int):
    """Build the Keras loss for a recipe's ``train.loss`` section."""
    # Importing the modules registers their classes (they import Keras).
    from kcnn.losses import basic  # noqa: F401

    options = config.model_dump(exclude={"type"})
    return LOSSES.get(config.type)(num_classes=num_classes, **options)
