"""Optimizers and learning-rate schedules from a recipe's ``train`` section.

Schedules are Keras ``LearningRateSchedule`` objects driven by the optimizer's
step counter, so they are saved with the optimizer in every checkpoint and a
resumed run continues at the same position.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from kcnn.recipes import schema as S
from kcnn.registry import Registry

OPTIMIZERS: Registry[Any] = Registry("optimizer")
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


def _common(cfg) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cfg.weight_decay:
        out["weight_decay"] = cfg.weight_decay
    if cfg.clipnorm:
        out["clipnorm"] = cfg.clipnorm
    return out


@OPTIMIZERS.register("sgd")
def _sgd(cfg: S.SGD, lr):
    return keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **_common(cfg))


@OPTIMIZERS.register("adagrad")
def _adagrad(cfg: S.Adagrad, lr):
    return keras.optimizers.Adagrad(lr, **_common(cfg))


@OPTIMIZERS.register("adadelta")
def _adadelta(cfg: S.Adadelta, lr):
    return keras.optimizers.Adadelta(lr, rho=cfg.rho, **_common(cfg))


@OPTIMIZERS.register("rmsprop")
def _rmsprop(cfg: S.RMSProp, lr):
    return keras.optimizers.RMSprop(lr, rho=cfg.rho, momentum=cfg.momentum, **_common(cfg))


@OPTIMIZERS.register("adam")
def _adam(cfg: S.Adam, lr):
    return keras.optimizers.Adam(
        lr, beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon, **_common(cfg)
    )


@OPTIMIZERS.register("adamw")
def _adamw(cfg: S.AdamW, lr):
    return keras.optimizers.AdamW(
        lr, weight_decay=cfg.weight_decay, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
        epsilon=cfg.epsilon, **({"clipnorm": cfg.clipnorm} if cfg.clipnorm else {}),
    )


# Variables whose names contain these are never weight-decayed (biases, BN/LN scales and shifts).
NO_DECAY = ["bias", "gamma", "beta", "moving_mean", "moving_variance"]


def make_optimizer(train: S.Train, steps_per_epoch: int, model=None):
    """The recipe's optimizer; with ``lr_multipliers``/``depth_scaled`` and a model,
    a layer-wise one (see :func:`kcnn.engine.finetune.layerwise_optimizer`)."""
    cfg = train.optimizer

    def build(scale: float = 1.0):
        optimizer = OPTIMIZERS.get(cfg.type)(cfg, make_schedule(train, steps_per_epoch, scale))
        if cfg.weight_decay:
            optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
        return optimizer

    if model is None or not (cfg.lr_multipliers or cfg.depth_scaled):
        return build()
    from kcnn.engine.finetune import layerwise_optimizer, lr_multipliers

    depth = (cfg.depth_scaled.shallow, cfg.depth_scaled.deep) if cfg.depth_scaled else None
    return layerwise_optimizer(build, lr_multipliers(model, cfg.lr_multipliers, depth))
