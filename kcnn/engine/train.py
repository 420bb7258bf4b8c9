"""``kcnn train``: recipe → run directory, as a short list of named steps.

```
start     seeds, dtype policy, distribution strategy, the data        (nothing written)
prepare   model, loss, training mode, sampler, freeze phases          (kcnn.engine.prepare)
open      a new run dir (recipe.yaml, preprocess.json, finetune.json), or the resumed one
fit       every unfinished freeze phase through keras fit             (kcnn.engine.fit)
finalize  best model → post-hoc τ tuning → evaluation → metrics.json, plots
```

Everything that can fail on bad input is checked before the run directory is
created, so a failed start leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kcnn.engine.fit import fit_phases, frozen_comment, restore_checkpoint, training_phases
from kcnn.engine.prepare import Plan, build_model, prepare, setup_determinism, versions
from kcnn.engine.rundir import RunDir
from kcnn.engine.summary import echo, footer, header
from kcnn.errors import DataError, Interrupted, JobFailed, TrainingError
from kcnn.io import write_json, write_text
from kcnn.recipes import dump, load, loads
from kcnn.recipes.schema import Recipe

__all__ = ["build_model", "setup_determinism", "train", "training_phases", "tune_post_hoc_tau",
           "versions"]


def train(
    recipe: Recipe | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    runs_root: str | Path = "runs",
    callbacks: Sequence[Any] = (),
    epochs: int | None = None,
) -> Path:
    """Train a recipe (or resume a run) and return the run directory.

    ``epochs`` (with ``resume``) extends the run to that many epochs. The Keras
    dtype policy (``train.precision``) is restored afterwards.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    policy = keras.mixed_precision.global_policy()
    try:
        return _train(recipe, run_dir=run_dir, resume=resume, runs_root=runs_root,
                      callbacks=callbacks, epochs=epochs)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _train(recipe, *, run_dir, resume, runs_root, callbacks, epochs=None) -> Path:
    run, recipe, state = reopen(resume, recipe, epochs)
    if run is not None and is_finished(recipe, state) and run.metrics_for(
            recipe.evaluate.split).is_file():
        print(finished_message(run, recipe, state), file=sys.stderr)
        return run.path
    chief = writes_the_run(recipe)
    if run is None and run_dir is not None and chief:
        RunDir.check_new(run_dir)  # refused before any process of a job starts
    strategy, tf_config, data = start(recipe, state)
    try:
        return _run(recipe, state, run, strategy, tf_config, data, chief, run_dir=run_dir,
                    resume=resume, runs_root=runs_root, callbacks=callbacks)
    finally:
        remove_scratch()


def _run(recipe, state, run, strategy, tf_config, data, chief, *, run_dir, resume, runs_root,
         callbacks) -> Path:
    from kcnn.engine.distribute import is_data_parallel, scope

    with scope(strategy):
        # A run killed before its first checkpoint has nothing to restore: it warm-starts again.
        plan = prepare(recipe, data, state, resuming=bool(state.get("checkpoint")),
                       strategy=strategy)
        if run is None:
            run = open_run(plan, run_dir, runs_root, chief=chief)
        elif state.get("checkpoint"):
            restore_checkpoint(plan, run.checkpoints / state["checkpoint"], int(state["epoch"]) - 1,
                               state.get("rng"))
        shown = RunDir(chief_run_path(strategy, run))  # the run as the user knows it
        # Other processes write to a scratch dir: a new run's ``run`` already is one.
        writes = run if chief or resume is None else RunDir.create(scratch_dir())
        echo(header(plan, shown, resumed_from=int(state.get("epoch", 0))))
        checkpoint = make_checkpoint(plan, writes, state)
        all_callbacks = [*callbacks, *extra_callbacks(plan, writes)]
        with interruptible(shown, checkpoint):
            fit_phases(plan, checkpoint, all_callbacks, state, multi_worker=tf_config is not None)
    if not chief and is_data_parallel(strategy):
        if checkpoint.nan_at is not None:
            stopped(checkpoint, shown)  # raises, as on process 0
        return follower_done(shown.path)
    stopped(checkpoint, run)
    return finalize(plan, run, checkpoint)


