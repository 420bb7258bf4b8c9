"""Training curves and confusion matrices as PNG files, written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kcnn.io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def training_curves(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Loss, accuracy and learning rate per epoch, train and validation."""
    epochs = [h["epoch"] + 1 for h in history]
    panels = [("loss", "loss"), ("accuracy", "accuracy"), ("learning_rate", "learning rate")]
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
    return _save(fig, path)


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
    return _save(fig, path)
