"""Cross-entropy (with label smoothing) and squared error, on logits."""

from __future__ import annotations

import keras
from keras import ops

from kcnn.losses import LOSSES


def _one_hot(y_true, num_classes: int):
    y = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return ops.one_hot(y, num_classes, dtype="float32")


@LOSSES.register("cross_entropy")
@keras.saving.register_keras_serializable(package="kcnn")
class CrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy on integer labels and logits, with label smoothing.

    loss = −Σ_j q_j · log softmax(z)_j, with q = (1 − ε)·onehot(y) + ε/K.
    """

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, name="cross_entropy",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1). Received: label_smoothing={label_smoothing}")
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        q = _one_hot(y_true, self.num_classes)
        if self.label_smoothing:
            q = q * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        logp = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        return -ops.sum(q * logp, axis=-1)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "label_smoothing": self.label_smoothing}


@LOSSES.register("mse")
@LOSSES.register("l2")
@keras.saving.register_keras_serializable(package="kcnn")
class SquaredError(keras.losses.Loss):
    """Mean squared error between softmax(z) and the one-hot label (l2 loss).

    For targets that are already float vectors of the output's width (regression)
    the raw outputs are compared instead.
    """

    def __init__(self, num_classes: int, name="squared_error", reduction="sum_over_batch_size",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.num_classes = int(num_classes)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == y_pred.shape[-1] \
                and y_pred.shape[-1] != 1:
            target, out = ops.cast(y_true, "float32"), y_pred
        else:
            target, out = _one_hot(y_true, self.num_classes), ops.softmax(y_pred, axis=-1)
        return ops.mean(ops.square(out - target), axis=-1)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
