"""Training curves, confusion matrices and regression scatter plots as PNG files, written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kcnn.io import atomic_path  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def training_curves(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Loss, accuracy (or mae, for regression) and learning rate per epoch, train and validation."""
    epochs = [h["epoch"] for h in history]  # history epochs are 1-based
    panels = [("loss", "loss"), ("accuracy", "accuracy"), ("mae", "mean absolute error"),
              ("learning_rate", "learning rate")]
    panels = [p for p in panels if any(p[0] in h for h in history)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for prefix, label in (("", "train"), ("val_", "val")):
            values = [h.get(prefix + key) for h in history]
            if any(v is not None for v in values) and (prefix == "" or key != "learning_rate"):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker=".", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if key != "learning_rate":
            ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str = "") -> Path:
    """Counts with per-row (recall) shading, via scikit-learn's display."""
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(class_names)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(class_names)).plot(
        ax=ax, colorbar=False, cmap="Blues", values_format="d", include_values=n <= 30
    )
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def predicted_vs_true(y: np.ndarray, pred: np.ndarray, target_names: Sequence[str], path: Path,
                      title: str = "", max_targets: int = 6) -> Path:
    """Predicted against true values, one panel per target (the first ``max_targets``),
    via scikit-learn's PredictionErrorDisplay."""
    from sklearn.metrics import PredictionErrorDisplay

    y = np.asarray(y, dtype="float64").reshape(len(y), -1)
    pred = np.asarray(pred, dtype="float64").reshape(y.shape)
    k = min(y.shape[1], max_targets)
    fig, axes = plt.subplots(1, k, figsize=(4.0 * k, 4.0), squeeze=False)
    for i, ax in enumerate(axes[0]):
        PredictionErrorDisplay.from_predictions(y[:, i], pred[:, i], kind="actual_vs_predicted",
                                                ax=ax, subsample=None)
        ax.set_title(str(target_names[i]) if i < len(target_names) else f"target_{i}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
