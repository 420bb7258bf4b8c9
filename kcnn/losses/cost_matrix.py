"""Expected misclassification cost under a K×K cost matrix (cost-sensitive learning)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from kcnn.losses.basic import _one_hot
from kcnn.losses.registry import LOSSES


def check_cost_matrix(matrix, num_classes: int) -> list[list[float]]:
    """A K×K list of finite numbers >= 0 with a zero diagonal."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (num_classes, num_classes):
        raise ValueError(f"matrix must be {num_classes}×{num_classes}. Received: shape {m.shape}")
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError("matrix entries must be finite and >= 0")
    if np.any(np.diag(m) != 0):
        raise ValueError(f"matrix diagonal must be 0. Received: diagonal {np.diag(m).tolist()}")
    return m.tolist()


@LOSSES.register("cost_matrix")
@keras.saving.register_keras_serializable(package="kcnn")
class CostMatrixLoss(keras.losses.Loss):
    """Expected cost of the softmax prediction, optionally plus cross-entropy.

    loss = Σ_j p_j · C[y, j]  +  λ · (−log p_y),   p = softmax(z)

    C[y, j] is the cost of predicting class j for a sample of class y (rows:
    true class, columns: prediction), with C[y, y] = 0 and C ≥ 0. The first
    term is the cost the classifier expects to pay when it predicts by
    sampling from p; minimising it moves probability mass away from expensive
    mistakes. It is bounded and its gradient fades as p_y → 0, so a little
    cross-entropy (λ = ``cross_entropy_weight`` > 0) helps training from scratch.

    Args:
        num_classes: K.
        matrix: the K×K cost matrix (list of lists).
        cross_entropy_weight: λ >= 0.

    Example:
        >>> CostMatrixLoss(2, [[0, 1], [5, 0]])([1], [[0.0, 0.0]])  # 0.5 · 5 = 2.5
    """

    def __init__(self, num_classes: int, matrix, cross_entropy_weight: float = 0.0,
                 name="cost_matrix", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not cross_entropy_weight >= 0:
            raise ValueError(f"cross_entropy_weight must be >= 0. Received: cross_entropy_weight={cross_entropy_weight}")
        self.num_classes = int(num_classes)
        self.matrix = check_cost_matrix(matrix, self.num_classes)
        self.cross_entropy_weight = float(cross_entropy_weight)

    def call(self, y_true, y_pred):
        onehot = _one_hot(y_true, self.num_classes)
        logp = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        row = ops.matmul(onehot, ops.convert_to_tensor(self.matrix, dtype="float32"))  # C[y, :]
        loss = ops.sum(ops.exp(logp) * row, axis=-1)
        if self.cross_entropy_weight:
            loss = loss - self.cross_entropy_weight * ops.sum(onehot * logp, axis=-1)
        return loss

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "matrix": self.matrix,
                "cross_entropy_weight": self.cross_entropy_weight}


def expected_cost(y_true: np.ndarray, y_pred: np.ndarray, matrix) -> float:
    """Mean cost of hard predictions: (1/N) Σ_i C[y_i, ŷ_i]."""
    m = np.asarray(matrix, dtype=np.float64)
    return float(m[np.asarray(y_true, int), np.asarray(y_pred, int)].mean()) if len(y_true) else 0.0
