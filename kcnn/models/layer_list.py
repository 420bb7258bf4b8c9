"""Any architecture written as a list of layers in the recipe (builder ``layers``).

```yaml
model:
  layers:                                   # `name: layers` is implied
    - {type: conv, filters: 32}             # shorthand: Conv2D 3×3 same (+BN if batch_norm) + ReLU
    - {repeat: 2, layers: [{residual: [{type: conv, filters: 32}, {Conv2D: {filters: 32, kernel_size: 3, padding: same}}]}]}
    - pool                                  # shorthand: 2×2 pooling of the model's `pooling` kind
    - {type: Conv2D, filters: 64, kernel_size: 3, dilation_rate: 2, padding: same, activation: relu}
    - {highway: [{type: conv, filters: 64}], gate_bias: -2}
    - {LocalResponseNormalization: {size: 5}}   # any kcnn layer (kcnn.layers.LAYERS) by name
```

Entries:

* ``"Flatten"`` — a layer type without arguments;
* ``{type: T, **kwargs}`` or ``{T: {kwargs}}`` — a layer with arguments. ``T`` is a class
  name from ``keras.layers`` (``Conv2D``, ``MaxPooling2D``, ``Dense``, ``Dropout``,
  ``BatchNormalization``, ``ReLU``, ``GlobalAveragePooling2D``, …) or a kcnn layer
  name (``LocalResponseNormalization``/``lrn``, ``StochasticPooling2D``, ``LpPooling2D``,
  ``MLPConv2D``, ``ResidualBlock``, ``HighwayConv2D``, ``DeformableConv2D``, …);
* shorthands ``conv`` (``filters``, ``kernel_size`` = 3, ``strides`` = 1,
  ``dilation_rate`` = 1, ``padding`` = same: Conv2D, batch normalization when the
  model's ``batch_norm`` is true, ReLU) and ``pool`` (``pool_size`` = 2, ``strides``,
  ``padding`` = same: a pooling layer of the model's ``pooling`` kind);
* ``{repeat: N, layers: [...]}`` — N copies of a stack (fresh weights each time);
* ``{residual: [...], activation: relu}`` — ``input + stack(input)`` (then the optional
  activation); a 1×1 convolution (strided if the stack downsamples) projects the input
  when the shapes differ;
* ``{highway: [...], gate_bias: -1, gate_kernel_size: 3}`` —
  ``y = H(x)·T(x) + x·(1 − T(x))`` with ``H`` the stack (which must keep the shape) and
  ``T`` a sigmoid convolution (a Dense layer on flat inputs) whose bias starts at
  ``gate_bias``.

The end of the list: when the last output already is ``(batch, num_classes)`` it is
used as the logits; a feature map with ``num_classes`` channels gets global average
pooling (NIN style); any other feature map gets the model's ``head`` (``gap``: 1×1
convolution to the classes + global average pooling; ``dense``: Flatten + Dense;
``conv``: an h×w convolution to the classes + global average pooling); any other
flat output gets ``Dense(num_classes)``. ``dropout`` > 0 adds dropout before an
appended head.

The structure is checked when the recipe is validated (without Keras); layer types
and their arguments are checked when the model is built (``kcnn info RECIPE``
builds it without training). Errors name the entry, e.g.
``model.layers[2].residual[0] (Conv2D): ...``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from kcnn.errors import KcnnError
from kcnn.models.common import check_common, classifier_head, model_inputs, pool2d
from kcnn.models.registry import MODELS
from kcnn.registry import did_you_mean

CONSTRUCTS = ("repeat", "residual", "highway")
SHORTHANDS = ("conv", "pool")
_CONSTRUCT_KEYS = {
    "repeat": {"repeat", "layers"},
    "residual": {"residual", "activation"},
    "highway": {"highway", "gate_bias", "gate_kernel_size"},
}


# ----------------------------------------------------------------------------- structure
def _entry_kind(entry: Any, where: str) -> tuple[str, str | None, dict[str, Any] | None]:
    """('layer', type, kwargs) or (construct, None, None) for one entry."""
    if isinstance(entry, str):
        if entry in CONSTRUCTS:
            raise KcnnError(f"{where}: {entry!r} needs a list of layers, e.g. {{{entry}: [...]}}")
        return "layer", entry, {}
    if not isinstance(entry, dict) or not entry:
        raise KcnnError(f"{where}: an entry must be a layer type name or a mapping "
                        f"(got {entry!r})")
    for construct in CONSTRUCTS:
        if construct in entry:
            extra = set(entry) - _CONSTRUCT_KEYS[construct]
            if extra:
                raise KcnnError(f"{where}: unknown key {sorted(extra)[0]!r} for {construct}; "
                                f"valid keys: {', '.join(sorted(_CONSTRUCT_KEYS[construct]))}")
            return construct, None, None
    if "type" in entry:
        if not isinstance(entry["type"], str):
            raise KcnnError(f"{where}: type must be a layer type name (got {entry['type']!r})")
        return "layer", entry["type"], {k: v for k, v in entry.items() if k != "type"}
    if len(entry) == 1:
        (name, kwargs), = entry.items()
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise KcnnError(f"{where} ({name}): the arguments must be a mapping (got {kwargs!r})")
        return "layer", str(name), dict(kwargs)
    raise KcnnError(f"{where}: a layer entry needs a 'type' key, or a single "
                    f"{{LayerType: {{arguments}}}} key (got keys {sorted(entry)})")


def _sub_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise KcnnError(f"{where}: must be a non-empty list of layers (got {value!r})")
    return value


def check_spec(entries: Any, where: str = "model.layers") -> None:
    """Check the structure of a layer list without importing Keras."""
    for i, entry in enumerate(_sub_list(entries, where)):
        here = f"{where}[{i}]"
        kind, _, kwargs = _entry_kind(entry, here)
        if kind == "repeat":
            n = entry["repeat"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise KcnnError(f"{here}.repeat: must be a positive integer (got {n!r})")
            check_spec(entry.get("layers"), f"{here}.layers")
        elif kind in ("residual", "highway"):
            check_spec(entry[kind], f"{here}.{kind}")
            if kind == "highway":
                gk = entry.get("gate_kernel_size", 3)
                if not isinstance(gk, int) or isinstance(gk, bool) or gk < 1:
                    raise KcnnError(f"{here}.gate_kernel_size: must be a positive integer "
                                    f"(got {gk!r})")


def check_kwargs(kwargs: dict[str, Any]) -> None:
    """Recipe-time check of the builder's arguments (called by the recipe loader)."""
    if "layers" not in kwargs:
        raise KcnnError("model.layers: required (a list of layers)")
    check_spec(kwargs["layers"])


