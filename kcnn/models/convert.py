"""Fully connected layers as convolutions (``kcnn convert --fully-convolutional``).

A fully connected layer over an h×w×c map is an h×w convolution with
``units`` filters and ``valid`` padding: ``Flatten`` orders the map
row-major (height, width, channel), so the Dense kernel of shape
``(h·w·c, units)`` reshaped to ``(h, w, c, units)`` is the convolution's
kernel. Every later fully connected layer is a 1×1 convolution with the
kernel reshaped to ``(1, 1, in, out)``. No weight is retrained: at the
training size the converted model computes exactly the original's scores
(as a 1×1 map), and on a larger image it slides the whole classifier over
the image in one pass, returning a map of class scores (the dense evaluation
of OverFeat and VGG).
"""

from __future__ import annotations

from pathlib import Path

from kcnn.errors import KcnnError

# Layers that act on the last axis only, so they work unchanged on a map of
# class-score vectors.
_PER_POSITION = ("Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Dropout",
                 "BatchNormalization", "LayerNormalization", "GaussianNoise", "GaussianDropout",
                 "AlphaDropout")


def _chain_after(model, layer):
    """The layers that follow ``layer`` up to the output, which must be a single chain."""
    chain = []
    current = layer
    outputs = {id(t) for t in model.outputs}
    while True:
        out = current.output
        if id(out) in outputs:
            return chain
        users = [node.operation for node in current._outbound_nodes
                 if node.operation in model.layers]
        if len(users) != 1:
            raise KcnnError(f"layer {current.name!r}: the head after Flatten must be a single "
                            f"chain of layers (found {len(users)} branches)")
        current = users[0]
        chain.append(current)


def _clone(layer, **changes):
    config = layer.get_config()
    config.update(changes)
    return type(layer).from_config(config)


def fully_convolutional(model):
    """A model with ``Flatten → Dense…`` written as ``h×w conv → 1×1 conv…``.

    The converted model takes images of any size ``(None, None, C)`` and
    returns a score map ``(batch, H', W', classes)``; at the training size
    ``H' = W' = 1`` and the scores equal the original model's.
    """
    import keras

    flattens = [layer for layer in model.layers if isinstance(layer, keras.layers.Flatten)]
    if not flattens:
        raise KcnnError(f"model {model.name!r} has no Flatten → Dense head to convert (a "
                        f"'gap' or 'conv' head is already fully convolutional; 'pool_fc' "
                        f"pools any map size before its FC layer)")
    if len(flattens) > 1:
        raise KcnnError(f"model {model.name!r} has {len(flattens)} Flatten layers; expected one")
    flatten = flattens[0]
    feature = flatten.input
    if len(feature.shape) != 4 or any(d is None for d in feature.shape[1:]):
        raise KcnnError(f"layer {flatten.name!r}: expected a fixed-size h×w×c map before "
                        f"Flatten (got {tuple(feature.shape)})")
    if getattr(flatten, "data_format", "channels_last") == "channels_first":
        raise KcnnError("channels_first models are not supported")
    h, w, c = feature.shape[1:]
    head = _chain_after(model, flatten)
    if not any(isinstance(layer, keras.layers.Dense) for layer in head):
        raise KcnnError(f"model {model.name!r}: no Dense layer after Flatten")

    # The body (everything before Flatten), re-created for inputs of any size.
    if len(model.inputs) != 1:
        raise KcnnError(f"model {model.name!r} has {len(model.inputs)} inputs; expected one image")
    body = keras.Model(model.inputs[0], feature)
    channels = model.inputs[0].shape[-1]
    inputs = keras.Input(shape=(None, None, channels), name=model.inputs[0].name)
    new_body = keras.models.clone_model(body, input_tensors=inputs)
    new_body.set_weights(body.get_weights())
    x = new_body.outputs[0]

    kernel_hw = (h, w)
    for layer in head:
        name = type(layer).__name__
        if isinstance(layer, keras.layers.Dense):
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            units = kernel.shape[-1]
            conv = keras.layers.Conv2D(
                units, kernel_hw, padding="valid", activation=layer.activation,
                use_bias=layer.use_bias, dtype=layer.dtype_policy, name=layer.name,
            )
            conv.build((None, None, None, kernel.shape[0] // (kernel_hw[0] * kernel_hw[1])))
            weights = [kernel.reshape(conv.kernel.shape)]
            if layer.use_bias:
                weights.append(keras.ops.convert_to_numpy(layer.bias))
            conv.set_weights(weights)
            x = conv(x)
            kernel_hw = (1, 1)
        elif name in _PER_POSITION:
            clone = _clone(layer)
            x = clone(x)
            clone.set_weights(layer.get_weights())
        else:
            raise KcnnError(f"layer {layer.name!r} ({name}) in the head cannot be converted "
                            f"to a convolution")
    if kernel_hw != (1, 1):  # pragma: no cover - guarded above
        raise KcnnError("no Dense layer converted")
    return keras.Model(inputs, x, name=f"{model.name}_fcn")


def convert_run(target: str | Path, out: str | Path | None = None, force: bool = False) -> Path:
    """Convert a run's ``model.keras`` (or a ``.keras`` file); write ``model_fcn.keras``."""
    from kcnn.io import atomic_path
    from kcnn.saving import resolve

    ref = resolve(target, kinds=("run", "keras"))
    default = ref.model_path.with_name(f"{ref.model_path.stem}_fcn.keras")
    path = Path(out) if out else default
    if path.suffix != ".keras":
        raise KcnnError(f"--out: the file name must end in .keras (got {path})")
    if path.exists() and not force:
        raise KcnnError(f"{path}: already exists; pass --force to replace it")
    converted = fully_convolutional(ref.load_model())
    with atomic_path(path) as tmp:
        converted.save(tmp)
    return path
