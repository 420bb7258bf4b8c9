"""Keras callbacks that keep a run directory consistent after every epoch."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import keras
import numpy as np

from kcnn.engine.optim import current_lr
from kcnn.engine.rundir import STATE_VERSION, RunDir
from kcnn.io import atomic_path, write_json, write_text


def _scalar(value: Any) -> float:
    return float(np.asarray(keras.ops.convert_to_numpy(value)))


class RunCheckpoint(keras.callbacks.Callback):
    """Per epoch: history, best ``model.keras``, weights checkpoint, state; early stopping.

    Written by hand rather than with ModelCheckpoint + CSVLogger +
    BackupAndRestore because the run must commit all of these together
    (``state.json`` last) so that a ``kill -9`` at any moment leaves a run that
    resumes, with the sampler state and best metric included.

    Also stops on a NaN/inf loss and records where it happened.
    """

    def __init__(self, run: RunDir, *, state: dict[str, Any], monitor: str, feeder,
                 best_model=None, monitor_key: str | None = None,
                 patience: int | None = None, min_delta: float = 0.0, plots: bool = True):
        # plots: draw plots/curves.png when fit() ends (not per epoch: it costs ~0.4 s)
        super().__init__()
        self.run = run
        self.monitor = monitor
        # What model.keras holds (e.g. the target head of a multi-head model) and which log
        # key carries the monitored value (e.g. "val_target_accuracy"); default: the same.
        self.best_model = best_model
        self.monitor_key = monitor_key or monitor
        self.mode = "min" if monitor.endswith("loss") else "max"
        self.feeder = feeder
        self.patience = patience
        self.min_delta = min_delta
        self.plots = plots
        self.history: list[dict[str, Any]] = list(state.get("history", []))
        self.best: float | None = state.get("best")
        self.best_epoch: int | None = state.get("best_epoch")
        # An extended run (``--resume --epochs``) counts early-stopping patience from the
        # extension, not from a best epoch before it.
        self.patience_from: int = int(state.get("patience_from", 0))
        self.nan_at: tuple[int, int] | None = None
        self.early_stopped_at: int | None = None
        self._epoch = 0

    def use_feeder(self, feeder) -> None:
        """The feeder of the next ``fit`` (see :func:`kcnn.engine.fit.fit_epochs`)."""
        self.feeder = feeder

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(_scalar(loss)):
            self.nan_at = (self._epoch, batch)
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.plots and self.history:
            from kcnn.viz.plots import training_curves

            training_curves(self.history, self.run.plots / "curves.png")

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_at is not None:
            return  # never commit an epoch that diverged
        row = {"epoch": epoch + 1}  # 1-based, as Keras prints "Epoch 1/N"
        row.update({k: _scalar(v) for k, v in (logs or {}).items()})
        row["learning_rate"] = current_lr(self.model.optimizer)
        self.history.append(row)

        value = row.get(self.monitor_key)
        if value is None:
            value = row.get(self.monitor_key.removeprefix("val_"))
        if value is not None and self._improved(value):
            self.best, self.best_epoch = value, epoch
            with atomic_path(self.run.model) as tmp:
                (self.best_model or self.model).save(tmp)

        ckpt = f"epoch-{epoch + 1:04d}.weights.h5"
        with atomic_path(self.run.checkpoints / ckpt, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        state = {
            "epoch": epoch + 1,
            "checkpoint": ckpt,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "monitor": self.monitor,
            "sampler": self.feeder.states.get(epoch, {}),
            "rng": rng_state(self.model),
            "history": self.history,
        }
        if self.patience_from:
            state["patience_from"] = self.patience_from
        write_json(self.run.epoch_state_file(epoch + 1), {"version": STATE_VERSION, **state})
        self.run.write_state(state)  # the commit point
        self.run.prune_checkpoints(keep_last=2)
        write_history_csv(self.run, self.history)

        if self.patience is not None and self.best_epoch is not None:
            if epoch - max(self.best_epoch, self.patience_from - 1) >= self.patience:
                self.early_stopped_at = epoch
                self.model.stop_training = True


def seed_variables(model) -> list[Any]:
    """The state variables of every ``keras.random.SeedGenerator`` in ``model`` (Dropout,
    StochasticPooling2D, noise layers, …), in the model's variable order.

    ``save_weights`` leaves them out, so a resumed run would draw different dropout
    masks from the uninterrupted one; the checkpoint's state.json carries them instead.
    """
    return [v for v in model.variables if v.path.split("/")[-1] == "seed_generator_state"]


def rng_state(model) -> list[list[int]]:
    return [np.asarray(keras.ops.convert_to_numpy(v)).astype(np.int64).tolist()
            for v in seed_variables(model)]


def restore_rng_state(model, state: list[list[int]] | None) -> None:
    """Put saved SeedGenerator states back (a checkpoint from before they were saved has none)."""
    if not state:
        return
    variables = seed_variables(model)
    if len(variables) != len(state):
        from kcnn.errors import RunDirError

        raise RunDirError(f"checkpoint has {len(state)} random-generator states but the model "
                          f"has {len(variables)} (was the run's recipe or kcnn changed?)")
    for var, value in zip(variables, state):
        var.assign(np.asarray(value, dtype=keras.backend.standardize_dtype(var.dtype)))


def write_history_csv(run: RunDir, history: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(run.history, buf.getvalue())
