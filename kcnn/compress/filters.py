"""Filter pruning (Li et al., 2017, "Pruning Filters for Efficient ConvNets").

The output channels (filters of Conv2D, units of Dense) with the smallest L1
norm are removed and the model is **rebuilt with fewer channels**, so
parameters, MACs and latency drop. The functional graph is analysed
generically: each tensor's channels belong to a *channel space*; Conv2D and
Dense layers create one, per-channel layers (BatchNormalization, activations,
dropout, pooling, global pooling, padding, DepthwiseConv2D) pass theirs
through, ``Flatten`` repeats it per position, and element-wise merges
(``Add``, ``Multiply``, …) join the spaces of their inputs into one group that
is pruned identically (a residual stage loses the same channels in every
branch). A space is left unpruned when it reaches a layer that mixes channels
in another way (``Concatenate``, ``Reshape``, composite kcnn layers, nested
models, a softmax), the model's output, or the model's input. The new model is
built from the old layers' configs with smaller ``filters``/``units``, and the
kept slices of every weight are copied over (the following
BatchNormalization, the next layer's input channels, the rows of a Dense layer
after ``Flatten``). Before fine-tuning, the rebuilt model computes exactly what
the original computes with the removed channels zeroed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kcnn.choices import PruneCriterion, values
from kcnn.errors import KcnnError

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


CRITERIA = values(PruneCriterion)


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


# ----------------------------------------------------------------------------- rebuild
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
