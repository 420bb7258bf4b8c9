"""Pruning, the book's four-step loop: score importance, remove, fine-tune, repeat.

Written for Keras 3 here because the TensorFlow Model Optimization Toolkit
(``tfmot.sparsity``) only supports Keras 2 models
(tensorflow/model-optimization#1119).

Two methods:

* ``magnitude`` (Han et al., 2015): in every Conv2D / DepthwiseConv2D /
  SeparableConv2D / Dense kernel, the weights with the smallest ``|w|`` are
  set to zero, layer by layer, so that each kernel reaches the round's
  sparsity. During fine-tuning each pruned kernel carries a mask as its
  variable constraint, which Keras' optimizers apply after every update, so
  pruned weights stay exactly zero. The saved model is a plain Keras model
  whose zeros are real zeros (the masks are saved beside it in ``masks.npz``).
  The dense TFLite file does not shrink; its gzipped size does.

* ``filter`` (Li et al., 2017, "Pruning Filters for Efficient ConvNets"): the
  output channels (filters of Conv2D, units of Dense) with the smallest L1
  norm are removed and the model is **rebuilt with fewer channels**, so
  parameters, MACs and latency drop. The functional graph is analysed
  generically: each tensor's channels belong to a *channel space*; Conv2D and
  Dense layers create one, per-channel layers (BatchNormalization,
  activations, dropout, pooling, global pooling, padding, DepthwiseConv2D)
  pass theirs through, ``Flatten`` repeats it per position, and element-wise
  merges (``Add``, ``Multiply``, …) join the spaces of their inputs into one
  group that is pruned identically (a residual stage loses the same channels
  in every branch). A space is left unpruned when it reaches a layer that
  mixes channels in another way (``Concatenate``, ``Reshape``, composite kcnn
  layers, nested models, a softmax), the model's output, or the model's
  input. The new model is built from the old layers' configs with smaller
  ``filters``/``units``, and the kept slices of every weight are copied over
  (the following BatchNormalization, the next layer's input channels, the
  rows of a Dense layer after ``Flatten``). Before fine-tuning, the rebuilt
  model computes exactly what the original computes with the removed
  channels zeroed.

Rounds: round ``r`` of ``R`` prunes to sparsity ``1 − (1 − s)^(r/R)`` (each
round removes the same share of what is left), then fine-tunes. After every
removal and every fine-tuning the BatchNormalization moving statistics are
re-estimated on one epoch of training batches: removing channels shifts what
reaches each BN layer, and stale statistics (not the surgery) are what ruins
a pruned BN network's inference accuracy.
"""

from __future__ import annotations

import dataclasses
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kcnn.compress import common
from kcnn.errors import KcnnError

METHODS = ("magnitude", "filter")

# ----------------------------------------------------------------------------- magnitude

