"""Per-layer analysis of a Keras model: output shape, parameters, multiply-accumulates
and receptive field (``kcnn info``).

The analysis walks the functional graph (each layer call is a node; its inbound
tensors are the parents), so branches and merges are handled exactly.

Receptive field, per spatial axis (Araujo et al., 2019, "Computing receptive
fields of convolutional neural networks"): for a window of size ``k``, stride
``s``, dilation ``d`` and ``p`` pixels of padding before the first window,
``k' = d (k - 1) + 1`` and

```
size_out  = size_in + (k' - 1) · jump_in
jump_out  = jump_in · s
start_out = start_in + ((k' - 1) / 2 - p) · jump_in
```

``size`` is how many input pixels one unit sees, ``jump`` the distance in input
pixels between neighbouring units, ``start`` the input position (0 = centre of
the first pixel) of the centre of the first unit's field; a negative start
means the field hangs over the zero padding. ``same`` padding uses
TensorFlow's split (the smaller half before). Where paths merge (``Add``,
``Concatenate``, …) the largest field wins. Layers that mix every position
(``Flatten``, global pooling, ``Dense`` on a vector) have no receptive field
of their own (shown as ``global``). Composite kcnn layers count by their own
kernels: ``MLPConv2D`` and ``ResidualBlock`` by their chain of convolutions,
``HighwayConv2D`` by its kernel, ``DeformableConv2D`` by its regular grid
before deformation (the learned offsets can reach further).

Multiply-accumulates (MACs) count the products of convolution and dense
layers (kernel × input; biases, normalisation, activations and pooling are
not counted). FLOPs ≈ 2 × MACs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from kcnn.errors import KcnnError

# ----------------------------------------------------------------------------- receptive field


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one tensor, per spatial axis (height, width)."""

    size: tuple[int, int] = (1, 1)
    jump: tuple[float, float] = (1, 1)
    start: tuple[float, float] = (0.0, 0.0)

    def window(self, axis_lengths, kernel, strides, padding, dilation=(1, 1)):
        """The field after a k×k window (convolution or pooling) over maps of ``axis_lengths``."""
        size, jump, start = [], [], []
        for a in range(2):
            k, s, d = int(kernel[a]), int(strides[a]), int(dilation[a])
            eff = d * (k - 1) + 1
            pad = _pad_before(axis_lengths[a], eff, s, padding)
            size.append(self.size[a] + (eff - 1) * self.jump[a])
            start.append(self.start[a] + ((eff - 1) / 2 - pad) * self.jump[a])
            jump.append(self.jump[a] * s)
        return ReceptiveField(tuple(size), tuple(jump), tuple(start))

    def shift(self, before):
        """The field after padding (negative ``before``: cropping) ``before`` pixels per axis."""
        return ReceptiveField(
            self.size, self.jump,
            tuple(self.start[a] - before[a] * self.jump[a] for a in range(2)),
        )

    def to_json(self) -> dict[str, list]:
        return {"size": list(self.size), "jump": [_num(j) for j in self.jump],
                "start": [_num(s) for s in self.start]}


def _num(x: float):
    return int(x) if float(x).is_integer() else float(x)


