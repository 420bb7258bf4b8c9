"""What ``fit`` trains on: the model (or a multi-head wrapper), its losses and its data.

A plain run trains the recipe's model (:meth:`Setup.plain`); source-data
co-training (:mod:`kcnn.engine.cotrain`) and distillation
(:mod:`kcnn.engine.distill`) build other setups around the same model.
"""

from __future__ import annotations

from kcnn.data.dataset import Dataset
from kcnn.recipes.schema import Recipe


class Setup:
    """What ``fit`` trains on: the model (or a multi-head wrapper), its losses and data."""

    def __init__(self, fit_model, best_model, loss, metrics, train_dataset, val_dataset,
                 train_labels, class_names, monitor_prefix: str = "", report: dict | None = None):
        self.fit_model = fit_model
        self.train_labels = train_labels  # what the sampler orders
        self.class_names = class_names
        self.best_model = best_model  # what model.keras holds; None: fit_model itself
        self.loss = loss
        self.metrics = metrics
        self.train_dataset = train_dataset  # EpochFeeder → tf.data.Dataset
        self.val_dataset = val_dataset  # batch size → tf.data.Dataset or None
        self.monitor_prefix = monitor_prefix
        self.report = report or {}

    def monitor_key(self, monitor: str) -> str:
        if not self.monitor_prefix:
            return monitor
        return monitor.replace("val_", f"val_{self.monitor_prefix}", 1)

    @classmethod
    def plain(cls, model, loss, data: Dataset, recipe: Recipe) -> Setup:
        import keras

        from kcnn.data.pipeline import eval_dataset, train_dataset

        metrics = [keras.metrics.MeanAbsoluteError(name="mae")] if data.is_regression else ["accuracy"]
        return cls(
            model, None, loss, metrics,
            lambda feeder: train_dataset(data.train, feeder, recipe.data.augment, recipe.seed),
            lambda bs: eval_dataset(data.val, bs) if len(data.val) else None,
            data.sampler_labels, ["all"] if data.is_regression else data.class_names,
        )
