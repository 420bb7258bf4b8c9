"""Fine-tuning (book ch. 11): warm starts, freezing, layer-wise learning rates, strategies.

Layers are grouped into *units* in topological order: every layer with a kernel
(conv, dense, kcnn composite blocks) starts a unit, and weighted layers without a
kernel (BatchNormalization, ...) join the unit before them. "Depth" means the
unit index, the first unit being the shallowest. Freezing a unit freezes its
batch norm too, which then runs in inference mode (Keras' rule for
``trainable=False`` BatchNormalization), so its statistics stay put.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from kcnn.errors import KcnnError

PREPROCESSING = ("rescale", "standardize")


# ----------------------------------------------------------------------------- units
def units(model) -> list[list[Any]]:
    """Weighted layers grouped into depth units (see module docstring)."""
    groups: list[list[Any]] = []
    for layer in model.layers:
        if layer.name in PREPROCESSING or not layer.weights:
            continue
        has_kernel = any(w.path.split("/")[-1] in ("kernel", "depthwise_kernel", "embeddings")
                         for w in layer.weights) or any(
            getattr(sub, "kernel", None) is not None for sub in getattr(layer, "_layers", []))
        if has_kernel or not groups:
            groups.append([layer])
        else:
            groups[-1].append(layer)
    return groups


def unit_names(model) -> list[list[str]]:
    return [[layer.name for layer in unit] for unit in units(model)]


# ----------------------------------------------------------------------------- warm start
def resolve_init_path(path: str | Path) -> Path:
    """A ``.keras`` file, a run dir, or a folder of runs (the newest finished run is used)."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / "model.keras").is_file():
        return p / "model.keras"
    if p.is_dir():
        runs = sorted((c for c in p.iterdir() if (c / "model.keras").is_file()),
                      key=lambda c: c.name)
        if runs:
            return runs[-1] / "model.keras"
    raise KcnnError(f"model.init.from: no model found at {path} (expected a .keras file or a run dir)")


@dataclasses.dataclass
class LoadReport:
    source: str
    loaded: list[str]
    skipped: list[dict[str, str]]

    def lines(self) -> list[str]:
        out = [f"warm start from {self.source}: {len(self.loaded)} layers loaded, "
               f"{len(self.skipped)} skipped"]
        out += [f"  skipped {s['layer']}: {s['reason']}" for s in self.skipped]
        return out

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def warm_start(model, source_path: str | Path, layers: str = ".*", skip_mismatch: bool = True
               ) -> LoadReport:
    """Copy weights from ``source_path`` into every layer of ``model`` whose name matches
    ``layers`` (a regex, ``re.fullmatch``) and whose weight shapes agree."""
    from kcnn.engine.evaluate import load_keras_model

    path = resolve_init_path(source_path)
    source = load_keras_model(path)
    by_name = {layer.name: layer for layer in source.layers}
    pattern = re.compile(layers)
    loaded, skipped = [], []
    for layer in model.layers:
        if not layer.weights or layer.name in PREPROCESSING or not pattern.fullmatch(layer.name):
            continue
        other = by_name.get(layer.name)
        if other is None:
            skipped.append({"layer": layer.name, "reason": "no layer of that name in the source"})
            continue
        mine = [tuple(w.shape) for w in layer.weights]
        theirs = [tuple(w.shape) for w in other.weights]
        if mine != theirs:
            if not skip_mismatch:
                raise KcnnError(
                    f"model.init: layer {layer.name!r} does not match the source: "
                    f"model shapes {mine} vs source {theirs} (set model.init.skip_mismatch: true "
                    "to leave it freshly initialised)"
                )
            skipped.append({"layer": layer.name, "reason": f"shape {mine} vs source {theirs}"})
            continue
        layer.set_weights(other.get_weights())
        loaded.append(layer.name)
    return LoadReport(str(path), loaded, skipped)


# ----------------------------------------------------------------------------- freezing
def frozen_layers(model, patterns: list[str] | None = None, depth: float | None = None,
                  trainable_top: int | None = None) -> list[str]:
    """Names of the layers to freeze: by regex, by the shallowest ``depth`` fraction of
    units, or all but the top ``trainable_top`` units."""
    groups = units(model)
    names: list[str] = []
    for pattern in patterns or []:
        rx = re.compile(pattern)
        names += [layer.name for unit in groups for layer in unit if rx.fullmatch(layer.name)]
    if depth:
        for unit in groups[: int(round(depth * len(groups)))]:
            names += [layer.name for layer in unit]
    if trainable_top is not None:
        for unit in groups[: max(len(groups) - trainable_top, 0)]:
            names += [layer.name for layer in unit]
    return list(dict.fromkeys(names))


def apply_freeze(model, frozen: list[str]) -> None:
    frozen_set = set(frozen)
    for unit in units(model):
        for layer in unit:
            layer.trainable = layer.name not in frozen_set


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
    import keras

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
    import keras
    import numpy as np

    inner = getattr(optimizer, "_optimizer_map", None)
    if inner is not None and hasattr(inner, "default_optimizer"):
        optimizer = inner.default_optimizer
    return float(np.asarray(keras.ops.convert_to_numpy(optimizer.learning_rate)))
