"""Fine-tuning (book ch. 11): the units of depth, warm starts and freezing.

Warm starts from a trained model, freezing by name, depth or phase. (Per-layer
learning rates live in :mod:`kcnn.engine.optim`.)

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
    from kcnn.saving import load_keras_model, resolve_model_file

    path = resolve_model_file(source_path, "model.init.from")
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
