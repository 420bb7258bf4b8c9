"""Focal loss on logits and integer labels (Lin et al., ICCV 2017)."""

from __future__ import annotations

import keras
from keras import ops

from kcnn.losses.basic import _one_hot, check_class_vector, per_class
from kcnn.losses.registry import LOSSES


@LOSSES.register("focal")
@keras.saving.register_keras_serializable(package="kcnn")
class FocalLoss(keras.losses.Loss):
    """Focal loss: cross-entropy that fades out for well-classified samples.

    loss = −α_y · (1 − p_y)^γ · log p_y,   p = softmax(z)

    With γ = 0 and no α this is cross-entropy. γ > 0 shrinks the loss of
    samples the model already gets right (p_y → 1), which on imbalanced data
    are mostly the majority classes; α re-weights whole classes.

    Args:
        num_classes: K.
        gamma: focusing parameter γ >= 0.
        alpha: K per-class weights >= 0, or None (the recipe's ``balanced`` /
            ``effective_number`` become this list in :func:`kcnn.losses.make_loss`).

    Example:
        >>> FocalLoss(3, gamma=2.0)([0], [[2.0, 0.0, 0.0]])

    Reference:
        Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection", ICCV 2017.
    """

    def __init__(self, num_classes: int, gamma: float = 2.0, alpha=None, name="focal",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0. Received: gamma={gamma}")
        self.num_classes = int(num_classes)
        self.gamma = float(gamma)
        self.alpha = check_class_vector(alpha, self.num_classes, "alpha")

    def call(self, y_true, y_pred):
        onehot = _one_hot(y_true, self.num_classes)
        logp_y = ops.sum(onehot * ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1), axis=-1)
        loss = -logp_y
        if self.gamma:
            # Clamped away from 0 so that the gradient of x^γ stays finite for γ < 1.
            miss = ops.maximum(1.0 - ops.exp(logp_y), 1e-12)
            loss = loss * ops.power(miss, self.gamma)
        if self.alpha is not None:
            loss = loss * per_class(self.alpha, onehot)
        return loss

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "gamma": self.gamma,
                "alpha": self.alpha}
