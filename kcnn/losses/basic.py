"""Cross-entropy (with label smoothing and per-class weights) and squared error, on logits."""

from __future__ import annotations

import keras
from keras import ops

from kcnn.losses.registry import LOSSES


def _one_hot(y_true, num_classes: int):
    y = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return ops.one_hot(y, num_classes, dtype="float32")


def check_class_vector(values, num_classes: int, name: str) -> list[float] | None:
    """A per-class list of C finite numbers >= 0, or None."""
    if values is None:
        return None
    values = [float(v) for v in values]
    if len(values) != num_classes or any(not v >= 0 or v == float("inf") for v in values):
        raise ValueError(f"{name} must be {num_classes} finite numbers >= 0. Received: {name}={values}")
    return values


def per_class(values: list[float], onehot):
    """values[y] for every sample (a (batch,) tensor), via the one-hot labels."""
    return ops.sum(onehot * ops.convert_to_tensor(values, dtype="float32"), axis=-1)


@LOSSES.register("cross_entropy")
@keras.saving.register_keras_serializable(package="kcnn")
class CrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy on integer labels and logits, with label smoothing and
    optional per-class weights.

    loss = −w_y · Σ_j q_j · log softmax(z)_j, with q = (1 − ε)·onehot(y) + ε/K
    and w_y = ``class_weights[y]`` (1 when not given). The recipe's ``balanced``
    and ``effective_number`` settings are turned into this list by
    :func:`kcnn.losses.make_loss` from the training split's class counts.

    Args:
        num_classes: K.
        label_smoothing: ε in [0, 1).
        class_weights: K weights >= 0, or None.

    Example:
        >>> loss = CrossEntropy(3, class_weights=[1.0, 2.0, 4.0])
        >>> loss([2], [[0.0, 0.0, 0.0]])  # 4 · log 3 ≈ 4.394
    """

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, class_weights=None,
                 name="cross_entropy", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1). Received: label_smoothing={label_smoothing}")
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.class_weights = check_class_vector(class_weights, self.num_classes, "class_weights")

    def call(self, y_true, y_pred):
        onehot = _one_hot(y_true, self.num_classes)
        q = onehot
        if self.label_smoothing:
            q = q * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        logp = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        loss = -ops.sum(q * logp, axis=-1)
        if self.class_weights is not None:
            loss = loss * per_class(self.class_weights, onehot)
        return loss

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "label_smoothing": self.label_smoothing, "class_weights": self.class_weights}


@LOSSES.register("mse")
@LOSSES.register("l2")
@keras.saving.register_keras_serializable(package="kcnn")
class SquaredError(keras.losses.Loss):
    """Mean squared error: the l2 loss.

    Classification (``regression=False``): between softmax(z) and the one-hot
    label, mean over the K classes. Regression (``regression=True``, set by
    kcnn under ``data.task: regression``): between the raw outputs and the float
    targets, mean over the k targets. Float targets of the output's width (k > 1)
    are treated as regression targets either way.
    """

    def __init__(self, num_classes: int, regression: bool = False, name="squared_error",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.num_classes = int(num_classes)
        self.regression = bool(regression)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        if self.regression:
            target, out = ops.reshape(ops.cast(y_true, "float32"), ops.shape(y_pred)), y_pred
        elif len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == y_pred.shape[-1] \
                and y_pred.shape[-1] != 1:
            target, out = ops.cast(y_true, "float32"), y_pred
        else:
            target, out = _one_hot(y_true, self.num_classes), ops.softmax(y_pred, axis=-1)
        return ops.mean(ops.square(out - target), axis=-1)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "regression": self.regression}
