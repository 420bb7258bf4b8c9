"""What ``kcnn train`` tells its user: a short header before training, a footer after.

Header: the run dir, the data (images per split, per class, the imbalance ratio,
skipped files) and the model (name, parameters, multiply-accumulates). Footer:
the best epoch and its monitored value, the test metrics, the files written and
the next commands. Both go to stdout; the CLI prints the run dir after them, so
stdout's last line stays the run dir.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

LABEL = "{:<7}"


def _line(label: str, text: str) -> str:
    return f"{LABEL.format(label)} {text}"


def class_counts_text(y: np.ndarray, names: list[str], limit: int = 12) -> str:
    """``a 120 · b 95 · …`` for few classes, ``min … median … max`` for many; with the ratio
    of the largest class to the smallest."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(names))[: len(names)]
    if len(counts) == 0:
        return "no samples"
    nonzero = counts[counts > 0]
    ratio = counts.max() / max(nonzero.min(), 1) if len(nonzero) else float("nan")
    if len(names) <= limit:
        per = " · ".join(f"{n} {c}" for n, c in zip(names, counts))
    else:
        per = (f"{len(names)} classes: min {counts.min()}, median {int(np.median(counts))}, "
               f"max {counts.max()}")
    return f"{per} (imbalance {ratio:.1f}:1)"


def data_lines(data) -> list[str]:
    sizes = " · ".join(f"{name} {len(data.split(name)):,}" for name in ("train", "val", "test"))
    shape = "×".join(str(d) for d in data.input_shape)
    kind = "targets" if data.is_regression else "classes"
    lines = [_line("data", f"{sizes} images of {shape}, {data.num_classes} {kind}")]
    if not data.is_regression:
        lines.append(_line("", "train per class: " + class_counts_text(data.train.y,
                                                                        data.class_names)))
    if data.skipped:
        lines.append(_line("", f"skipped {len(data.skipped)} unreadable files "
                               f"(listed in skipped_images.txt)"))
    return lines


def model_line(recipe, model) -> str:
    from kcnn.models.info import analyze

    try:
        macs = analyze(model).macs
        cost = f", {_si(macs)} MACs per image"
    except Exception:  # noqa: BLE001 - a model info cannot size is still trained
        cost = ""
    return _line("model", f"{recipe.model.name}: {model.count_params():,} parameters{cost}")


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f}"


def header(plan, run, resumed_from: int = 0) -> str:
    lines = [_line("run", str(run.path) + (f" (resuming after epoch {resumed_from})"
                                           if resumed_from else ""))]
    lines += data_lines(plan.data)
    lines.append(model_line(plan.recipe, plan.model))
    return "\n".join(lines)


def _metric_text(metrics: dict[str, Any]) -> str:
    keys = ("mse", "rmse", "mae", "r2") if "per_target" in metrics else (
        "accuracy", "balanced_accuracy", "macro_f1")
    parts = [f"{k} {metrics[k]:.4f}" for k in keys if metrics.get(k) is not None]
    if metrics.get("loss") is not None:
        parts.append(f"loss {metrics['loss']:.4f}")
    return " · ".join(parts)


def footer(plan, run, metrics: dict[str, Any], checkpoint) -> str:
    recipe = plan.recipe
    lines = []
    if checkpoint.best_epoch is not None and checkpoint.best is not None:
        lines.append(_line("best", f"epoch {checkpoint.best_epoch + 1}: {recipe.train.monitor} "
                                   f"{checkpoint.best:.4f}"))
    split = metrics.get("split", recipe.evaluate.split)
    lines.append(_line(split, f"{_metric_text(metrics)} ({metrics.get('num_samples', 0):,} images)"))
    written = ["model.keras", "metrics.json" if split == "test" else f"metrics_{split}.json",
               "history.csv", "checkpoints/"]
    if recipe.evaluate.plots:
        written.append("plots/")
    if recipe.train.callbacks.tensorboard:
        written.append("tensorboard/")
    lines.append(_line("wrote", ", ".join(written)))
    lines.append(_line("next", f"kcnn evaluate {run.path}  ·  kcnn export {run.path} "
                               f"--quantize int8  ·  kcnn info {run.path}"))
    return "\n".join(lines)


def echo(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