def writes_the_run(recipe: Recipe) -> bool:
    """Whether this process will write the run dir (known before any strategy starts)."""
    from kcnn.engine.data_parallel import chief_of
    from kcnn.engine.distribute import is_chief as tf_chief
    from kcnn.engine.distribute import read_tf_config

    if recipe.distribute.strategy == "multi_worker":
        return tf_chief(read_tf_config())
    return chief_of(recipe.distribute)


_SCRATCH: list[Path] = []


def scratch_dir() -> Path:
    """Where a data_parallel process other than 0 keeps its (discarded) checkpoints; removed
    when training ends, however it ends."""
    folder = Path(tempfile.mkdtemp(prefix="kcnn-worker-"))
    _SCRATCH.append(folder)
    return folder / "run"


def remove_scratch() -> None:
    import shutil

    while _SCRATCH:
        shutil.rmtree(_SCRATCH.pop(), ignore_errors=True)


def chief_run_path(strategy, run: RunDir) -> Path:
    """The run dir process 0 writes, as every process of a data_parallel job knows it."""
    from kcnn.engine.distribute import is_data_parallel
    if not is_data_parallel(strategy):
        return run.path
    return Path(strategy.broadcast_text(str(run.path)))


def follower_done(chief_run: Path) -> Path:
    """A data_parallel process other than 0: training is done and process 0 evaluates and
    writes the run, so the scratch checkpoints go."""
    remove_scratch()
    print(f"data_parallel: this process's part is done; process 0 writes {chief_run}",
          file=sys.stderr)
    return chief_run


@contextlib.contextmanager
def interruptible(run: RunDir, checkpoint):
    """SIGINT (Ctrl-C) or SIGTERM during training abandons the current step and epoch:
    the run keeps its last complete epoch (every checkpoint is written atomically, the
    state last), and :class:`~kcnn.errors.Interrupted` carries the resume command."""
    def on_term(signum, frame):
        raise Interrupted(signum)

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if in_main else None
    try:
        yield
    except JobFailed as err:
        done = len(checkpoint.history)
        kept = "no complete epoch" if not done else f"epochs 1-{done}"
        raise JobFailed(f"{err} {run.path} keeps {kept}; once every host is back, start every "
                        f"process again with: kcnn train --resume {run.path}") from None
    except (KeyboardInterrupt, Interrupted) as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        done = len(checkpoint.history)
        name = signal.Signals(signum).name
        raise Interrupted(signum, (
            f"interrupted by {name} during epoch {done + 1}; {run.path} keeps "
            f"{'no complete epoch' if not done else f'epochs 1-{done}'}. Resume with: "
            f"kcnn train --resume {run.path}"), run_path=str(run.path)) from None
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def reopen(resume, recipe: Recipe | None, epochs: int | None = None
           ) -> tuple[RunDir | None, Recipe, dict[str, Any]]:
    """(the run to resume or None, the recipe, the run's checkpoint state).

    The state is the newest one whose checkpoint is intact (a damaged latest
    checkpoint falls back to the previous one, with a line saying so)."""
    if resume is None:
        if recipe is None:
            raise ValueError("train() needs a recipe or resume=RUN_DIR")
        if epochs is not None:
            raise TrainingError("epochs= extends a resumed run; set train.epochs for a new one")
        return None, recipe, {}
    run = RunDir.open(resume)
    state, note = run.resume_state()
    recipe = load(run.recipe)
    chief = writes_the_run(recipe)  # the other processes of a job only read the run
    if note and chief:
        print(note, file=sys.stderr)
    if chief:
        run.remove_stale_temp_files()
    if epochs is not None:
        recipe, state = extend(run, recipe, state, epochs, write=chief)
    return run, recipe, state