# ----------------------------------------------------------------------------- layer types
def _snake(name: str) -> str:
    """``Conv2D`` → ``conv2d``, ``LocalResponseNormalization`` → ``local_response_normalization``."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).lower()


def layer_types() -> dict[str, type]:
    """Every layer type a list can name: kcnn's layers and ``keras.layers`` classes."""
    import keras

    from kcnn.layers import LAYERS

    found: dict[str, type] = {}
    for name in dir(keras.layers):
        obj = getattr(keras.layers, name)
        if isinstance(obj, type) and issubclass(obj, keras.layers.Layer) and name != "InputLayer":
            found[name] = obj
    found.update(LAYERS)
    return found


def resolve_layer_type(name: str, where: str = "layer") -> type:
    """The layer class for ``name``; exact, then case-insensitive; else a KcnnError."""
    import difflib

    types = layer_types()
    if name in types:
        return types[name]
    folded: dict[str, list[str]] = {}
    for key in types:
        folded.setdefault(key.lower(), []).append(key)
    if len(folded.get(name.lower(), [])) == 1:
        return types[folded[name.lower()][0]]
    close = difflib.get_close_matches(name.lower(), list(folded), n=3, cutoff=0.6)
    hint = (" (did you mean " + " or ".join(repr(folded[c][0]) for c in close) + "?)"
            if close else "")
    from kcnn.layers import LAYERS

    kcnn_names = sorted({cls.__name__ for cls in LAYERS.values()})
    raise KcnnError(
        f"{where}: unknown layer type {name!r}{hint}; use a keras.layers class name "
        f"(Conv2D, Dense, …), a kcnn layer ({', '.join(kcnn_names)}) or the shorthands "
        f"{', '.join(SHORTHANDS)}"
    )


