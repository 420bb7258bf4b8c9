"""Recipe → data, model, optimizer, callbacks → ``model.fit`` → run directory."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kcnn import __version__
from kcnn.errors import KcnnError, TrainingError
from kcnn.io import write_json, write_text
from kcnn.recipes import dump, load, loads
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
    try:
        model = create_model(recipe.model.name, preprocessing=pre, **kwargs)
    except (TypeError, ValueError) as err:  # a builder or Keras layer refusing a model option
        raise KcnnError(f"model {recipe.model.name!r}: cannot build with these options "
                        f"({type(err).__name__}: {err})") from None
    return model, stats


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
    The Keras dtype policy (``train.precision``) is restored afterwards.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    policy = keras.mixed_precision.global_policy()
    try:
        return _train(recipe, run_dir=run_dir, resume=resume, runs_root=runs_root,
                      callbacks=callbacks)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _train(recipe, *, run_dir, resume, runs_root, callbacks) -> Path:
    import keras

    from kcnn.data.pipeline import EpochFeeder
    from kcnn.data.samplers import make_sampler
    from kcnn.data.sources import load_dataset
    from kcnn.engine.callbacks import RunCheckpoint
    from kcnn.engine.distribute import (
        check_global_batch,
        distributed_train_dataset,
        is_chief,
        make_strategy,
        scope,
        set_precision,
    )
    from kcnn.engine.evaluate import evaluate_keras_model, recipe_loss, write_metrics
    from kcnn.engine.finetune import apply_freeze, frozen_layers, units, warm_start
    from kcnn.engine.optim import make_optimizer
    from kcnn.engine.rundir import RunDir

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
    set_precision(cfg.precision)
    strategy, tf_config = make_strategy(recipe.distribute)
    data = load_dataset(recipe.data)
    chief = is_chief(tf_config)
    if strategy is not None:
        replicas = strategy.num_replicas_in_sync
        per_replica = check_global_batch(cfg.batch_size, replicas)
        print(f"{recipe.distribute.strategy}: global batch {cfg.batch_size} = {replicas} replicas "
              f"x {per_replica}", file=sys.stderr)
    with scope(strategy):
        model, stats = build_model(recipe, data)
        loss = recipe_loss(recipe, data)
        phases = training_phases(cfg, len(units(model)))
        if recipe.model.init is not None and resume is None:  # a resumed run has its checkpoint
            init = recipe.model.init
            load_report = warm_start(model, init.from_, init.layers, init.skip_mismatch)
            for line in load_report.lines():
                print(line, file=sys.stderr)
        else:
            load_report = None
        setup = Setup.plain(model, loss, data, recipe)
        if recipe.finetune is not None and recipe.finetune.co_training is not None:
            from kcnn.engine.cotrain import prepare_cotraining

            setup = prepare_cotraining(recipe, data, model, loss)
        if recipe.distill is not None:  # fit a Distiller (student + frozen teacher), keep the student
            from kcnn.compress.distill import wrap_student

            recipe, setup.fit_model = wrap_student(recipe, setup.fit_model, data)
            setup.best_model = setup.best_model or model
        sampler = make_sampler(recipe.data.sampler, setup.train_labels, len(setup.class_names),
                               recipe.seed, epochs=cfg.epochs, class_names=setup.class_names)
        if state.get("sampler"):
            sampler.load_state_dict(state["sampler"])
        steps = (sampler.num_batches(cfg.batch_size) if strategy is None
                 else sampler.num_full_batches(cfg.batch_size))
        frozen_by_phase = [frozen_layers(model, cfg.freeze, cfg.freeze_depth, top) for _, _, top in phases]

        def compile_phase(i: int) -> None:
            apply_freeze(model, frozen_by_phase[i])
            setup.fit_model.compile(optimizer=make_optimizer(cfg, steps, model), loss=setup.loss,
                                    metrics=setup.metrics)

        current = None  # index of the phase the model is compiled for
        if resume is not None:
            if state.get("checkpoint"):
                current = phase_index(phases, start_epoch - 1)
                compile_phase(current)
                setup.fit_model.optimizer.build(setup.fit_model.trainable_variables)
                setup.fit_model.load_weights(run.checkpoints / state["checkpoint"])
            print(f"Resuming {run.path} at epoch {start_epoch + 1}/{cfg.epochs}", file=sys.stderr)
        else:
            target = run_dir or RunDir.new_path(recipe.name, runs_root)
            if not chief:  # other workers write to a scratch dir; the chief's is the run
                target = Path(tempfile.mkdtemp(prefix="kcnn-worker-")) / "run"
            run = RunDir.create(target)
            resolved = recipe.model_copy(update={"versions": versions()})
            write_text(run.recipe, dump(resolved) + frozen_comment(phases, frozen_by_phase))
            write_json(run.preprocess, stats)
            if load_report is not None or any(frozen_by_phase) or setup.report:
                write_json(run.path / "finetune.json", {
                    "warm_start": load_report.as_dict() if load_report else None,
                    "phases": [{"epochs": [b, e], "trainable_top": top, "frozen": f}
                               for (b, e, top), f in zip(phases, frozen_by_phase)],
                    **setup.report,
                })
            run.write_state({"epoch": 0, "checkpoint": None, "history": []})

        checkpoint = RunCheckpoint(
            run, state=state, monitor=cfg.monitor, feeder=None,
            best_model=setup.best_model, monitor_key=setup.monitor_key(cfg.monitor),
            patience=cfg.callbacks.early_stopping.patience if cfg.callbacks.early_stopping else None,
            min_delta=cfg.callbacks.early_stopping.min_delta if cfg.callbacks.early_stopping else 0.0,
            plots=recipe.evaluate.plots,
        )
        all_callbacks = [checkpoint, *callbacks]
        if cfg.callbacks.tensorboard:
            all_callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.tensorboard)))

        verbose = cfg.verbose if cfg.verbose is not None else (1 if sys.stdout.isatty() else 2)
        for i, (begin, end, _) in enumerate(phases):
            if end <= start_epoch or _already_stopped(state, cfg):
                continue
            begin = max(begin, start_epoch)
            if current != i:
                compile_phase(i)
                set_iterations(setup.fit_model, begin * steps)
                current = i
                if frozen_by_phase[i]:
                    print(f"epochs {begin + 1}-{end}: frozen layers: {', '.join(frozen_by_phase[i])}",
                          file=sys.stderr)
            if strategy is None:
                feeder = EpochFeeder(sampler, cfg.batch_size, begin, end)
                dataset = setup.train_dataset(feeder)
            else:
                dataset, feeders = distributed_train_dataset(strategy, setup, sampler, cfg.batch_size,
                                                             begin, end)
                feeder = feeders[0]
                if tf_config is not None:
                    prebuild_for_multi_worker(setup, sampler, cfg.batch_size, begin)
            checkpoint.feeder = feeder
            setup.fit_model.fit(
                dataset,
                epochs=end,
                initial_epoch=begin,
                steps_per_epoch=steps,
                validation_data=setup.val_dataset(cfg.batch_size),
                callbacks=all_callbacks,
                verbose=verbose,
                shuffle=False,  # the sampler already orders every epoch
            )
            if checkpoint.nan_at is not None or checkpoint.early_stopped_at is not None:
                break
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
    tuned = None
    if getattr(cfg.loss, "tune_tau", False):
        recipe, tuned = tune_post_hoc_tau(best, recipe, data, run)
    split = recipe.evaluate.split
    metrics, outputs = evaluate_keras_model(best, recipe, data, split, with_outputs=True)
    if tuned is not None:
        metrics["post_hoc_tau"] = tuned
    metrics["model"] = str(run.model)
    metrics["best_epoch"] = (checkpoint.best_epoch + 1) if checkpoint.best_epoch is not None else None
    write_metrics(metrics, run.metrics_for(split), run.plots if recipe.evaluate.plots else None,
                  data.class_names, f"{recipe.name} — {split}", outputs)
    return run.path


def tune_post_hoc_tau(model, recipe: Recipe, data, run) -> tuple[Recipe, float]:
    """Pick the post-hoc logit-adjustment τ on the validation split (``tune_tau: true``).

    The chosen τ replaces ``train.loss.tau`` in the run's recipe.yaml, so ``kcnn
    evaluate`` and ``kcnn export`` predict with it; every τ's validation balanced
    accuracy goes to ``post_hoc_tau.json``.
    """
    from kcnn.engine.evaluate import predict_logits
    from kcnn.losses.logit_adjusted import tune_tau
    from kcnn.losses.weights import class_priors

    loss = recipe.train.loss
    if len(data.val) == 0:
        print(f"train.loss.tune_tau: no validation split to tune on; keeping tau {loss.tau}",
              file=sys.stderr)
        return recipe, loss.tau
    logits = predict_logits(model, data.val.x, recipe.train.batch_size)
    tau, scores = tune_tau(logits, data.val.y, class_priors(data.class_counts, data.class_names),
                           prefer=loss.tau)
    tuned = recipe.model_copy(deep=True)
    tuned.train.loss.tau = tau
    saved_text = run.recipe.read_text()
    saved = loads(saved_text, str(run.recipe))
    comments = "".join(line + "\n" for line in saved_text.splitlines() if line.startswith("#"))
    write_text(run.recipe, dump(tuned.model_copy(update={"versions": saved.versions})) + comments)
    write_json(run.path / "post_hoc_tau.json", {
        "tau": tau, "split": "val", "num_samples": int(len(data.val)),
        "balanced_accuracy_by_tau": {str(t): s for t, s in scores.items()},
    })
    print(f"post-hoc tau tuned on val: {tau} (balanced accuracy {scores[tau]:.4f}; "
          f"tau {loss.tau}: {scores.get(loss.tau, float('nan')):.4f})", file=sys.stderr)
    return tuned, tau


def _already_stopped(state: dict[str, Any], cfg) -> bool:
    return bool(state.get("stopped_early"))


def prebuild_for_multi_worker(setup, sampler, batch_size: int, epoch: int) -> None:
    """Build metrics, loss and optimizer from one local batch before ``fit``.

    Keras' ``fit`` first averages a batch across replicas to build them
    symbolically (``_maybe_symbolic_build``); under MultiWorkerMirroredStrategy
    that reduce fails on nested (x, y) batches. Building from a local batch
    inside the strategy scope, then skipping that step, gives the same state.
    """
    from kcnn.data.pipeline import EpochFeeder

    model = setup.fit_model
    local = EpochFeeder(sampler, batch_size, epoch, epoch + 1)
    batch = next(iter(setup.train_dataset(local)))
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def training_phases(cfg, num_units: int) -> list[tuple[int, int, int | None]]:
    """Epoch ranges with a constant set of trainable layers: (begin, end, trainable_top)."""
    if cfg.unfreeze is None:
        return [(0, cfg.epochs, cfg.trainable_top)]
    phases: list[tuple[int, int, int | None]] = []
    for epoch in range(cfg.epochs):
        top = min(cfg.unfreeze.trainable_top(epoch), num_units)
        if phases and phases[-1][2] == top:
            phases[-1] = (phases[-1][0], epoch + 1, top)
        else:
            phases.append((epoch, epoch + 1, top))
    return phases


def phase_index(phases, epoch: int) -> int:
    return next(i for i, (b, e, _) in enumerate(phases) if b <= epoch < e)


def set_iterations(model, step: int) -> None:
    """Continue the lr schedule at ``step`` with a freshly compiled optimizer."""
    if step <= 0:
        return
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(step)
    for inner in getattr(optimizer, "optimizers", []):
        inner.iterations.assign(step)


def frozen_comment(phases, frozen_by_phase) -> str:
    """YAML comment lines listing the frozen layers of each phase (for the run's recipe.yaml)."""
    lines = []
    for (begin, end, _), frozen in zip(phases, frozen_by_phase):
        if frozen:
            lines.append(f"# frozen during epochs {begin + 1}-{end}: {', '.join(frozen)}")
    return "".join(line + "\n" for line in lines)


class Setup:
    """What ``fit`` trains on: the model (or a multi-head wrapper), its losses and data."""

    def __init__(self, fit_model, best_model, loss, metrics, train_dataset, val_dataset,
                 train_labels, class_names, monitor_prefix: str = "", report: dict | None = None):
        self.fit_model = fit_model
        self.train_labels = train_labels  # what the sampler orders
        self.class_names = class_names
        self.best_model = best_model
        self.loss = loss
        self.metrics = metrics
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.monitor_prefix = monitor_prefix
        self.report = report or {}

    def monitor_key(self, monitor: str) -> str:
        if not self.monitor_prefix:
            return monitor
        return monitor.replace("val_", f"val_{self.monitor_prefix}", 1)

    @classmethod
    def plain(cls, model, loss, data, recipe):
        import keras

        from kcnn.data.pipeline import eval_dataset, train_dataset

        metrics = [keras.metrics.MeanAbsoluteError(name="mae")] if data.is_regression else ["accuracy"]
        return cls(
            model, None, loss, metrics,
            lambda feeder: train_dataset(data.train, feeder, recipe.data.augment, recipe.seed),
            lambda bs: eval_dataset(data.val, bs) if len(data.val) else None,
            data.sampler_labels, ["all"] if data.is_regression else data.class_names,
        )
