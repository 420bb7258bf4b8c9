"""Losses, registered by the name a recipe's ``train.loss.type`` uses.

Every loss takes integer class labels (``mse``/``l2`` also float regression
targets) and the model's logits, and returns one value per sample, so Keras applies per-sample weights (an npz ``w``/``cost``
array) on top.

| type             | module              | cost-sensitive by                                   |
|------------------|---------------------|-----------------------------------------------------|
| `cross_entropy`  | basic.py            | `class_weights`: list, balanced, effective_number    |
| `mse`, `l2`      | basic.py            | —                                                   |
| `focal`          | focal.py            | down-weighting easy samples; `alpha` per class      |
| `cost_matrix`    | cost_matrix.py      | expected cost Σ_j p_j·C[y, j] (+ λ·cross-entropy)   |
| `logit_adjusted` | logit_adjusted.py   | τ·log π_y added to the logits (or post hoc)         |
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kcnn.errors import RecipeError
from kcnn.losses.registry import LOSSES

__all__ = ["LOSSES", "cost_matrix_of", "make_loss"]


def make_loss(config: Any, num_classes: int, class_counts=None, class_names=None,
              regression: bool = False):
    """Build the Keras loss for a recipe's ``train.loss`` section.

    ``class_counts`` (the training split's samples per class) is needed by
    ``balanced``/``effective_number`` weights and by ``logit_adjusted``.
    ``regression``: ``num_classes`` is the number of float targets (mse/l2 only).
    """
    # Importing the modules registers their classes (they import Keras).
    from kcnn.losses import basic, cost_matrix, focal, logit_adjusted  # noqa: F401
    from kcnn.losses.weights import class_priors, resolve_class_weights

    # tune_tau is a step after training (kcnn.engine.train), not part of the Keras loss.
    options = config.model_dump(exclude={"type", "tune_tau"}, exclude_none=True)
    if regression:
        if config.type not in ("mse", "l2"):
            raise RecipeError(f"{config.type!r} needs class labels; regression takes mse or l2",
                              key="train.loss.type")
        options["regression"] = True
    beta = options.pop("beta", None)
    for field in ("class_weights", "alpha"):
        if field in options:
            options[field] = resolve_class_weights(options[field], num_classes, class_counts, beta,
                                                   f"train.loss.{field}", class_names)
    if config.type == "cost_matrix":
        k = len(options["matrix"])
        if k != num_classes:
            raise RecipeError(f"is {k}×{k} but the data has {num_classes} classes "
                              f"(needs {num_classes}×{num_classes})", key="train.loss.matrix")
    if config.type == "logit_adjusted":
        if class_counts is None:
            raise RecipeError("needs the training split's class counts", key="train.loss")
        options["priors"] = [float(p) for p in class_priors(np.asarray(class_counts), class_names)]
    return LOSSES.get(config.type)(num_classes=num_classes, **options)


def cost_matrix_of(config: Any) -> np.ndarray | None:
    """The recipe loss's cost matrix (``train.loss``), or None."""
    matrix = getattr(config, "matrix", None)
    return None if matrix is None else np.asarray(matrix, dtype=np.float64)
