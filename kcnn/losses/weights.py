"""Per-class weights and priors from training-split class counts (NumPy only).

``balanced``          w_c = N / (C · n_c)                (scikit-learn's ``compute_class_weight``)
``effective_number``  w_c ∝ (1 − β) / (1 − β^n_c), Σ_c w_c = C   (Cui et al., CVPR 2019)

The effective number of samples E_n = (1 − β^n) / (1 − β) grows like n for
small n and saturates at 1 / (1 − β): β = 0 gives equal weights, β → 1 the
inverse frequency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kcnn.errors import DataError, RecipeError

DEFAULT_BETA = 0.999


def _counts(class_counts: Sequence[int], what: str, class_names: Sequence[str] | None = None) -> np.ndarray:
    counts = np.asarray(class_counts, dtype=np.float64)
    empty = np.flatnonzero(counts <= 0)
    if len(empty):
        c = int(empty[0])
        name = class_names[c] if class_names else str(c)
        raise DataError(f"{what} needs samples of every class, but class {name!r} has none in the training split")
    return counts


def balanced_weights(class_counts: Sequence[int], class_names: Sequence[str] | None = None) -> np.ndarray:
    """N / (C · n_c): every class carries the same total weight."""
    counts = _counts(class_counts, "'balanced' class weighting", class_names)
    return counts.sum() / (len(counts) * counts)


def effective_number_weights(class_counts: Sequence[int], beta: float = DEFAULT_BETA,
                             class_names: Sequence[str] | None = None) -> np.ndarray:
    """(1 − β) / (1 − β^n_c), normalised to sum to the number of classes."""
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1). Received: beta={beta}")
    counts = _counts(class_counts, "'effective_number' class weighting", class_names)
    w = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return w * len(counts) / w.sum()


def class_priors(class_counts: Sequence[int], class_names: Sequence[str] | None = None) -> np.ndarray:
    """π_c = n_c / N."""
    counts = _counts(class_counts, "logit adjustment (log π_c)", class_names)
    return counts / counts.sum()


def resolve_class_weights(spec, num_classes: int, class_counts: Sequence[int] | None,
                          beta: float | None, key: str,
                          class_names: Sequence[str] | None = None) -> list[float] | None:
    """A recipe's weight setting (list, ``balanced``, ``effective_number`` or None) → C floats."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if class_counts is None:
            raise RecipeError(f"{spec!r} weights need the training split's class counts", key=key)
        if len(class_counts) != num_classes:
            raise ValueError(f"class_counts has {len(class_counts)} entries for {num_classes} classes")
        if spec == "balanced":
            w = balanced_weights(class_counts, class_names)
        elif spec == "effective_number":
            w = effective_number_weights(class_counts, DEFAULT_BETA if beta is None else beta, class_names)
        else:
            raise RecipeError(f"unknown class weighting {spec!r}; valid: balanced, effective_number", key=key)
        return [float(v) for v in w]
    weights = [float(v) for v in spec]
    if len(weights) != num_classes:
        raise RecipeError(f"has {len(weights)} entries but the data has {num_classes} classes", key=key)
    return weights