def _pad_before(length, eff, stride, padding) -> int:
    if padding == "valid":
        return 0
    if padding == "causal":
        return eff - 1
    if length is None:  # unknown size: exact for stride 1, the usual split otherwise
        return (eff - 1) // 2
    out = -(-length // stride)
    return max((out - 1) * stride + eff - length, 0) // 2


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _spatial_axes(layer) -> tuple[int, int]:
    return (2, 3) if getattr(layer, "data_format", None) == "channels_first" else (1, 2)


def _lengths(shape, axes):
    return tuple(shape[a] for a in axes)


def _conv_chain(rf, convs, shape):
    """Field and shape after a chain of Conv2D sub-layers applied in order."""
    for conv in convs:
        axes = _spatial_axes(conv)
        rf = rf.window(_lengths(shape, axes), conv.kernel_size, conv.strides, conv.padding,
                       conv.dilation_rate)
        shape = conv.compute_output_shape(shape)
    return rf


# Layer types that mix every spatial position into each output.
_GLOBAL = ("Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling1D",
           "GlobalMaxPooling1D", "Reshape")


def layer_receptive_field(layer, in_fields, in_shapes, out_shape):
    """Receptive field of a layer's output, from its inputs' fields (``None`` = global)."""
    known = [f for f in in_fields if f is not None]
    if len(in_fields) > 1:  # a merge: the largest field decides
        if len(known) < len(in_fields):
            return None
        return max(known, key=lambda f: (f.size[0] * f.size[1], f.size))
    if not in_fields or in_fields[0] is None:
        return None
    rf, shape = in_fields[0], in_shapes[0]
    name = type(layer).__name__
    if len(shape) != 4 or out_shape is None or len(out_shape) != 4:
        return None  # a vector: every unit sees the whole input
    axes = _spatial_axes(layer)
    lengths = _lengths(shape, axes)
    if name in _GLOBAL:
        return None
    if getattr(layer, "convs", None):
        return _conv_chain(rf, layer.convs, tuple(shape))  # ResidualBlock, MLPConv2D
    if name == "HighwayConv2D":
        return rf.window(lengths, layer.kernel_size, (1, 1), "same", layer.dilation_rate)
    if hasattr(layer, "kernel_size") and hasattr(layer, "strides"):  # Conv*, DeformableConv2D
        if "Transpose" in name:
            return None
        return rf.window(lengths, _pair(layer.kernel_size), _pair(layer.strides),
                         layer.padding, _pair(getattr(layer, "dilation_rate", 1)))
    if hasattr(layer, "pool_size") and hasattr(layer, "strides"):  # every 2D pooling
        strides = layer.strides if layer.strides is not None else layer.pool_size
        return rf.window(lengths, _pair(layer.pool_size), _pair(strides), layer.padding)
    if name == "ZeroPadding2D":
        return rf.shift((layer.padding[0][0], layer.padding[1][0]))
    if name == "Cropping2D":
        return rf.shift((-layer.cropping[0][0], -layer.cropping[1][0]))
    if name == "UpSampling2D":
        size = _pair(layer.size)
        return ReceptiveField(rf.size, tuple(rf.jump[a] / size[a] for a in range(2)), rf.start)
    if _lengths(out_shape, axes) == lengths:
        return rf  # element-wise or per-position (BN, activations, LRN, 1×1 Dense, …)
    return None


# ----------------------------------------------------------------------------- MACs


def _output_positions(layer, out_shape) -> int:
    """Spatial positions of a convolution's output (1D, 2D or 3D, either data format)."""
    rank = len(out_shape) - 2
    if rank < 1:
        return 1
    dims = out_shape[2:] if getattr(layer, "data_format", None) == "channels_first" \
        else out_shape[1:1 + rank]
    return math.prod(dims)


def layer_macs(layer, in_shapes, out_shape) -> int:
    """Multiply-accumulates of one call of ``layer`` (batch size 1).

    Per output position: a convolution ``k^d · C_in / groups`` for each of its
    ``C_out`` outputs (grouped convolutions: each filter sees its group only);
    a depthwise convolution ``k^d`` for each of its ``C_in · depth_multiplier``
    outputs; a separable convolution its depthwise part plus the 1×1
    ``C_in · depth_multiplier → C_out`` pointwise part.
    """
    name = type(layer).__name__
    if not in_shapes or out_shape is None or any(d is None for d in out_shape[1:]):
        return 0
    in_shape = in_shapes[0]
    axes = _spatial_axes(layer)
    positions = math.prod(out_shape[a] for a in axes) if len(out_shape) == 4 else 1
    if name in ("DepthwiseConv1D", "DepthwiseConv2D"):
        window = math.prod(layer.kernel_size)
        return _output_positions(layer, out_shape) * _channels(out_shape, layer) * window
    if name in ("SeparableConv1D", "SeparableConv2D"):
        window = math.prod(layer.kernel_size)
        mid = _channels(in_shape, layer) * layer.depth_multiplier
        return _output_positions(layer, out_shape) * mid * (window + _channels(out_shape, layer))
    if name == "Conv2DTranspose":
        kh, kw = _pair(layer.kernel_size)
        in_pos = math.prod(in_shape[a] for a in axes)
        return in_pos * _channels(in_shape, layer) * kh * kw * _channels(out_shape, layer)
    if name in ("Conv2D", "Conv1D", "Conv3D"):
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            return 0
        per_output = math.prod(kernel.shape[:-1])  # kernel (kh, kw, in/groups, out)
        return _output_positions(layer, out_shape) * _channels(out_shape, layer) * per_output
    if name == "Dense":
        return math.prod(out_shape[1:-1]) * in_shape[-1] * out_shape[-1]
    if name == "HighwayConv2D":  # transform and gate convolutions
        kh, kw = layer.kernel_size
        c = _channels(in_shape, layer)
        return 2 * positions * c * c * kh * kw
    if name == "HighwayDense":
        return 2 * math.prod(in_shape[1:]) * in_shape[-1]
    if name == "DeformableConv2D":  # the convolution and its offset convolution
        kh, kw = layer.kernel_size
        c = _channels(in_shape, layer)
        return positions * c * kh * kw * (layer.filters + 2 * kh * kw)
    total = 0  # a composite layer: the sum over its built sub-layers
    for sub in getattr(layer, "_layers", []):
        shapes = getattr(sub, "_build_shapes_dict", None)
        if not shapes or not sub.built:
            continue
        sub_in = tuple(next(iter(shapes.values())))
        try:
            sub_out = tuple(sub.compute_output_shape(sub_in))
        except Exception:  # noqa: BLE001 - a sub-layer we cannot size counts as 0
            continue
        total += layer_macs(sub, [sub_in], sub_out)
    return total


def _channels(shape, layer) -> int:
    return shape[1] if getattr(layer, "data_format", None) == "channels_first" else shape[-1]


# ----------------------------------------------------------------------------- graph walk


@dataclasses.dataclass
class LayerInfo:
    name: str
    type: str
    output_shape: tuple
    params: int
    macs: int
    receptive_field: ReceptiveField | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "output_shape": list(self.output_shape),
            "params": self.params,
            "macs": self.macs,
            "receptive_field": self.receptive_field.to_json() if self.receptive_field else None,
        }


