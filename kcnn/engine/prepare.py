"""The first training step: a recipe and its data → model, loss, what ``fit`` trains, sampler.

:func:`prepare` returns a :class:`Plan`, everything the later steps
(:mod:`kcnn.engine.fit`, :mod:`kcnn.engine.train`) need, and writes nothing:
every check that can fail on bad input (model options, a missing teacher,
co-training data) happens here, before a run directory exists.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from kcnn import __version__
from kcnn.data.dataset import Dataset
from kcnn.engine.setup import Setup
from kcnn.errors import KcnnError
from kcnn.recipes.schema import Recipe


def setup_determinism(seed: int, deterministic: bool) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    if deterministic:
        from kcnn.backend import enable_op_determinism

        enable_op_determinism()


def versions() -> dict[str, str]:
    from kcnn.backend import versions as library_versions

    return {"kcnn": __version__, **library_versions()}


def preprocessing_layers(recipe: Recipe, train) -> tuple[list[Any], dict[str, Any]]:
    """Rescaling and per-channel standardization layers, statistics from the training split
    (one streaming pass, :func:`kcnn.data.stats.channel_stats`)."""
    import keras

    from kcnn.data.stats import channel_stats

    pre = recipe.data.preprocess
    layers: list[Any] = []
    stats: dict[str, Any] = {"rescale": pre.rescale}
    scale = pre.rescale
    if scale:
        layers.append(keras.layers.Rescaling(scale, name="rescale"))
    if pre.standardize:
        mean, var = channel_stats(train, pre.stats_samples, recipe.seed, scale or 1.0)
        var = np.maximum(var, 1e-12)
        stats.update(mean=mean.tolist(), std=np.sqrt(var).tolist(),
                     samples=int(min(len(train), pre.stats_samples)))
        layers.append(keras.layers.Normalization(mean=mean.tolist(), variance=var.tolist(),
                                                 name="standardize"))
    return layers, stats


def build_model(recipe: Recipe, data: Dataset) -> tuple[Any, dict[str, Any]]:
    """The recipe's model with its preprocessing layers, and the preprocessing statistics."""
    from kcnn.models import create_model

    pre, stats = preprocessing_layers(recipe, data.train)
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


@dataclasses.dataclass
class Plan:
    """Everything a training run needs after :func:`prepare`."""

    recipe: Recipe  # as resolved (e.g. the teacher's absolute path)
    data: Dataset
    model: Any  # the recipe's model (what model.keras will hold)
    setup: Setup
    sampler: Any
    steps: int  # optimizer steps per epoch
    phases: list[tuple[int, int, int | None]]  # (first epoch, end epoch, trainable_top)
    frozen_by_phase: list[list[str]]
    stats: dict[str, Any]  # preprocess.json
    load_report: Any = None  # warm start report, if any
    strategy: Any = None


def prepare(recipe: Recipe, data: Dataset, state: dict[str, Any], *, resuming: bool,
            strategy=None) -> Plan:
    """Build the model, loss, training mode (plain, co-training, distillation) and sampler.

    Runs inside the distribution strategy's scope. ``state`` is a resumed run's
    checkpoint state (its sampler position is restored here).
    """
    from kcnn.data.samplers import make_sampler
    from kcnn.engine.evaluate import recipe_loss
    from kcnn.engine.finetune import frozen_layers, units, warm_start
    from kcnn.engine.fit import training_phases

    cfg = recipe.train
    model, stats = build_model(recipe, data)
    loss = recipe_loss(recipe, data)
    load_report = None
    if recipe.model.init is not None and not resuming:  # a resumed run has its checkpoint
        init = recipe.model.init
        load_report = warm_start(model, init.from_, init.layers, init.skip_mismatch)
        for line in load_report.lines():
            print(line, file=sys.stderr)
    recipe, setup = training_mode(recipe, data, model, loss)
    sampler = make_sampler(recipe.data.sampler, setup.train_labels, len(setup.class_names),
                           recipe.seed, epochs=cfg.epochs, class_names=setup.class_names)
    if state.get("sampler"):
        sampler.load_state_dict(state["sampler"])
    steps = (sampler.num_batches(cfg.batch_size) if strategy is None
             else sampler.num_full_batches(cfg.batch_size))
    phases = training_phases(cfg, len(units(model)))
    frozen = [frozen_layers(model, cfg.freeze, cfg.freeze_depth, top) for _, _, top in phases]
    return Plan(recipe, data, model, setup, sampler, steps, phases, frozen, stats, load_report,
                strategy)


def training_mode(recipe: Recipe, data: Dataset, model, loss) -> tuple[Recipe, Setup]:
    """Plain training, source-data co-training (``finetune.co_training``) or distillation
    (``distill``: fit a Distiller of student + frozen teacher, keep the student)."""
    setup = Setup.plain(model, loss, data, recipe)
    if recipe.finetune is not None and recipe.finetune.co_training is not None:
        from kcnn.engine.cotrain import prepare_cotraining

        setup = prepare_cotraining(recipe, data, model, loss)
    if recipe.distill is not None:
        from kcnn.engine.distill import wrap_student

        recipe, setup.fit_model = wrap_student(recipe, setup.fit_model, data)
        setup.best_model = setup.best_model or model
    return recipe, setup
