"""Evaluation: a model (run dir, .keras) on a data split → metrics.json + plots.

Metrics come from scikit-learn. ``metrics.json`` keys: accuracy,
balanced_accuracy, macro_f1, g_mean (geometric mean of the per-class recalls),
loss, per_class, confusion_matrix, expected_cost (when the recipe's loss has a
cost matrix), plus split, num_samples and model for provenance.

Under ``data.task: regression`` the keys are mse, rmse, mae, r2 (scikit-learn,
averaged uniformly over the targets), loss and per_target (a list of
``{target, mse, rmse, mae, r2}``), and the plot is predicted against true values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kcnn.data.dataset import Dataset, Split
from kcnn.data.sources import load_dataset
from kcnn.errors import KcnnError
from kcnn.io import write_json
from kcnn.recipes.schema import Recipe


def classification_metrics(y: np.ndarray, logits: np.ndarray, class_names: list[str],
                           loss: float | None, cost_matrix: np.ndarray | None = None) -> dict[str, Any]:
    """Scores of argmax predictions. ``g_mean`` is taken over the classes present in
    ``y`` (imbalanced-learn's ``geometric_mean_score``); ``expected_cost`` is
    (1/N) Σ_i C[y_i, ŷ_i] when a cost matrix C is given."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    labels = list(range(len(class_names)))
    pred = np.argmax(logits, axis=-1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    rec = recall[support > 0]
    g_mean = float(np.exp(np.log(rec).mean())) if len(rec) and rec.min() > 0 else 0.0
    extra = {}
    if cost_matrix is not None:
        from kcnn.losses.cost_matrix import expected_cost

        extra["expected_cost"] = expected_cost(y, pred, cost_matrix)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "g_mean": g_mean,
        **extra,
        "loss": None if loss is None else float(loss),
        "per_class": [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f),
             "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        ],
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def regression_metrics(y: np.ndarray, pred: np.ndarray, target_names: list[str],
                       loss: float | None) -> dict[str, Any]:
    """mse, rmse, mae and r2 over all targets (uniform average) and per target."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y = np.asarray(y, dtype="float64").reshape(len(y), -1)
    pred = np.asarray(pred, dtype="float64").reshape(y.shape)
    mse = mean_squared_error(y, pred, multioutput="raw_values")
    mae = mean_absolute_error(y, pred, multioutput="raw_values")
    # r2 is undefined for a constant target or a single sample; report None then.
    defined = len(y) > 1 and bool(np.all(np.var(y, axis=0) > 0))
    r2 = r2_score(y, pred, multioutput="raw_values") if defined else [None] * y.shape[1]
    return {
        "mse": float(mse.mean()),
        "rmse": float(np.sqrt(mse).mean()),
        "mae": float(mae.mean()),
        "r2": float(np.mean(r2)) if defined else None,
        "loss": None if loss is None else float(loss),
        "per_target": [
            {"target": name, "mse": float(m), "rmse": float(np.sqrt(m)), "mae": float(a),
             "r2": None if r is None else float(r)}
            for name, m, a, r in zip(target_names, mse, mae, r2)
        ],
    }


def predict_logits(model, split, batch_size: int = 256) -> np.ndarray:
    """The model's outputs on every image of a split (or an image array), in order."""
    from kcnn.data.pipeline import eval_dataset

    if isinstance(split, np.ndarray):
        split = Split(split, np.zeros(len(split), "int64"))
    from kcnn.data.images import bad_images_as_errors

    ds = eval_dataset(split, batch_size).map(lambda a, b: a)
    with bad_images_as_errors("while predicting", [split]):
        return np.asarray(model.predict(ds, verbose=0), dtype="float32")


def recipe_loss(recipe: Recipe, data: Dataset):
    """The recipe's training loss, with the training split's class counts."""
    from kcnn.losses import make_loss

    return make_loss(recipe.train.loss, data.num_classes, data.class_counts, data.class_names,
                     regression=data.is_regression)


def score_logits(recipe: Recipe, data: Dataset, y: np.ndarray, logits: np.ndarray) -> dict[str, Any]:
    """Loss and metrics of a model's logits on labels ``y``.

    The loss is the recipe's training loss on the raw logits; predictions use
    the logits the loss says to predict with (post-hoc logit adjustment).
    """
    from keras import ops

    from kcnn.losses import cost_matrix_of

    loss_fn = recipe_loss(recipe, data)
    loss = float(ops.convert_to_numpy(loss_fn(y, logits)))
    if data.is_regression:
        return regression_metrics(y, logits, data.class_names, loss)
    if hasattr(loss_fn, "adjust_logits"):
        logits = loss_fn.adjust_logits(logits)
    return classification_metrics(y, logits, data.class_names, loss, cost_matrix_of(recipe.train.loss))


def evaluate_keras_model(model, recipe: Recipe, data: Dataset, split: str,
                         with_outputs: bool = False):
    """Metrics of ``model`` on a split; with ``with_outputs``, also ``(y, outputs)``
    (what the regression plot is drawn from)."""
    part = data.split(split)
    if len(part) == 0:
        raise KcnnError(f"the {split} split is empty; choose another with --split")
    logits = predict_logits(model, part, recipe.train.batch_size)
    metrics = {**score_logits(recipe, data, part.y, logits), "split": split,
               "num_samples": int(len(part))}
    return (metrics, (part.y, logits)) if with_outputs else metrics


def write_metrics(metrics: dict[str, Any], path: Path, plots_dir: Path | None,
                  class_names: list[str], title: str, predictions=None) -> None:
    """metrics.json, and the confusion matrix (or, for regression, the predicted-vs-true
    plot from ``predictions = (y, pred)``)."""
    write_json(path, metrics)
    split = metrics.get("split", "test")
    if plots_dir is not None and "per_target" in metrics:
        if predictions is not None:
            from kcnn.viz.plots import predicted_vs_true

            name = "predicted_vs_true.png" if split == "test" else f"predicted_vs_true_{split}.png"
            predicted_vs_true(*predictions, class_names, plots_dir / name, title=title)
        return
    if plots_dir is not None:
        from kcnn.viz.plots import confusion_matrix

        name = "confusion_matrix.png" if split == "test" else f"confusion_matrix_{split}.png"
        confusion_matrix(np.asarray(metrics["confusion_matrix"]), class_names,
                         plots_dir / name, title=title)


def evaluate(target: str | Path, *, recipe_path: str | Path | None = None, split: str | None = None,
             write: bool = True) -> dict[str, Any]:
    """Evaluate a run dir, a ``.keras`` or a ``.tflite`` file; write metrics.json (and plots).

    A run's metrics go into the run (``metrics.json``, ``metrics_<split>.json``);
    a model file's beside it (``<stem>.metrics_<split>.json``).
    """
    from kcnn.choices import Split as SplitName
    from kcnn.choices import values
    from kcnn.saving import resolve

    if split is not None and split not in values(SplitName):
        raise KcnnError(f"--split: must be {', '.join(values(SplitName))} (got {split!r})")
    ref = resolve(target)
    recipe = ref.load_recipe(recipe_path, required="to know which data to evaluate on")
    split = split or recipe.evaluate.split
    data = load_dataset(recipe.data)
    part = data.split(split)
    if len(part) == 0:
        raise KcnnError(f"the {split} split is empty; choose another with --split")
    model = ref.load_model()
    if ref.kind == "tflite":
        logits = model.predict(part, recipe.train.batch_size)
    else:
        logits = predict_logits(model, part, recipe.train.batch_size)
    metrics = {**score_logits(recipe, data, part.y, logits), "split": split,
               "num_samples": int(len(part)), "model": str(ref.model_path)}
    if write:
        run = ref.run
        if ref.kind == "run" or (ref.kind == "keras" and run and run.path == ref.model_path.parent):
            path, plots = run.metrics_for(split), (run.plots if recipe.evaluate.plots else None)
        else:
            path, plots = ref.out_dir / f"{ref.model_path.stem}.metrics_{split}.json", None
        write_metrics(metrics, path, plots, data.class_names, f"{recipe.name} — {split}",
                      (part.y, logits))
        metrics["written_to"] = str(path)
    return metrics


def format_report(metrics: dict[str, Any]) -> str:
    """A short human-readable summary with a per-class (or per-target) table."""
    if "per_target" in metrics:
        return _format_regression(metrics)
    extra = "".join(f"  {k} {metrics[k]:.4f}" for k in ("g_mean", "expected_cost") if k in metrics)
    lines = [
        f"split: {metrics.get('split')}  samples: {metrics.get('num_samples')}",
        f"accuracy {metrics['accuracy']:.4f}  balanced_accuracy {metrics['balanced_accuracy']:.4f}  "
        f"macro_f1 {metrics['macro_f1']:.4f}{extra}  loss {metrics['loss']:.4f}",
        "",
        f"{'class':>12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>7}",
    ]
    for row in metrics["per_class"]:
        lines.append(
            f"{row['class']:>12} {row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:6.3f} "
            f"{row['support']:7d}"
        )
    return "\n".join(lines)


def _format_regression(metrics: dict[str, Any]) -> str:
    def num(v):
        return "n/a" if v is None else f"{v:.4f}"

    lines = [
        f"split: {metrics.get('split')}  samples: {metrics.get('num_samples')}",
        f"mse {num(metrics['mse'])}  rmse {num(metrics['rmse'])}  mae {num(metrics['mae'])}  "
        f"r2 {num(metrics['r2'])}  loss {num(metrics['loss'])}",
        "",
        f"{'target':>12} {'mse':>10} {'rmse':>10} {'mae':>10} {'r2':>8}",
    ]
    for row in metrics["per_target"]:
        lines.append(f"{row['target']:>12} {num(row['mse']):>10} {num(row['rmse']):>10} "
                     f"{num(row['mae']):>10} {num(row['r2']):>8}")
    return "\n".join(lines)
