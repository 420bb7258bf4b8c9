"""Learning-rate schedules from a recipe's ``train.schedule`` section.

Schedules are Keras ``LearningRateSchedule`` objects driven by the optimizer's
step counter, so they are saved with the optimizer in every checkpoint and a
resumed run continues at the same position. :func:`kcnn.saving.load_keras_model`
imports this module so that ``kcnn>Warmup`` and ``kcnn>Constant`` deserialize.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from kcnn.recipes import schema as S
from kcnn.registry import Registry

SCHEDULES: Registry[Any] = Registry("schedule")


@keras.saving.register_keras_serializable(package="kcnn")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``after(0)`` over ``warmup_steps``, then ``after(step - warmup_steps)``."""

    def __init__(self, after, warmup_steps: int):
        self.after = after
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        main = self.after(ops.maximum(step - self.warmup_steps, 0.0))
        ramp = self.after(0.0) * ops.minimum((step + 1.0) / warm, 1.0)
        return ops.where(step < self.warmup_steps, ramp, main)

    def get_config(self):
        return {
            "after": keras.saving.serialize_keras_object(self.after),
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["after"] = keras.saving.deserialize_keras_object(config["after"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="kcnn")
class Constant(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, lr: float):
        self.lr = float(lr)

    def __call__(self, step):
        return ops.cast(self.lr, "float32") + 0.0 * ops.cast(step, "float32")

    def get_config(self):
        return {"lr": self.lr}


@SCHEDULES.register("constant")
def _constant(cfg: S.ConstantSchedule, lr: float, steps_per_epoch: int, total_steps: int):
    return Constant(lr)


@SCHEDULES.register("step")
def _step(cfg: S.StepSchedule, lr: float, steps_per_epoch: int, total_steps: int):
    # Boundaries count from the start of training; the schedule's clock starts after warm-up.
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    boundaries = [max(int(round(b * steps_per_epoch)) - warmup, 0) for b in cfg.boundaries]
    values = [lr * cfg.factor**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


@SCHEDULES.register("exponential")
def _exponential(cfg: S.ExponentialSchedule, lr: float, steps_per_epoch: int, total_steps: int):
    return keras.optimizers.schedules.ExponentialDecay(
        lr, decay_steps=max(1, int(round(cfg.decay_epochs * steps_per_epoch))),
        decay_rate=cfg.decay_rate,
    )


@SCHEDULES.register("cosine")
def _cosine(cfg: S.CosineSchedule, lr: float, steps_per_epoch: int, total_steps: int):
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    return keras.optimizers.schedules.CosineDecay(
        lr, decay_steps=max(1, total_steps - warmup), alpha=cfg.alpha
    )


def make_schedule(train: S.Train, steps_per_epoch: int, scale: float = 1.0):
    """The learning rate (× ``scale``) as a function of the optimizer step, warm-up included."""
    cfg = train.schedule
    total = train.epochs * steps_per_epoch
    schedule = SCHEDULES.get(cfg.type)(cfg, train.optimizer.lr * scale, steps_per_epoch, total)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    return Warmup(schedule, warmup) if warmup > 0 else schedule
