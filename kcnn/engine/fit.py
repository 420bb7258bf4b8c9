"""The fit step: epochs of sampler-ordered batches through ``keras.Model.fit``.

:func:`fit_epochs` is the one training loop of kcnn: ``kcnn train`` runs it
once per freeze phase (:func:`fit_phases`), and the ``compress`` commands'
fine-tuning runs it too (:func:`kcnn.compress.common.finetune`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any


def fit_epochs(model, make_dataset: Callable[[Any], Any], sampler, batch_size: int, begin: int,
               end: int, *, steps: int | None = None, validation_data=None,
               callbacks: Sequence[Any] = (), verbose: int = 2, strategy=None):
    """Train ``model`` (compiled) for epochs ``begin .. end-1``; returns Keras' History.

    ``make_dataset(feeder)`` turns an :class:`~kcnn.data.pipeline.EpochFeeder`
    into a tf.data pipeline. Under a ``tf.distribute`` strategy every input
    pipeline feeds its own per-replica chunks of each global batch; under
    ``data_parallel`` each process feeds its share of it. Callbacks
    with a ``use_feeder(feeder)`` method are told the feeder (it records the
    sampler state of every epoch, which a checkpoint saves).
    """
    from kcnn.data.images import bad_images_as_errors
    from kcnn.data.pipeline import EpochFeeder
    from kcnn.engine.distribute import distributed_train_dataset, guard, is_data_parallel

    if strategy is None:
        feeder = EpochFeeder(sampler, batch_size, begin, end)
        dataset = make_dataset(feeder)
    elif is_data_parallel(strategy):  # this process's share of every global batch
        feeder = EpochFeeder(sampler, batch_size, begin, end, shard=strategy.shard())
        dataset = make_dataset(feeder)
    else:
        dataset, feeders = distributed_train_dataset(strategy, make_dataset, sampler, batch_size,
                                                     begin, end)
        feeder = feeders[0]
    for callback in callbacks:
        if hasattr(callback, "use_feeder"):
            callback.use_feeder(feeder)
    with bad_images_as_errors("during training"), guard(strategy):
        return model.fit(
            dataset,
            epochs=end,
            initial_epoch=begin,
            steps_per_epoch=steps if steps is not None else feeder.steps_per_epoch,
            validation_data=validation_data,
            callbacks=list(callbacks),
            verbose=verbose,
            shuffle=False,  # the sampler already orders every epoch
        )


def fit_phases(plan, checkpoint, callbacks: Sequence[Any], state: dict[str, Any],
               multi_worker: bool = False) -> None:
    """Run every freeze phase that is not finished yet (a resumed run starts mid-way).

    Each phase recompiles the model with its own frozen layers and a fresh
    optimizer whose step counter continues the learning-rate schedule.
    """
    setup, cfg = plan.setup, plan.recipe.train
    start_epoch = int(state.get("epoch", 0))
    current = phase_index(plan.phases, start_epoch - 1) if state.get("checkpoint") else None
    verbose = cfg.verbose if cfg.verbose is not None else (1 if sys.stdout.isatty() else 2)
    for i, (begin, end, _) in enumerate(plan.phases):
        if end <= start_epoch or state.get("stopped_early"):
            continue
        begin = max(begin, start_epoch)
        if current != i:
            compile_phase(plan, i)
            set_iterations(setup.fit_model, begin * plan.steps)
            current = i
            if plan.frozen_by_phase[i]:
                print(f"epochs {begin + 1}-{end}: frozen layers: {', '.join(plan.frozen_by_phase[i])}",
                      file=sys.stderr)
        if multi_worker:
            from kcnn.engine.distribute import prebuild_for_multi_worker

            prebuild_for_multi_worker(setup, plan.sampler, cfg.batch_size, begin)
        fit_epochs(setup.fit_model, setup.train_dataset, plan.sampler, cfg.batch_size, begin, end,
                   steps=plan.steps, validation_data=setup.val_dataset(cfg.batch_size),
                   callbacks=[checkpoint, *callbacks], verbose=verbose, strategy=plan.strategy)
        if checkpoint.nan_at is not None or checkpoint.early_stopped_at is not None:
            break


def compile_phase(plan, i: int) -> None:
    """Freeze phase ``i``'s layers and compile the training model with a new optimizer."""
    from kcnn.engine.finetune import apply_freeze
    from kcnn.engine.optim import make_optimizer

    setup = plan.setup
    apply_freeze(plan.model, plan.frozen_by_phase[i])
    setup.fit_model.compile(optimizer=make_optimizer(plan.recipe.train, plan.steps, plan.model),
                            loss=setup.loss, metrics=setup.metrics)


def restore_checkpoint(plan, weights_path, epoch: int, rng: list | None = None) -> None:
    """Load a resumed run's weights, optimizer state and random-generator states into the
    phase of ``epoch``."""
    from kcnn.engine.callbacks import restore_rng_state

    compile_phase(plan, phase_index(plan.phases, epoch))
    fit_model = plan.setup.fit_model
    fit_model.optimizer.build(fit_model.trainable_variables)
    fit_model.load_weights(weights_path)
    restore_rng_state(fit_model, rng)


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