@dataclasses.dataclass
class ModelInfo:
    name: str
    layers: list[LayerInfo]
    total_params: int
    trainable_params: int
    macs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "macs": self.macs,
            "layers": [row.to_json() for row in self.layers],
        }

    def layer(self, name: str) -> LayerInfo:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(name)


def _functional(model):
    import keras

    if isinstance(model, keras.Sequential):
        fn = getattr(model, "_functional", None)
        if fn is None:
            raise KcnnError("a Sequential model needs a known input shape to be analysed")
        return fn
    if not hasattr(model, "_nodes_by_depth"):
        raise KcnnError(f"{type(model).__name__}: only functional and Sequential models can be "
                        f"analysed (a subclassed model has no layer graph)")
    return model


def _shape(tensor) -> tuple:
    return tuple(tensor.shape)


def _walk(model, in_fields, prefix, rows, seen):
    import keras

    graph = _functional(model)
    fields: dict[int, ReceptiveField | None] = {}
    for tensor, field in zip(graph.inputs, in_fields):
        fields[id(tensor)] = field
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            layer = node.operation
            if layer is None:
                continue
            if node.is_input:
                for t in node.outputs:
                    rows.append(LayerInfo(prefix + layer.name, "InputLayer", _shape(t), 0, 0,
                                          fields.get(id(t), ReceptiveField())))
                continue
            inputs = node.input_tensors
            in_f = [fields.get(id(t)) for t in inputs]
            in_shapes = [_shape(t) for t in inputs]
            outputs = node.outputs
            if isinstance(layer, keras.Model):  # a nested model: analyse its own graph
                out_f = _walk(layer, in_f, f"{prefix}{layer.name}/", rows, seen)
                for t, f in zip(outputs, out_f):
                    fields[id(t)] = f
                continue
            out_shape = _shape(outputs[0]) if outputs else None
            field = layer_receptive_field(layer, in_f, in_shapes, out_shape)
            first_call = id(layer) not in seen
            seen.add(id(layer))
            params = layer.count_params() if first_call and layer.built else 0
            rows.append(LayerInfo(prefix + layer.name, type(layer).__name__, out_shape,
                                  params, layer_macs(layer, in_shapes, out_shape), field))
            for t in outputs:
                fields[id(t)] = field
    return [fields.get(id(t)) for t in graph.outputs]


