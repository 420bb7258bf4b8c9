"""Logit-adjusted cross-entropy for long-tailed labels (Menon et al., ICLR 2021)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from kcnn.losses.basic import _one_hot
from kcnn.losses.registry import LOSSES


@LOSSES.register("logit_adjusted")
@keras.saving.register_keras_serializable(package="kcnn")
class LogitAdjustedLoss(keras.losses.Loss):
    """Cross-entropy on logits shifted by the log class prior.

    Training (``post_hoc=False``):  loss = −log softmax(z + τ·log π)_y

    π_c is the training frequency of class c. Adding τ·log π makes the rare
    classes' logits look smaller during training, so the model must push them
    up by a margin; the raw logits z then rank classes for the balanced error
    (for τ = 1 the Bayes-optimal rule of the class-balanced risk), and are used
    as they are at prediction.

    Post hoc (``post_hoc=True``): train with plain cross-entropy and predict
    with argmax(z − τ·log π) instead (:meth:`adjust_logits`; ``kcnn evaluate``
    applies it).

    Args:
        num_classes: K.
        priors: the K class priors π (``make_loss`` computes them from the training split).
        tau: τ >= 0.
        post_hoc: see above.

    Reference:
        Menon, Jayasumana, Rawat, Jain, Veit, Kumar, "Long-tail learning via logit
        adjustment", ICLR 2021 (arXiv 2020).
    """

    def __init__(self, num_classes: int, priors, tau: float = 1.0, post_hoc: bool = False,
                 name="logit_adjusted", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        priors = [float(p) for p in priors]
        if len(priors) != int(num_classes) or not all(0 < p <= 1 for p in priors):
            raise ValueError(f"priors must be {num_classes} values in (0, 1]. Received: priors={priors}")
        if not tau >= 0:
            raise ValueError(f"tau must be >= 0. Received: tau={tau}")
        self.num_classes = int(num_classes)
        self.priors = priors
        self.tau = float(tau)
        self.post_hoc = bool(post_hoc)

    @property
    def offsets(self) -> np.ndarray:
        """τ·log π, one per class."""
        return self.tau * np.log(np.asarray(self.priors, dtype=np.float64))

    def call(self, y_true, y_pred):
        z = ops.cast(y_pred, "float32")
        if not self.post_hoc:
            z = z + ops.convert_to_tensor(self.offsets.astype("float32"))
        logp = ops.log_softmax(z, axis=-1)
        return -ops.sum(_one_hot(y_true, self.num_classes) * logp, axis=-1)

    def adjust_logits(self, logits: np.ndarray) -> np.ndarray:
        """Logits to predict with: z − τ·log π when post hoc, else z unchanged."""
        logits = np.asarray(logits, dtype=np.float32)
        return logits - self.offsets.astype("float32") if self.post_hoc else logits

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "priors": self.priors,
                "tau": self.tau, "post_hoc": self.post_hoc}


TAU_GRID = tuple(float(t) for t in np.round(np.arange(0.0, 3.0001, 0.25), 2))


def tune_tau(logits: np.ndarray, y: np.ndarray, priors, grid=TAU_GRID,
             prefer: float = 1.0) -> tuple[float, dict[float, float]]:
    """The post-hoc τ with the best balanced accuracy of argmax(z − τ·log π) on (logits, y).

    Menon et al. derive τ = 1 for the balanced error of a calibrated model, and
    tune τ on held-out data in practice; kcnn does the latter on the validation
    split. Ties go to the τ closest to ``prefer``. Returns (τ, {τ: balanced accuracy}).
    """
    from sklearn.metrics import balanced_accuracy_score

    logits = np.asarray(logits, dtype=np.float64)
    log_prior = np.log(np.asarray(priors, dtype=np.float64))
    scores = {float(t): float(balanced_accuracy_score(y, np.argmax(logits - t * log_prior, axis=1)))
              for t in grid}
    best = max(scores.values())
    tau = min((t for t, s in scores.items() if s >= best - 1e-12), key=lambda t: (abs(t - prefer), t))
    return tau, scores