def _init_arguments(cls) -> set[str]:
    """Keyword arguments a layer class accepts, following ``**kwargs`` up to ``Layer``."""
    import inspect

    import keras

    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.name != "self" and p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
        if klass is keras.layers.Layer or not any(
                p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return names


# ----------------------------------------------------------------------------- building
class _Builder:
    def __init__(self, pooling: str, batch_norm: bool):
        self.pooling = pooling
        self.batch_norm = batch_norm
        self.counts: dict[str, int] = {}

    def name(self, base: str) -> str:
        self.counts[base] = self.counts.get(base, 0) + 1
        return f"{base}_{self.counts[base]}"

    def stack(self, entries, x, where):
        for i, entry in enumerate(entries):
            x = self.entry(entry, x, f"{where}[{i}]")
        return x

    def entry(self, entry, x, where):
        kind, type_name, kwargs = _entry_kind(entry, where)
        if kind == "repeat":
            for _ in range(entry["repeat"]):
                x = self.stack(entry["layers"], x, f"{where}.layers")
            return x
        if kind == "residual":
            return self.residual(entry, x, where)
        if kind == "highway":
            return self.highway(entry, x, where)
        return self.layer(type_name, kwargs, x, where)

    def _call(self, make, x, where, label):
        """Construct and call a layer, turning Keras' complaints into a KcnnError."""
        try:
            layer = make()
        except (TypeError, ValueError) as err:
            raise KcnnError(f"{where} ({label}): bad arguments: {err}") from None
        try:
            return layer(x)
        except (TypeError, ValueError) as err:
            raise KcnnError(f"{where} ({label}): cannot apply to an input of shape "
                            f"{tuple(x.shape)}: {err}") from None

    def layer(self, type_name, kwargs, x, where):
        if type_name == "conv":
            return self.conv(kwargs, x, where)
        if type_name == "pool":
            args = {"pool_size": 2, "strides": None, "padding": "same", **kwargs}
            extra = set(args) - {"pool_size", "strides", "padding", "name"}
            if extra:
                raise KcnnError(f"{where} (pool): unknown argument {sorted(extra)[0]!r}; "
                                f"valid: pool_size, strides, padding, name")
            name = args.pop("name", None) or self.name("pool")
            return self._call(lambda: pool2d(self.pooling, args["pool_size"], args["strides"],
                                             name=name, padding=args["padding"]), x, where, "pool")
        cls = resolve_layer_type(type_name, where)
        valid = _init_arguments(cls)
        for key in kwargs:
            if key not in valid:
                raise KcnnError(
                    f"{where} ({type_name}): unknown argument {key!r}"
                    f"{did_you_mean(key, sorted(valid))}; valid: {', '.join(sorted(valid))}")
        kwargs = dict(kwargs)
        kwargs.setdefault("name", self.name(_snake(cls.__name__)))
        return self._call(lambda: cls(**kwargs), x, where, type_name)

    def conv(self, kwargs, x, where):
        import keras

        valid = {"filters", "kernel_size", "strides", "dilation_rate", "padding", "name"}
        extra = set(kwargs) - valid
        if extra:
            raise KcnnError(f"{where} (conv): unknown argument {sorted(extra)[0]!r}; "
                            f"valid: {', '.join(sorted(valid))} (use Conv2D for full control)")
        if "filters" not in kwargs:
            raise KcnnError(f"{where} (conv): 'filters' is required")
        name = kwargs.get("name") or self.name("conv")
        args = dict(kernel_size=kwargs.get("kernel_size", 3), strides=kwargs.get("strides", 1),
                    dilation_rate=kwargs.get("dilation_rate", 1),
                    padding=kwargs.get("padding", "same"))
        x = self._call(lambda: keras.layers.Conv2D(
            kwargs["filters"], use_bias=not self.batch_norm, kernel_initializer="he_normal",
            name=name, **args), x, where, "conv")
        if self.batch_norm:
            x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x)

    def residual(self, entry, x, where):
        import keras

        name = self.name("residual")
        y = self.stack(entry["residual"], x, f"{where}.residual")
        shortcut = x
        if tuple(y.shape[1:]) != tuple(x.shape[1:]):
            shortcut = self._projection(x, y, f"{name}_projection", where)
        out = keras.layers.Add(name=f"{name}_add")([y, shortcut])
        if entry.get("activation"):
            out = self._call(lambda: keras.layers.Activation(entry["activation"],
                                                             name=f"{name}_activation"),
                             out, where, "residual activation")
        return out

    def _projection(self, x, y, name, where):
        import keras

        if len(x.shape) != len(y.shape) or len(x.shape) not in (2, 4):
            raise KcnnError(f"{where}: residual stack changes the rank of its input "
                            f"({tuple(x.shape)} → {tuple(y.shape)})")
        if len(x.shape) == 2:
            return keras.layers.Dense(y.shape[-1], use_bias=False, name=name)(x)
        strides = []
        for a, b in zip(x.shape[1:3], y.shape[1:3]):
            # A "same" 1×1 convolution with stride s maps a to ceil(a / s).
            s = -(-a // b) if a and b else 0
            if not s or -(-a // s) != b:
                raise KcnnError(f"{where}: cannot project the shortcut from {tuple(x.shape)} "
                                f"to {tuple(y.shape)} with a strided 1×1 convolution")
            strides.append(s)
        return keras.layers.Conv2D(y.shape[-1], 1, strides=tuple(strides), padding="same",
                                   use_bias=False, name=name)(x)

    def highway(self, entry, x, where):
        import keras

        name = self.name("highway")
        h = self.stack(entry["highway"], x, f"{where}.highway")
        if tuple(h.shape[1:]) != tuple(x.shape[1:]):
            raise KcnnError(f"{where}: a highway stack must keep the shape of its input "
                            f"({tuple(x.shape)} → {tuple(h.shape)}); put width changes "
                            f"outside it")
        bias = entry.get("gate_bias", -1.0)
        init = keras.initializers.Constant(float(bias))
        if len(x.shape) == 4:
            k = entry.get("gate_kernel_size", 3)
            gate = keras.layers.Conv2D(x.shape[-1], k, padding="same", activation="sigmoid",
                                       bias_initializer=init, name=f"{name}_gate")(x)
        else:
            gate = keras.layers.Dense(x.shape[-1], activation="sigmoid", bias_initializer=init,
                                      name=f"{name}_gate")(x)
        change = keras.layers.Subtract(name=f"{name}_transform_minus_input")([h, x])
        gated = keras.layers.Multiply(name=f"{name}_gated")([gate, change])
        return keras.layers.Add(name=f"{name}_out")([x, gated])


def _finish(x, num_classes, head, dropout):
    import keras

    rank = len(x.shape)
    if rank == 2 and x.shape[-1] == num_classes:
        if x.dtype != "float32":
            x = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
        return x
    if rank == 4 and x.shape[-1] == num_classes:
        return keras.layers.GlobalAveragePooling2D(name="logits", dtype="float32")(x)
    if rank == 4:
        return classifier_head(x, num_classes, head, fc_units=(), dropout=dropout)
    if rank == 2:
        if dropout:
            x = keras.layers.Dropout(dropout, name="head_dropout")(x)
        return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    raise KcnnError(f"model.layers: the last layer's output {tuple(x.shape)} cannot become "
                    f"class scores (expected a feature map or a flat vector)")


@MODELS.register("layers")
def layers(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    layers: Sequence[Any] = (),
    dropout: float = 0.0,
    batch_norm: bool = False,
    pooling: str = "max",
    head: str = "gap",
    preprocessing=(),
):
    """A model written as a list of layers in the recipe (see the module docstring)."""
    import keras

    check_common(pooling, head, dropout)
    check_spec(list(layers) if isinstance(layers, (list, tuple)) else layers)
    inputs, x = model_inputs(input_shape, preprocessing)
    x = _Builder(pooling, batch_norm).stack(list(layers), x, "model.layers")
    return keras.Model(inputs, _finish(x, num_classes, head, dropout), name="layers")


layers.check_kwargs = check_kwargs
