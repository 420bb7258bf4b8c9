"""Recipe → data, model, optimizer, callbacks → ``model.fit`` → run directory."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kcnn import __version__
from kcnn.errors import KcnnError, TrainingError
from kcnn.io import write_json, write_text
from kcnn.recipes import dump, load
from kcnn.recipes.schema import Recipe


def setup_determinism(seed: int, deterministic: bool) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def preprocessing_layers(recipe: Recipe, x_train: np.ndarray) -> tuple[list[Any], dict[str, Any]]:
    """Rescaling and per-channel standardization layers, statistics from the training split."""
    import keras

    layers: list[Any] = []
    stats: dict[str, Any] = {"rescale": recipe.data.preprocess.rescale}
    scale = recipe.data.preprocess.rescale
    if scale:
        layers.append(keras.layers.Rescaling(scale, name="rescale"))
    if recipe.data.preprocess.standardize:
        x = x_train.astype("float64") * (scale or 1.0)
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        var = np.maximum(var, 1e-12)
        stats.update(mean=mean.tolist(), std=np.sqrt(var).tolist())
        layers.append(keras.layers.Normalization(mean=mean.tolist(), variance=var.tolist(),
                                                 name="standardize"))
    return layers, stats


def build_model(recipe: Recipe, data) -> tuple[Any, dict[str, Any]]:
    from kcnn.models import create_model

    pre, stats = preprocessing_layers(recipe, data.train.x)
    kwargs = recipe.model.kwargs
    kwargs.setdefault("num_classes", data.num_classes)
    kwargs.setdefault("input_shape", data.input_shape)
    if tuple(kwargs["input_shape"]) != tuple(data.input_shape):
        raise KcnnError(
            f"model.input_shape {tuple(kwargs['input_shape'])} does not match the data's "
            f"{tuple(data.input_shape)}"
        )
    if kwargs["num_classes"] != data.num_classes:
        raise KcnnError(
            f"model.num_classes {kwargs['num_classes']} does not match the data's {data.num_classes}"
        )
    return create_model(recipe.model.name, preprocessing=pre, **kwargs), stats


def versions() -> dict[str, str]:
    import keras

    out = {"kcnn": __version__, "keras": keras.__version__, "backend": keras.backend.backend()}
    if "tensorflow" in sys.modules or keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
    return out


def train(
    recipe: Recipe | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    runs_root: str | Path = "runs",
    callbacks: Sequence[Any] = (),
) -> Path:
    """Train a recipe (or resume a run) and return the run directory.

    Everything that can fail on bad input (data, model arguments) is checked
    before the run directory is created, so a failed start leaves nothing behind.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from kcnn.data.pipeline import EpochFeeder, eval_dataset, train_dataset
    from kcnn.data.samplers import make_sampler
    from kcnn.data.sources import load_dataset
    from kcnn.engine.callbacks import RunCheckpoint
    from kcnn.engine.evaluate import evaluate_keras_model, write_metrics
    from kcnn.engine.optim import make_optimizer
    from kcnn.engine.rundir import RunDir
    from kcnn.losses import make_loss

    state: dict[str, Any] = {}
    if resume is not None:
        run = RunDir.open(resume)
        state = run.read_state()
        run.remove_stale_temp_files()
        recipe = load(run.recipe)
    elif recipe is None:
        raise ValueError("train() needs a recipe or resume=RUN_DIR")
    cfg = recipe.train
    start_epoch = int(state.get("epoch", 0))

    setup_determinism(recipe.seed + 1009 * start_epoch, cfg.deterministic)
    data = load_dataset(recipe.data)
    sampler = make_sampler(recipe.data.sampler, data.train.y, data.num_classes, recipe.seed)
    if state.get("sampler"):
        sampler.load_state_dict(state["sampler"])
    feeder = EpochFeeder(sampler, cfg.batch_size, start_epoch, cfg.epochs)
    model, stats = build_model(recipe, data)
    model.compile(
        optimizer=make_optimizer(cfg, feeder.steps_per_epoch),
        loss=make_loss(cfg.loss, data.num_classes),
        metrics=["accuracy"],
    )

    if resume is not None:
        if state.get("checkpoint"):
            model.optimizer.build(model.trainable_variables)
            model.load_weights(run.checkpoints / state["checkpoint"])
        print(f"Resuming {run.path} at epoch {start_epoch + 1}/{cfg.epochs}", file=sys.stderr)
    else:
        run = RunDir.create(run_dir or RunDir.new_path(recipe.name, runs_root))
        resolved = recipe.model_copy(update={"versions": versions()})
        write_text(run.recipe, dump(resolved))
        write_json(run.preprocess, stats)
        run.write_state({"epoch": 0, "checkpoint": None, "history": []})

    checkpoint = RunCheckpoint(
        run, state=state, monitor=cfg.monitor, feeder=feeder,
        patience=cfg.callbacks.early_stopping.patience if cfg.callbacks.early_stopping else None,
        min_delta=cfg.callbacks.early_stopping.min_delta if cfg.callbacks.early_stopping else 0.0,
        plots=recipe.evaluate.plots,
    )
    all_callbacks = [checkpoint, *callbacks]
    if cfg.callbacks.tensorboard:
        all_callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.tensorboard)))

    if start_epoch < cfg.epochs and not _already_stopped(state, cfg):
        verbose = cfg.verbose if cfg.verbose is not None else (1 if sys.stdout.isatty() else 2)
        model.fit(
            train_dataset(data.train, feeder, recipe.data.augment, recipe.seed),
            epochs=cfg.epochs,
            initial_epoch=start_epoch,
            steps_per_epoch=feeder.steps_per_epoch,
            validation_data=eval_dataset(data.val, cfg.batch_size) if len(data.val) else None,
            callbacks=all_callbacks,
            verbose=verbose,
            shuffle=False,  # the sampler already orders every epoch
        )
    if checkpoint.nan_at is not None:
        epoch, batch = checkpoint.nan_at
        raise TrainingError(
            f"training stopped: the loss became NaN/inf at epoch {epoch + 1}, batch {batch + 1} "
            f"(try a lower train.optimizer.lr or warm-up; {run.path} keeps the last good epoch)"
        )
    if checkpoint.early_stopped_at is not None:
        run_state = run.read_state()
        run.write_state({**{k: v for k, v in run_state.items() if k != "version"},
                         "stopped_early": True})
        print(f"Early stopping after epoch {checkpoint.early_stopped_at + 1}", file=sys.stderr)

    best = keras.saving.load_model(run.model, compile=False)
    split = recipe.evaluate.split
    metrics = evaluate_keras_model(best, recipe, data, split)
    metrics["model"] = str(run.model)
    metrics["best_epoch"] = (checkpoint.best_epoch + 1) if checkpoint.best_epoch is not None else None
    write_metrics(metrics, run.metrics_for(split), run.plots if recipe.evaluate.plots else None,
                  data.class_names, f"{recipe.name} — {split}")
    return run.path


def _already_stopped(state: dict[str, Any], cfg) -> bool:
    return bool(state.get("stopped_early"))