def is_finished(recipe: Recipe, state: dict[str, Any]) -> bool:
    return bool(state.get("stopped_early")) or int(state.get("epoch", 0)) >= recipe.train.epochs


def finished_message(run: RunDir, recipe: Recipe, state: dict[str, Any]) -> str:
    done = int(state.get("epoch", 0))
    how = " (stopped early)" if state.get("stopped_early") else ""
    return (f"{run.path}: already finished after {done} of {recipe.train.epochs} epochs{how}; "
            f"nothing to resume. To train longer: kcnn train --resume {run.path} --epochs N")


def extend(run: RunDir, recipe: Recipe, state: dict[str, Any], epochs: int, write: bool = True):
    """Raise the run's ``train.epochs`` to ``epochs`` (its recipe.yaml is rewritten) so a
    finished or early-stopped run trains on. Schedules whose length depends on the epoch
    count (cosine, the warm-up-free part of any schedule) are recomputed for the new total,
    at the step the run has reached."""
    done = int(state.get("epoch", 0))
    if not isinstance(epochs, int) or epochs <= done:
        raise TrainingError(f"--epochs: must be more than the {done} epochs {run.path} has done "
                            f"(got {epochs})")
    text = run.recipe.read_text()
    saved = loads(text, str(run.recipe))
    extended = recipe.model_copy(deep=True)
    extended.train.epochs = epochs
    comments = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    state = {k: v for k, v in state.items() if k not in ("version", "stopped_early")}
    state["patience_from"] = done  # early stopping counts its patience from here again
    if not write:  # another process of the job (process 0) rewrites the run
        return extended, state
    write_text(run.recipe, dump(extended.model_copy(update={"versions": saved.versions})) + comments)
    run.write_state(state)
    print(f"extending {run.path} from {recipe.train.epochs} to {epochs} epochs"
          + (" (the cosine schedule is recomputed for the new length)"
             if recipe.train.schedule.type == "cosine" else ""), file=sys.stderr)
    return extended, state


def start(recipe: Recipe, state: dict[str, Any]):
    """Seed, set the dtype policy, make the strategy and load the data:
    ``(strategy, TF_CONFIG or None, data)``."""
    from kcnn.data.sources import check_batch_memory, load_dataset
    from kcnn.engine.distribute import check_global_batch, make_strategy, set_precision

    cfg = recipe.train
    check_batch_memory(recipe.data, cfg.batch_size)
    # The data first: a process of a multi-process job that fails here fails alone, before
    # the job starts (loading computes nothing with JAX).
    data = load_dataset(recipe.data)
    split = recipe.evaluate.split
    if len(data.split(split)) == 0:  # found now, not after the last epoch
        raise DataError(f"evaluate.split: the {split} split is empty (data.split.{split} is "
                        f"{getattr(recipe.data.split, split, None)}); choose another split to "
                        f"evaluate on or give it samples")
    # Then the strategy: a multi-process JAX job must start before JAX computes anything.
    strategy, tf_config = make_strategy(recipe.distribute, fingerprint(recipe))
    setup_determinism(recipe.seed + 1009 * int(state.get("epoch", 0)), cfg.deterministic)
    set_precision(cfg.precision)
    if strategy is not None:
        replicas = strategy.num_replicas_in_sync
        per_replica = check_global_batch(cfg.batch_size, replicas)
        print(f"{recipe.distribute.strategy}: global batch {cfg.batch_size} = {replicas} replicas "
              f"x {per_replica}", file=sys.stderr)
    return strategy, tf_config, data


def fingerprint(recipe: Recipe) -> str:
    """What every process of a job must agree on: the recipe, less this process's id."""
    import hashlib

    shared = recipe.model_copy(update={"versions": None}, deep=True)
    shared.distribute.process_id = None
    return hashlib.sha256(dump(shared).encode()).hexdigest()