PRUNABLE_KERNELS = {
    "Conv2D": ("kernel",),
    "Conv1D": ("kernel",),
    "Dense": ("kernel",),
    "DepthwiseConv2D": ("kernel", "depthwise_kernel"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
}


def _all_layers(model):
    yield from model._flatten_layers(include_self=False, recursive=True)


def prunable_kernels(model) -> list[tuple[str, Any]]:
    """``(layer_name/weight_name, variable)`` of every kernel magnitude pruning acts on."""
    out = []
    for layer in _all_layers(model):
        names = PRUNABLE_KERNELS.get(type(layer).__name__)
        if not names:
            continue
        for w in layer.weights:
            if w.name in names:
                out.append((f"{layer.name}/{w.name}", w))
    return out


def magnitude_masks(model, sparsity: float) -> dict[str, np.ndarray]:
    """Per kernel: keep the ``1 - sparsity`` share of weights with the largest ``|w|``
    (ties at the threshold broken by position). Already-zero weights go first."""
    masks = {}
    for key, var in prunable_kernels(model):
        w = np.asarray(var.numpy())
        n = w.size
        drop = int(round(sparsity * n))
        mask = np.ones(n, dtype=w.dtype)
        if drop > 0:
            order = np.argsort(np.abs(w).ravel(), kind="stable")
            mask[order[:drop]] = 0
        masks[key] = mask.reshape(w.shape)
    return masks


class _Mask:
    """A variable constraint: multiply by a fixed 0/1 mask after every optimizer update."""

    def __init__(self, mask, previous=None):
        import keras

        self.mask = keras.ops.convert_to_tensor(mask)
        self.previous = previous

    def __call__(self, w):
        if self.previous is not None:
            w = self.previous(w)
        return w * self.mask


def apply_masks(model, masks: dict[str, np.ndarray]) -> None:
    """Zero the masked weights now and keep them zero through training (until
    :func:`remove_masks`)."""
    for key, var in prunable_kernels(model):
        if key not in masks:
            continue
        mask = masks[key]
        var.assign(np.asarray(var.numpy()) * mask)
        previous = var.constraint.previous if isinstance(var.constraint, _Mask) else var.constraint
        var.constraint = _Mask(mask, previous)


def remove_masks(model) -> None:
    """Restore the kernels' own constraints (the zeros stay)."""
    for _, var in prunable_kernels(model):
        if isinstance(var.constraint, _Mask):
            var.constraint = var.constraint.previous


def sparsity_of(model) -> dict[str, float]:
    """Share of exact zeros per prunable kernel."""
    return {key: float(np.mean(np.asarray(var.numpy()) == 0)) for key, var in prunable_kernels(model)}


# ----------------------------------------------------------------------------- filter: analysis

# Layers that act on each channel separately (the channel axis passes through).
PER_CHANNEL = {
    "BatchNormalization", "ReLU", "LeakyReLU", "ELU", "Activation", "Dropout", "SpatialDropout2D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
    "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
    "ZeroPadding2D", "Cropping2D", "UpSampling2D", "StochasticPooling2D", "LpPooling2D",
    "DepthwiseConv2D",
}
MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
PRODUCERS = {"Conv2D", "Dense", "SeparableConv2D"}
_CHANNEL_MIXING_ACTIVATIONS = ("softmax", "log_softmax")


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def _per_channel(layer) -> bool:
    name = type(layer).__name__
    if name not in PER_CHANNEL or not _channels_last(layer):
        return False
    if name == "BatchNormalization":
        return layer.axis in (-1, [-1]) or (isinstance(layer.axis, (list, tuple))
                                            and len(layer.axis) == 1)
    if name == "Activation":
        fn = getattr(layer.activation, "__name__", str(layer.activation))
        return fn not in _CHANNEL_MIXING_ACTIVATIONS
    if name == "DepthwiseConv2D":
        return layer.depth_multiplier == 1
    return True


def _is_producer(layer) -> bool:
    name = type(layer).__name__
    if name not in PRODUCERS or not _channels_last(layer):
        return False
    if name == "Conv2D":
        return layer.groups == 1
    if name == "SeparableConv2D":
        return layer.depth_multiplier == 1
    return True


class _Spaces:
    """Union-find over channel spaces."""

    def __init__(self):
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.channels: list[int] = []
        self.producers: list[list[str]] = []
        self.why: list[str] = []

    def new(self, channels: int, producer: str | None = None, fixed: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.fixed.append(fixed is not None)
        self.why.append(fixed or "")
        self.channels.append(int(channels) if channels is not None else -1)
        self.producers.append([producer] if producer else [])
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if b < a:
            a, b = b, a
        self.parent[b] = a
        if self.fixed[b] and not self.fixed[a]:
            self.why[a] = self.why[b]
        self.fixed[a] = self.fixed[a] or self.fixed[b]
        self.producers[a] += self.producers[b]
        return a

    def fix(self, s: int, why: str) -> None:
        r = self.find(s)
        if not self.fixed[r]:
            self.fixed[r], self.why[r] = True, why


@dataclasses.dataclass
class FilterGroup:
    """Channels pruned together: the outputs of ``producers`` (joined by merges)."""

    producers: list[str]
    channels: int
    scores: list[float]
    keep: list[int] | None = None  # sorted kept channel indices; None = all

    def to_json(self) -> dict[str, Any]:
        return {"producers": self.producers, "channels": self.channels,
                "kept": self.channels if self.keep is None else len(self.keep)}


@dataclasses.dataclass
class FilterPlan:
    """Which channels to keep, and how every layer's weights are sliced."""

    groups: list[FilterGroup]
    unprunable: dict[str, str]  # producer layer → why its channels stay
    # layer name → (input channel index list or None, output channel index list or None)
    slices: dict[str, tuple[list[int] | None, list[int] | None]]

    def to_json(self) -> dict[str, Any]:
        return {"groups": [g.to_json() for g in self.groups], "unprunable": self.unprunable}

    def removed(self) -> int:
        return sum(g.channels - len(g.keep) for g in self.groups if g.keep is not None)


@dataclasses.dataclass
class _Call:
    layer: Any
    inputs: list[tuple[int, int]]  # (space, repeat) per input tensor
    output: int | None  # the output tensor's space
    out_repeat: int


def _l1_scores(layer, bn=None) -> np.ndarray:
    """L1 norm of each output channel's weights; with ``bn`` (a BatchNormalization right
    after the layer) of the BN-folded filter, ``|γ| / √(σ² + ε) · ‖W‖₁``."""
    name = type(layer).__name__
    w = {v.name: np.asarray(v.numpy()) for v in layer.weights}
    kernel = w["pointwise_kernel"] if name == "SeparableConv2D" else w["kernel"]
    scores = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0).astype("float64")
    if bn is not None:
        gamma = np.asarray(bn.gamma.numpy()) if bn.scale else np.ones_like(scores)
        var = np.asarray(bn.moving_variance.numpy())
        scores = scores * np.abs(gamma) / np.sqrt(var + bn.epsilon)
    return scores


def _analyse(model) -> tuple[_Spaces, list[_Call], dict[str, Any]]:
    """Channel spaces of every tensor of a functional model (see the module docstring)."""
    import keras

    if not hasattr(model, "_nodes_by_depth"):
        raise KcnnError(f"filter pruning needs a functional model (got {type(model).__name__})")
    spaces = _Spaces()
    of: dict[int, tuple[int, int]] = {}  # tensor id → (space, repeat)
    calls_per_layer: dict[int, int] = {}
    for depth in model._nodes_by_depth:
        for node in model._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                key = id(node.operation)
                calls_per_layer[key] = calls_per_layer.get(key, 0) + 1
    for t in model.inputs:
        of[id(t)] = (spaces.new(t.shape[-1], fixed="model input"), 1)
    calls: list[_Call] = []
    made_by: dict[int, str] = {}  # tensor id → the producer whose raw output it is
    bn_after: dict[str, Any] = {}  # producer → the BatchNormalization applied right after it
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.operation
            if layer is None or node.is_input:
                continue
            ins = [of.get(id(t)) for t in node.input_tensors]
            outs = node.outputs
            name = type(layer).__name__
            single = len(outs) == 1 and len(ins) >= 1 and all(i is not None for i in ins)
            shared = calls_per_layer.get(id(layer), 0) > 1
            out_shape = tuple(outs[0].shape) if outs else ()
            result: tuple[int, int] | None = None
            if single and not shared and not isinstance(layer, keras.Model):
                if len(ins) == 1:
                    (space, repeat), = ins
                    in_rank = len(node.input_tensors[0].shape)
                    if _is_producer(layer) and (name == "Dense" or repeat == 1):
                        result = (spaces.new(out_shape[-1], producer=layer.name), 1)
                    elif _per_channel(layer) and (repeat == 1 or len(out_shape) == 2):
                        result = (space, repeat)
                    elif name == "Flatten":
                        if in_rank == 2:
                            result = (space, repeat)
                        elif in_rank == 4 and repeat == 1 and None not in out_shape[1:]:
                            result = (space, int(np.prod(node.input_tensors[0].shape[1:3])))
                elif name in MERGES and len({r for _, r in ins}) == 1:
                    root = ins[0][0]
                    for s, _ in ins[1:]:
                        root = spaces.union(root, s)
                    result = (root, ins[0][1])
            if result is None:  # a layer we cannot see through: its inputs stay whole
                for i in ins:
                    if i is not None:
                        spaces.fix(i[0], f"feeds {name} '{layer.name}'")
                for t in outs:
                    of[id(t)] = (spaces.new(t.shape[-1] if t.shape else 1,
                                            fixed=f"made by {name} '{layer.name}'"), 1)
                calls.append(_Call(layer, [i or (-1, 1) for i in ins], None, 1))
                continue
            of[id(outs[0])] = result
            calls.append(_Call(layer, list(ins), result[0], result[1]))
            if _is_producer(layer):
                made_by[id(outs[0])] = layer.name
            elif name == "BatchNormalization" and id(node.input_tensors[0]) in made_by:
                bn_after.setdefault(made_by[id(node.input_tensors[0])], layer)
    for t in model.outputs:
        spaces.fix(of[id(t)][0], "model output")
    return spaces, calls, bn_after


CRITERIA = ("l1_bn", "l1")


def plan_filter_pruning(model, sparsity: float | None = None, *,
                        keep_counts: dict[str, int] | None = None,
                        criterion: str = "l1_bn") -> FilterPlan:
    """Score every prunable channel group by L1 norm and choose what to keep.

    Either ``sparsity`` (the share of each group's channels to remove, rounded)
    or ``keep_counts`` (first producer's name → channels to keep) decides how many.
    ``criterion``: ``l1`` scores the kernel's filters; ``l1_bn`` (default) the
    filters with a directly following BatchNormalization folded in (under BN the
    kernel's own scale means nothing; the folded filter is what inference
    computes). A group's score is the sum over its producers.
    """
    if criterion not in CRITERIA:
        raise KcnnError(f"unknown pruning criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    spaces, calls, bn_after = _analyse(model)
    layers = {c.layer.name: c.layer for c in calls}
    groups: dict[int, FilterGroup] = {}
    unprunable: dict[str, str] = {}
    for s in range(len(spaces.parent)):
        if spaces.find(s) != s or not spaces.producers[s]:
            continue
        names = spaces.producers[s]
        if spaces.fixed[s]:
            for n in names:
                unprunable[n] = spaces.why[s]
            continue
        scores = sum(_l1_scores(layers[n], bn_after.get(n) if criterion == "l1_bn" else None)
                     for n in names)
        group = FilterGroup(list(names), spaces.channels[s], [float(v) for v in scores])
        c = group.channels
        if keep_counts is not None:
            k = keep_counts.get(names[0], c)
        else:
            k = int(round(c * (1.0 - float(sparsity))))
        k = max(1, min(c, int(k)))
        if k < c:
            order = np.argsort(-np.asarray(scores), kind="stable")[:k]
            group.keep = sorted(int(i) for i in order)
        groups[s] = group

    def expand(space: int, repeat: int) -> list[int] | None:
        if space < 0:
            return None
        root = spaces.find(space)
        group = groups.get(root)
        if group is None or group.keep is None:
            return None
        c = group.channels
        return [p * c + i for p in range(repeat) for i in group.keep]

    slices: dict[str, tuple[list[int] | None, list[int] | None]] = {}
    for call in calls:
        in_idx = expand(*call.inputs[0]) if len(call.inputs) == 1 else None
        out_idx = expand(call.output, call.out_repeat) if call.output is not None else None
        if in_idx is not None or out_idx is not None:
            slices[call.layer.name] = (in_idx, out_idx)
    return FilterPlan(list(groups.values()), unprunable, slices)


# ----------------------------------------------------------------------------- filter: rebuild
def _sliced_weights(layer, in_idx, out_idx) -> list[np.ndarray]:
    name = type(layer).__name__
    out = []
    for var in layer.weights:
        w = np.asarray(var.numpy())
        vname = var.name
        if name in ("Conv2D", "Dense", "SeparableConv2D") and vname in (
                "kernel", "pointwise_kernel", "depthwise_kernel"):
            if in_idx is not None:
                w = np.take(w, in_idx, axis=w.ndim - 2)
            if out_idx is not None and vname != "depthwise_kernel":
                w = np.take(w, out_idx, axis=w.ndim - 1)
        elif name == "DepthwiseConv2D" and vname == "kernel" and in_idx is not None:
            w = np.take(w, in_idx, axis=2)
        elif w.ndim == 1 and out_idx is not None:  # bias, gamma, beta, moving statistics
            w = np.take(w, out_idx, axis=0)
        out.append(w)
    return out


def apply_filter_plan(model, plan: FilterPlan):
    """A new functional model with the plan's channels removed (the original is untouched)."""
    import keras

    producers = {n for g in plan.groups if g.keep is not None for n in g.producers}

    def clone(layer):
        config = layer.get_config()
        _, out_idx = plan.slices.get(layer.name, (None, None))
        if layer.name in producers and out_idx is not None:
            key = "units" if "units" in config else "filters"
            config[key] = len(out_idx)
        return layer.__class__.from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    new_layers = {layer.name: layer for layer in new.layers}
    for layer in model.layers:
        if not layer.weights:
            continue
        target = new_layers[layer.name]
        in_idx, out_idx = plan.slices.get(layer.name, (None, None))
        target.set_weights(_sliced_weights(layer, in_idx, out_idx))
    return new


def filter_prune(model, sparsity: float | None = None, *,
                 keep_counts: dict[str, int] | None = None, criterion: str = "l1_bn"):
    """``(pruned_model, plan)``: one pruning step without fine-tuning."""
    plan = plan_filter_pruning(model, sparsity, keep_counts=keep_counts, criterion=criterion)
    return apply_filter_plan(model, plan), plan


def channel_counts(model) -> dict[str, int]:
    """Output channels of every Conv2D/Dense/SeparableConv2D layer."""
    out = {}
    for layer in model.layers:
        if type(layer).__name__ in PRODUCERS:
            out[layer.name] = int(getattr(layer, "filters", None) or layer.units)
    return out


# ----------------------------------------------------------------------------- the command
def round_sparsity(sparsity: float, r: int, rounds: int) -> float:
    """Cumulative sparsity after round ``r`` of ``rounds``: ``1 − (1 − s)^(r/R)``."""
    return 1.0 - (1.0 - sparsity) ** (r / rounds)


def prune_run(run_dir: str | Path, *, method: str = "filter", sparsity: float = 0.5,
              rounds: int = 3, finetune_epochs: int = 3, lr: float | None = None,
              criterion: str = "l1_bn", out: str | Path | None = None,
              runs_root: str | Path = "runs", tflite: bool = True, latency_runs: int = 100,
              verbose: int | None = None, log=None) -> tuple[Path, dict[str, Any]]:
    """Prune a trained run into a new run dir; returns ``(run_dir, compress.json content)``.

    Each round: score and remove (``magnitude``: masks; ``filter``: a rebuilt,
    thinner model), re-estimate the BatchNormalization statistics
    (:func:`~kcnn.compress.common.recalibrate_batchnorm`), fine-tune, re-estimate
    them again.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if method not in METHODS:
        raise KcnnError(f"--method: unknown method {method!r}; valid: {', '.join(METHODS)}")
    common.check_fraction(sparsity, "--sparsity")
    if not isinstance(rounds, int) or rounds < 1:
        raise KcnnError(f"--rounds: must be >= 1 (got {rounds})")
    if finetune_epochs < 0:
        raise KcnnError(f"--finetune-epochs: must be >= 0 (got {finetune_epochs})")
    if lr is not None and not lr > 0:
        raise KcnnError(f"--lr: must be > 0 (got {lr})")
    if criterion not in CRITERIA:
        raise KcnnError(f"--criterion: unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    run = common.open_source_run(run_dir)
    if out is not None:
        common.check_out(out)

    source = common.load_source(run.path)
    model = source.model
    log(f"measuring the source model {source.run.model}")
    before = common.measure(model, source, tflite=tflite, latency_runs=latency_runs)
    before["accuracy_bn_recalibrated"] = common.source_accuracy_recalibrated(source)
    original = channel_counts(model)
    settings = {"method": method, "sparsity": sparsity, "rounds": rounds,
                "finetune_epochs": finetune_epochs, "bn_recalibration": True,
                "criterion": criterion if method == "filter" else "magnitude",
                "lr": lr if lr is not None else common.default_lr(source.recipe)}
    info = common.base_info(f"prune-{method}", source, settings)
    history: list[dict[str, Any]] = []
    round_log: list[dict[str, Any]] = []
    masks: dict[str, np.ndarray] = {}
    epoch = 0
    for r in range(1, rounds + 1):
        target = round_sparsity(sparsity, r, rounds)
        if method == "magnitude":
            if not prunable_kernels(model):
                raise KcnnError("magnitude pruning found no Conv2D/Dense kernels in the model")
            remove_masks(model)
            masks = magnitude_masks(model, target)
            apply_masks(model, masks)
            detail: dict[str, Any] = {"kernel_sparsity": _mean_sparsity(model)}
        else:
            keep = {name: max(1, int(round(c * (1.0 - target)))) for name, c in original.items()}
            model, plan = filter_prune(model, keep_counts=keep, criterion=criterion)
            detail = {"removed_channels": plan.removed(), "channels": channel_counts(model)}
            if r == 1:
                if not plan.groups:
                    why = "; ".join(f"{n}: {w}" for n, w in plan.unprunable.items()) or (
                        "no Conv2D/Dense layers at the top level of the model")
                    raise KcnnError(f"filter pruning found no channels it can remove ({why}); "
                                    f"try --method magnitude")
                info["unprunable"] = plan.unprunable
        raw = common.measure(model, source, tflite=False)["accuracy"]
        common.recalibrate_batchnorm(model, source, seed_offset=2 * r)
        acc = common.measure(model, source, tflite=False)["accuracy"]
        log(f"round {r}/{rounds}: sparsity {target:.3f}, accuracy {raw:.4f} pruned, "
            f"{acc:.4f} with BN statistics re-estimated")
        rows = common.finetune(model, source, finetune_epochs, lr=lr, seed_offset=r,
                               first_epoch=epoch, tag={"round": r}, verbose=verbose)
        epoch += len(rows)
        history += rows
        after_acc = acc
        if rows:
            common.recalibrate_batchnorm(model, source, seed_offset=2 * r + 1)
            after_acc = common.measure(model, source, tflite=False)["accuracy"]
            log(f"round {r}/{rounds}: accuracy after {len(rows)} fine-tuning epochs {after_acc:.4f}")
        round_log.append({"round": r, "sparsity": target, "accuracy_pruned_raw": raw,
                          "accuracy_pruned": acc, "accuracy_finetuned": after_acc, **detail})
    extra: dict[str, Any] = {}
    if method == "magnitude":
        remove_masks(model)
        zeros_ok = all(np.all(np.asarray(var.numpy())[masks[key] == 0] == 0)
                       for key, var in prunable_kernels(model))
        if not zeros_ok:  # pragma: no cover - the constraint guarantees it
            raise RuntimeError("a masked weight became non-zero during fine-tuning")
        extra["masks.npz"] = _npz_bytes(masks)
    # A plain model (no masks, no optimizer state) is what the run keeps.
    model = _plain_copy(model)
    after = common.measure(model, source, tflite=tflite, latency_runs=latency_runs)
    info.update({"rounds": round_log, "before": before, "after": after,
                 "ratios": common.ratios(before, after), "epochs": epoch})
    if method == "filter":
        info["channels"] = {n: [original[n], c] for n, c in channel_counts(model).items()}
    else:
        info["kernel_sparsity"] = sparsity_of(model)
    out = Path(out) if out is not None else common.default_out(source.recipe.name, "prune", runs_root)
    path = common.write_run(out, source, model, info=info, history=history, extra=extra)
    return path, info


def _mean_sparsity(model) -> float:
    values = [(np.asarray(v.numpy()) == 0) for _, v in prunable_kernels(model)]
    total = sum(v.size for v in values)
    return float(sum(v.sum() for v in values) / total) if total else 0.0


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k.replace("/", "__"): v.astype("uint8") for k, v in arrays.items()})
    return buf.getvalue()


def _plain_copy(model):
    """The same functional model with fresh layers and the same weights, uncompiled."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def format_rounds(rounds: Sequence[dict[str, Any]]) -> str:
    lines = ["| round | sparsity | accuracy pruned | accuracy fine-tuned |", "|---|---|---|---|"]
    for r in rounds:
        lines.append(f"| {r['round']} | {r['sparsity']:.3f} | {r['accuracy_pruned']:.4f} | "
                     f"{r['accuracy_finetuned']:.4f} |")
    return "\n".join(lines)