def analyze(model) -> ModelInfo:
    """Per-layer output shape, parameters, MACs and receptive field of a Keras model."""
    graph = _functional(model)
    rows: list[LayerInfo] = []
    _walk(graph, [ReceptiveField() for _ in graph.inputs], "", rows, set())
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return ModelInfo(model.name, rows, int(model.count_params()), int(trainable),
                     int(sum(r.macs for r in rows)))


# ----------------------------------------------------------------------------- text table


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _fmt_pair(values) -> str:
    vals = [_num(v) for v in values]
    return str(vals[0]) if vals[0] == vals[1] else f"{vals[0]}×{vals[1]}"


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def format_table(info: ModelInfo) -> str:
    """The per-layer table ``kcnn info`` prints, ending with the totals."""
    header = ("layer", "type", "output shape", "params", "MACs", "RF", "jump", "start")
    body = []
    for r in info.layers:
        rf = r.receptive_field
        body.append((
            r.name, r.type, _fmt_shape(r.output_shape), f"{r.params:,}", f"{r.macs:,}",
            _fmt_pair(rf.size) if rf else "global",
            _fmt_pair(rf.jump) if rf else "",
            _fmt_pair(rf.start) if rf else "",
        ))
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    right = {3, 4, 5, 6, 7}

    def line(row):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(line(header))
    out = [f"model: {info.name}", line(header), rule, *map(line, body), rule]
    out.append(f"total: {info.total_params:,} parameters ({info.trainable_params:,} trainable, "
               f"{info.total_params - info.trainable_params:,} non-trainable); "
               f"{info.macs:,} MACs ({_si(info.macs)}MACs ≈ {_si(2 * info.macs)}FLOPs "
               f"per image)")
    return "\n".join(out)


# ----------------------------------------------------------------------------- targets

def recipe_shapes(recipe) -> tuple[tuple[int, ...], int]:
    """(input_shape, num_classes) of a recipe's model, without loading its images.

    The model's own ``input_shape``/``num_classes`` win; otherwise the data source
    tells them (:meth:`kcnn.data.sources.Source.shape`).
    """
    from kcnn.data.sources import make_source

    kwargs = recipe.model.kwargs
    shape = kwargs.get("input_shape")
    classes = kwargs.get("num_classes") or recipe.data.num_classes
    if shape is None or classes is None:
        src_shape, src_classes = make_source(recipe.data).shape(need_outputs=classes is None)
        shape = shape or src_shape
        classes = classes or src_classes
    return tuple(int(d) for d in shape), int(classes)


def model_from_recipe(recipe):
    """The recipe's model, built without the engine's preprocessing layers."""
    from kcnn.models import create_model

    shape, classes = recipe_shapes(recipe)
    kwargs = {k: v for k, v in recipe.model.kwargs.items()
              if k not in ("input_shape", "num_classes")}
    try:
        return create_model(recipe.model.name, num_classes=classes, input_shape=shape, **kwargs)
    except (TypeError, ValueError) as err:  # a builder or Keras layer refusing an option
        raise KcnnError(f"model {recipe.model.name!r}: cannot build with these options "
                        f"({type(err).__name__}: {err})") from None


def load_target(target: str, overrides: list[str] | None = None):
    """A Keras model from a run dir, a ``.keras`` file, a recipe or a registered model name."""
    from kcnn import models
    from kcnn.recipes.load import resolve_path
    from kcnn.saving import resolve

    path = Path(target)
    if path.is_dir() or path.suffix == ".keras":
        return resolve(target, kinds=("run", "keras")).load_model()
    recipe_path = resolve_path(target)
    if recipe_path.suffix in (".yaml", ".yml") or recipe_path.is_file():
        from kcnn.recipes import load

        return model_from_recipe(load(recipe_path, overrides))
    if target in models.MODELS:
        return models.MODELS.get(target)()
    from kcnn.registry import did_you_mean

    raise KcnnError(f"{target}: not a run directory, .keras file, recipe or model name"
                    f"{did_you_mean(target, models.list_models())}")