def open_run(plan: Plan, run_dir, runs_root, chief: bool = True) -> RunDir:
    """Create the run dir and write what is known before training: the resolved recipe
    (with versions and the frozen layers), preprocess.json and finetune.json."""
    recipe, setup = plan.recipe, plan.setup
    target = run_dir or RunDir.new_path(recipe.name, runs_root)
    if not chief:  # other workers write to a scratch dir; the chief's is the run
        target = scratch_dir()
    run = RunDir.create(target)
    resolved = recipe.model_copy(update={"versions": versions()}, deep=True)
    resolved.distribute.process_id = None  # set per process by the launcher, never saved
    write_text(run.recipe, dump(resolved) + frozen_comment(plan.phases, plan.frozen_by_phase))
    write_json(run.preprocess, plan.stats)
    if plan.load_report is not None or any(plan.frozen_by_phase) or setup.report:
        write_json(run.path / "finetune.json", {
            "warm_start": plan.load_report.as_dict() if plan.load_report else None,
            "phases": [{"epochs": [b, e], "trainable_top": top, "frozen": f}
                       for (b, e, top), f in zip(plan.phases, plan.frozen_by_phase)],
            **setup.report,
        })
    skipped = plan.data.skipped
    if skipped:
        write_text(run.path / "skipped_images.txt",
                   "".join(f"{path}\t{reason}\n" for path, reason in skipped))
        print(f"skipped {len(skipped)} unreadable files (data.source.on_bad_image: skip); "
              f"listed in {run.path / 'skipped_images.txt'}", file=sys.stderr)
    run.write_state({"epoch": 0, "checkpoint": None, "history": []})
    return run


def make_checkpoint(plan: Plan, run: RunDir, state: dict[str, Any]):
    from kcnn.engine.callbacks import RunCheckpoint

    cfg, setup = plan.recipe.train, plan.setup
    stopping = cfg.callbacks.early_stopping
    return RunCheckpoint(
        run, state=state, monitor=cfg.monitor, feeder=None,
        best_model=setup.best_model, monitor_key=setup.monitor_key(cfg.monitor),
        patience=stopping.patience if stopping else None,
        min_delta=stopping.min_delta if stopping else 0.0,
        plots=plan.recipe.evaluate.plots,
    )


def extra_callbacks(plan: Plan, run: RunDir) -> list[Any]:
    """Callbacks the recipe asks for besides the run checkpoint (TensorBoard)."""
    import keras

    if plan.recipe.train.callbacks.tensorboard:
        return [keras.callbacks.TensorBoard(log_dir=str(run.tensorboard))]
    return []


def stopped(checkpoint, run: RunDir) -> None:
    """Raise for a NaN loss; record early stopping in the run's state."""
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


def finalize(plan: Plan, run: RunDir, checkpoint) -> Path:
    """Best model → post-hoc τ (``tune_tau``) → evaluation on the recipe's split →
    metrics.json and plots."""
    from kcnn.engine.evaluate import evaluate_keras_model, write_metrics
    from kcnn.saving import load_keras_model

    recipe, data = plan.recipe, plan.data
    best = load_keras_model(run.model)
    tuned = None
    if getattr(recipe.train.loss, "tune_tau", False):
        recipe, tuned = tune_post_hoc_tau(best, recipe, data, run)
    split = recipe.evaluate.split
    metrics, outputs = evaluate_keras_model(best, recipe, data, split, with_outputs=True)
    if tuned is not None:
        metrics["post_hoc_tau"] = tuned
    metrics["model"] = str(run.model)
    metrics["best_epoch"] = (checkpoint.best_epoch + 1) if checkpoint.best_epoch is not None else None
    write_metrics(metrics, run.metrics_for(split), run.plots if recipe.evaluate.plots else None,
                  data.class_names, f"{recipe.name} — {split}", outputs)
    echo(footer(plan, run, metrics, checkpoint))
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
    logits = predict_logits(model, data.val, recipe.train.batch_size)
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
