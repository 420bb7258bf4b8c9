"""Optimizers from a recipe's ``train`` section, with per-layer learning rates.

The learning rate follows a schedule from :mod:`kcnn.engine.schedules`.
Fine-tuning recipes scale it per layer (``lr_multipliers``, ``depth_scaled``),
with "depth" counted in the units of :func:`kcnn.engine.finetune.units`.
"""

from __future__ import annotations

import re
from typing import Any

import keras

from kcnn.engine.finetune import units
from kcnn.engine.schedules import make_schedule
from kcnn.recipes import schema as S
from kcnn.registry import Registry

OPTIMIZERS: Registry[Any] = Registry("optimizer")


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
    a layer-wise one (see :func:`layerwise_optimizer`)."""
    cfg = train.optimizer

    def build(scale: float = 1.0):
        optimizer = OPTIMIZERS.get(cfg.type)(cfg, make_schedule(train, steps_per_epoch, scale))
        if cfg.weight_decay:
            optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
        return optimizer

    if model is None or not (cfg.lr_multipliers or cfg.depth_scaled):
        return build()
    depth = (cfg.depth_scaled.shallow, cfg.depth_scaled.deep) if cfg.depth_scaled else None
    return layerwise_optimizer(build, lr_multipliers(model, cfg.lr_multipliers, depth))


# ----------------------------------------------------------------------------- layer-wise lr
def lr_multipliers(model, patterns: dict[str, float] | None = None,
                   depth_scaled: tuple[float, float] | None = None) -> dict[str, float]:
    """Variable path → lr multiplier. ``depth_scaled`` interpolates linearly from the
    shallowest unit (first value) to the deepest (second); regex multipliers apply on top."""
    groups = units(model)
    result: dict[str, float] = {}
    for i, unit in enumerate(groups):
        factor = 1.0
        if depth_scaled is not None:
            t = i / max(len(groups) - 1, 1)
            factor = depth_scaled[0] + t * (depth_scaled[1] - depth_scaled[0])
        for layer in unit:
            layer_factor = factor
            for pattern, value in (patterns or {}).items():
                if re.fullmatch(pattern, layer.name):
                    layer_factor *= value
            for var in layer.trainable_weights:
                result[var.path] = layer_factor
    return result


def layerwise_optimizer(make_optimizer, multipliers: dict[str, float]):
    """An optimizer that scales the learning rate per variable.

    ``make_optimizer(factor)`` builds the base optimizer with its schedule scaled
    by ``factor``. Uses Keras' own ``MultiOptimizer`` (one sub-optimizer per
    distinct factor) when the installed Keras has it, else :class:`ScaledUpdates`.
    """
    base = make_optimizer(1.0)
    factors = sorted({f for f in multipliers.values() if f != 1.0})
    if not factors:
        return base
    if hasattr(keras.optimizers, "MultiOptimizer"):
        subs = {f: make_optimizer(f) for f in factors}
        mapping = keras.optimizers.OptimizerMap(base)
        for path, f in multipliers.items():
            if f != 1.0:
                mapping[path] = subs[f]
        return keras.optimizers.MultiOptimizer(mapping)
    return scaled_updates(base, multipliers)


def scaled_updates(optimizer, multipliers: dict[str, float]):
    """Fallback for Keras without MultiOptimizer: the same optimizer class, whose
    per-variable update uses ``learning_rate × multiplier[variable.path]``."""
    base_cls = type(optimizer)

    class ScaledUpdates(base_cls):
        def build(self, var_list):
            # update_step may receive the backend's variable (no .path): key by _var_key.
            self._lr_factors = {self._var_key(v): multipliers.get(v.path, 1.0) for v in var_list}
            super().build(var_list)

        def update_step(self, gradient, variable, learning_rate):
            factor = self._lr_factors.get(self._var_key(variable), 1.0)
            return super().update_step(gradient, variable, learning_rate * factor)

    ScaledUpdates.__name__ = f"Layerwise{base_cls.__name__}"
    scaled = ScaledUpdates.from_config(optimizer.get_config())
    if getattr(optimizer, "_exclude_from_weight_decay_names", None):
        scaled.exclude_from_weight_decay(var_names=list(optimizer._exclude_from_weight_decay_names))
    return scaled


def current_lr(optimizer) -> float:
    """The (base) learning rate now; a MultiOptimizer reports its default optimizer's."""
    import numpy as np

    inner = getattr(optimizer, "_optimizer_map", None)
    if inner is not None and hasattr(inner, "default_optimizer"):
        optimizer = inner.default_optimizer
    return float(np.asarray(keras.ops.convert_to_numpy(optimizer.learning_rate)))
