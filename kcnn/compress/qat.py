"""``kcnn compress qat``: quantization-aware training for TFLite int8.

No maintained Keras 3 library does quantization-aware training of convolutions (the
TensorFlow Model Optimization Toolkit is Keras 2 only; Keras 3's ``Model.quantize``
skips convolutions), so kcnn builds the fake-quantized model itself
(:mod:`kcnn.layers.fake_quant`), shaped like the int8 model the TFLite converter makes:

1. **Fold BatchNormalization** into the Conv2D / DepthwiseConv2D / Dense before it
   (``w' = w · γ/√(σ² + ε)`` per output channel, ``b' = (b − μ) · γ/√(σ² + ε) + β``), as
   the converter does before it quantizes: the folded weights are the ones int8 rounds.
2. **Fake-quantize weights** per output channel, symmetric, ``[-127, 127]``.
3. **Fake-quantize activations** where the int8 model has quantized tensors: the model
   input and the output of every op that computes new values, i.e. each
   conv/dense after the ReLU/ReLU6 TFLite fuses into it, additions, global average
   pooling, rescaling, unfolded batch norm… but not after ops that keep their input's
   scale (max/average pooling, reshape, padding, dropout). Ranges: moving averages of
   the batch extremes during fine-tuning.
4. **Fine-tune** with the engine's fit loop (:func:`kcnn.compress.common.finetune`),
   undone only when it lowered the fake-quant validation accuracy by more than a point.
5. **A plain model**: the folded layers with their weights snapped to the int8 grid
   (the exporter's per-channel ``max|w|/127`` scale then reproduces that grid exactly),
   no fake-quant layers. The activation ranges are set, for the reported fake-quant
   accuracy, exactly as ``kcnn export --quantize int8`` calibrates them: global min/max
   over the same class-balanced calibration images.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kcnn.compress import common
from kcnn.errors import KcnnError

# Ops TFLite fuses a following ReLU / ReLU6 into (their output tensor is the activation's).
FUSING = ("Conv2D", "DepthwiseConv2D", "Dense", "Add", "Subtract", "Multiply")
# Layers whose int8 TFLite op keeps its input's scale and zero point: no new quantized range.
SAME_SCALE = frozenset({
    "InputLayer", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
    "AveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Flatten", "Reshape",
    "Permute", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
    "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "UpSampling1D",
    "UpSampling2D",
})


def default_lr(recipe) -> float:
    """QAT fine-tuning peak learning rate: a tenth of the recipe's (the weights are
    trained already; quantization noise wants small steps)."""
    return recipe.train.optimizer.lr / 10.0


def check_options(epochs: int, lr: float | None, momentum: float) -> None:
    """One line per bad option, before anything heavy is loaded."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise KcnnError(f"--epochs: must be >= 0 (got {epochs})")
    if lr is not None and not lr > 0:
        raise KcnnError(f"--lr: must be > 0 (got {lr})")
    if not 0 <= momentum < 1:
        raise KcnnError(f"--momentum: must be in [0, 1) (got {momentum})")


# ----------------------------------------------------------------------------- graph rewriting
def _consumers(model) -> dict[str, list[Any]]:
    """Layer name → the layers of ``model`` that take its output."""
    names = {layer.name for layer in model.layers}
    out: dict[str, list[Any]] = {layer.name: [] for layer in model.layers}
    for layer in model.layers:
        for node in layer._outbound_nodes:
            if node.operation.name in names:
                out[layer.name].append(node.operation)
    return out


def _linear(layer) -> bool:
    return layer.get_config().get("activation", "linear") == "linear"


def _fusable_activation(layer) -> bool:
    """A ReLU or ReLU6 that TFLite fuses into the op before it."""
    kind = type(layer).__name__
    if kind == "ReLU":
        cfg = layer.get_config()
        return (cfg.get("max_value") in (None, 6, 6.0) and not cfg.get("negative_slope")
                and not cfg.get("threshold"))
    if kind == "Activation":
        return layer.get_config().get("activation") in ("relu", "relu6")
    return False


def _bn_to_fold(layer, consumers) -> Any:
    """The BatchNormalization layer ``layer`` feeds alone, when it can be folded into it."""
    import keras

    if type(layer) not in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                           keras.layers.Dense) or not _linear(layer):
        return None
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    nxt = consumers[layer.name]
    if len(nxt) != 1 or len(layer._inbound_nodes) != 1:
        return None
    bn = nxt[0]
    if not isinstance(bn, keras.layers.BatchNormalization) or len(bn._inbound_nodes) != 1:
        return None
    rank = len(layer.output.shape)
    axis = bn.axis[0] if isinstance(bn.axis, (list, tuple)) and len(bn.axis) == 1 else bn.axis
    return bn if isinstance(axis, int) and axis % rank == rank - 1 else None


def folded_weights(layer, bn) -> list[np.ndarray]:
    """``layer``'s kernel and bias with ``bn`` (inference statistics) folded in."""
    import keras

    def value(v, default):
        return default if v is None else keras.ops.convert_to_numpy(v).astype("float64")

    weights = layer.get_weights()
    kernel = weights[0].astype("float64")
    bias = weights[1].astype("float64") if layer.use_bias else 0.0
    gamma = value(bn.gamma if bn.scale else None, 1.0)
    beta = value(bn.beta if bn.center else None, 0.0)
    mean, var = value(bn.moving_mean, 0.0), value(bn.moving_variance, 1.0)
    factor = gamma / np.sqrt(var + bn.epsilon)
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (kh, kw, in, multiplier)
        kernel = kernel * np.reshape(factor, kernel.shape[2:])
    else:
        kernel = kernel * factor
    return [kernel.astype("float32"), ((bias - mean) * factor + beta).astype("float32")]


def _rewrite(model, make_layer, *, skip=frozenset(), quantize_after=frozenset(),
             quantize_inputs: bool = False, momentum: float = 0.99):
    """``model`` rebuilt with ``make_layer(layer)`` per layer, the ``skip`` layers left out
    (their input passes on), and a :class:`~kcnn.layers.fake_quant.FakeQuant` after the
    model inputs (``quantize_inputs``) and after each layer in ``quantize_after``."""
    import keras

    from kcnn.layers.fake_quant import FakeQuant

    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name), model.input)
    input_ids = {id(t) for t in keras.tree.flatten(inputs)}
    quantized: dict[int, Any] = {}

    def quantize_input(t):
        if id(t) not in input_ids:
            return t
        if id(t) not in quantized:
            quantized[id(t)] = FakeQuant(momentum, name=f"{t.name}_fq")(t)
        return quantized[id(t)]

    def call(layer, *args, **kwargs):
        if layer.name in skip:
            return args[0]
        if quantize_inputs:
            args, kwargs = keras.tree.map_structure(quantize_input, (args, kwargs))
        out = layer(*args, **kwargs)
        if layer.name in quantize_after:
            out = FakeQuant(momentum, name=f"{layer.name}_fq")(out)
        return out

    return keras.models.clone_model(model, input_tensors=inputs, clone_function=make_layer,
                                    call_function=call)


def fold_batchnorm(model) -> tuple[Any, dict[str, str]]:
    """A copy of ``model`` with every BatchNormalization that directly follows a linear
    Conv2D / DepthwiseConv2D / Dense (its only consumer) folded into that layer's kernel
    and bias. Returns ``(model, {layer: folded batch-norm layer})``; the outputs are the
    same up to float rounding (inference mode)."""
    consumers = _consumers(model)
    folds = {layer.name: bn for layer in model.layers
             if (bn := _bn_to_fold(layer, consumers)) is not None}

    def make(layer):
        cfg = layer.get_config()
        if layer.name in folds:
            cfg = {**cfg, "use_bias": True, "bias_initializer": "zeros"}
        return layer.__class__.from_config(cfg)

    skip = {bn.name for bn in folds.values()}
    new = _rewrite(model, make, skip=skip)
    for layer in model.layers:
        if layer.name in skip or not layer.weights:
            continue
        weights = folded_weights(layer, folds[layer.name]) if layer.name in folds else (
            layer.get_weights())
        new.get_layer(layer.name).set_weights(weights)
    return new, {name: bn.name for name, bn in folds.items()}


def quantization_points(model) -> list[str]:
    """The layers after which the int8 TFLite model has a quantized tensor of its own
    (see the module docstring): all but same-scale layers, and a fusing op whose only
    consumer is a ReLU/ReLU6 hands its point on to the activation."""
    consumers = _consumers(model)
    points = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in SAME_SCALE:
            continue
        nxt = consumers[layer.name]
        if (kind in FUSING and _linear(layer) and len(nxt) == 1 and _fusable_activation(nxt[0])
                and len(nxt[0]._inbound_nodes) == 1):
            continue
        points.append(layer.name)
    return points


# ----------------------------------------------------------------------------- QAT layers
@functools.cache
def qat_classes() -> dict[type, type]:
    """Plain Keras layer class → its subclass that fake-quantizes the kernel in ``call``
    (per output channel: the last kernel axis; for depthwise kernels ``(kh, kw, in, m)``
    each (in, m) pair). Training-time only: the saved model uses the plain classes."""
    import keras
    from keras import ops

    from kcnn.layers.fake_quant import fake_quant_weights

    class QATConv2D(keras.layers.Conv2D):
        keep_axes = (-1,)

        def convolution_op(self, inputs, kernel):
            return super().convolution_op(inputs, fake_quant_weights(kernel, self.keep_axes))

    class QATDepthwiseConv2D(keras.layers.DepthwiseConv2D):
        keep_axes = (2, 3)

        def call(self, inputs):
            outputs = ops.depthwise_conv(
                inputs, fake_quant_weights(self.kernel, self.keep_axes), strides=self.strides,
                padding=self.padding, dilation_rate=self.dilation_rate,
                data_format=self.data_format)
            if self.use_bias:
                outputs = ops.add(outputs, ops.reshape(self.bias, (1,) * (self.rank + 1) + (-1,)))
            return self.activation(outputs) if self.activation is not None else outputs

    class QATDense(keras.layers.Dense):
        keep_axes = (-1,)

        def call(self, inputs, training=None):
            x = ops.matmul(inputs, fake_quant_weights(self.kernel, self.keep_axes))
            if self.bias is not None:
                x = ops.add(x, self.bias)
            return self.activation(x) if self.activation is not None else x

    return {keras.layers.Conv2D: QATConv2D, keras.layers.DepthwiseConv2D: QATDepthwiseConv2D,
            keras.layers.Dense: QATDense}


def _weight_quantizable(layer) -> bool:
    if type(layer) not in qat_classes():
        return False
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return False
    return len(layer.kernel.shape) in (2, 4)


def qat_model(folded, momentum: float = 0.99):
    """The fake-quantized training model of a (batch-norm folded) model: QAT layer classes
    for Conv2D / DepthwiseConv2D / Dense, a FakeQuant after the input and after every
    :func:`quantization_points` layer. Same layer names, same weights."""
    points = set(quantization_points(folded))
    classes = qat_classes()

    def make(layer):
        cls = classes[type(layer)] if _weight_quantizable(layer) else layer.__class__
        return cls.from_config(layer.get_config())

    model = _rewrite(folded, make, quantize_after=points, quantize_inputs=True,
                     momentum=momentum)
    for layer in folded.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    return model


def fake_quant_layers(model) -> list[Any]:
    from kcnn.layers.fake_quant import FakeQuant

    return [layer for layer in model.layers if isinstance(layer, FakeQuant)]


def observe_ranges(model, images: np.ndarray, batch_size: int = 64) -> None:
    """Set every FakeQuant range to the global min/max of its tensor over ``images`` with
    activations unquantized: what the TFLite calibrator records for the int8 model."""
    layers = fake_quant_layers(model)
    for layer in layers:
        layer.observe(True)
    try:
        for i in range(0, len(images), batch_size):
            model(np.asarray(images[i: i + batch_size], dtype="float32"), training=False)
    finally:
        for layer in layers:
            layer.observe(False)


def plain_model(qat, folded):
    """``folded``'s architecture with ``qat``'s weights, kernels snapped to the int8 grid."""
    import keras

    from kcnn.layers.fake_quant import quantize_weights_per_channel

    plain = keras.models.clone_model(folded)
    for layer in plain.layers:
        if not layer.weights:
            continue
        source = qat.get_layer(layer.name)
        weights = source.get_weights()
        keep = getattr(source, "keep_axes", None)
        if keep is not None:
            weights[0] = keras.ops.convert_to_numpy(quantize_weights_per_channel(weights[0], keep))
        layer.set_weights(weights)
    return plain


# ----------------------------------------------------------------------------- the command
def int8_accuracy(model, samples: np.ndarray, part, batch_size: int = 64) -> float:
    """Accuracy on ``part`` of ``model`` converted as ``kcnn export --quantize int8`` does."""
    from kcnn.export.runtime import TFLiteModel
    from kcnn.export.tflite import convert

    pred = TFLiteModel(convert(model, "int8", samples)).predict(part, batch_size).argmax(-1)
    return float(np.mean(pred == np.asarray(part.y)))


def accuracy(model, source, split: str | None = None) -> float:
    """Keras accuracy of ``model`` on a split of the source run's data (default: the
    recipe's evaluation split)."""
    from kcnn.engine.evaluate import predict_logits

    part = source.data.split(split or source.recipe.evaluate.split)
    logits = predict_logits(model, part, source.recipe.train.batch_size)
    return float(np.mean(logits.argmax(-1) == np.asarray(part.y)))


REVERT_MARGIN = 0.01  # validation accuracy the fine-tuned model may lose before QAT is undone


def _val_accuracy(qat, source, weights, samples) -> float:
    """Validation accuracy of the fake-quant model with ``weights`` and the exporter's
    calibrated activation ranges."""
    qat.set_weights(weights)
    observe_ranges(qat, samples)
    return accuracy(qat, source, "val")


def _quantization_aware_finetune(qat, source, samples, epochs, lr, verbose, log):
    """Ranges from the calibration images, then fine-tuning. The fine-tuned model is kept
    unless its fake-quant validation accuracy (exporter's ranges) fell more than
    :data:`REVERT_MARGIN` below the start's: a small validation split moves by whole
    images, so "best epoch" selection would mostly pick noise.
    Returns ``(history rows, {accuracy before, validation start/end, kept epoch})``."""
    observe_ranges(qat, samples)
    detail: dict[str, Any] = {"fake_quant_before_finetuning": accuracy(qat, source)}
    log(f"fake-quantized model (BN folded, calibrated ranges): accuracy "
        f"{detail['fake_quant_before_finetuning']:.4f}")
    initial = qat.get_weights()
    history = common.finetune(qat, source, epochs, lr=lr, verbose=verbose)
    detail["kept_epoch"] = len(history)
    if history and len(source.data.val):
        final = qat.get_weights()
        detail["val_fake_quant_start"] = _val_accuracy(qat, source, initial, samples)
        detail["val_fake_quant_end"] = _val_accuracy(qat, source, final, samples)
        if detail["val_fake_quant_end"] < detail["val_fake_quant_start"] - REVERT_MARGIN:
            log(f"fine-tuning lowered the validation accuracy "
                f"({detail['val_fake_quant_start']:.4f} → {detail['val_fake_quant_end']:.4f}); "
                f"keeping the model from before it")
            detail["kept_epoch"] = 0
        else:
            qat.set_weights(final)
    return history, detail


def qat_run(run_dir: str | Path, *, epochs: int = 3, lr: float | None = None,
            momentum: float = 0.99, out: str | Path | None = None, runs_root: str | Path = "runs",
            tflite: bool = True, latency_runs: int = 100, verbose: int | None = None,
            log=None) -> tuple[Path, dict[str, Any]]:
    """Quantization-aware fine-tuning of a trained run into a new run dir; returns
    ``(run_dir, compress.json content)``. ``compress.json`` ``accuracy`` holds the four
    numbers: float (source, Keras), fake_quant (Keras, export ranges), ptq_int8_tflite
    (source converted) and qat_int8_tflite (the new run converted)."""
    from kcnn.export.tflite import balanced_calibration

    log = log or (lambda msg: print(msg, file=sys.stderr))
    check_options(epochs, lr, momentum)
    source, before = common.open_and_measure(run_dir, out, tflite=tflite,
                                             latency_runs=latency_runs, log=log)
    recipe, data = source.recipe, source.data
    part = data.split(recipe.evaluate.split)
    lr = default_lr(recipe) if lr is None else lr
    samples = balanced_calibration(data.train, data.sampler_labels, recipe.export.calibration,
                                   recipe.seed)
    ptq = int8_accuracy(source.model, samples, part)
    log(f"float accuracy {before['accuracy']:.4f}; post-training int8 TFLite {ptq:.4f}")
    folded, folds = fold_batchnorm(source.model)
    qat = qat_model(folded, momentum)
    history, detail = _quantization_aware_finetune(qat, source, samples, epochs, lr, verbose,
                                                   log)
    observe_ranges(qat, samples)  # the ranges the exporter's calibration will find
    fake_quant = accuracy(qat, source)
    model = plain_model(qat, folded)
    qat_int8 = int8_accuracy(model, samples, part)
    log(f"after {len(history)} QAT epochs: fake-quant {fake_quant:.4f}, "
        f"int8 TFLite {qat_int8:.4f}")
    after = common.measure(model, source, tflite=tflite, latency_runs=latency_runs)
    before["int8_tflite_accuracy"], after["int8_tflite_accuracy"] = ptq, qat_int8
    settings = {"epochs": epochs, "lr": lr, "range_momentum": momentum,
                "calibration_samples": int(len(samples)), "weights": "int8 per channel [-127, 127]",
                "activations": "int8 per tensor [-128, 127], moving-average ranges"}
    info = common.base_info("qat", source, settings)
    info.update({
        "accuracy": {"float": before["accuracy"], "fake_quant": fake_quant,
                     "ptq_int8_tflite": ptq, "qat_int8_tflite": qat_int8},
        "finetuning": detail,
        "folded_batchnorm": folds, "quantized_activations": quantization_points(folded),
        "before": before, "after": after, "ratios": common.ratios(before, after),
        "epochs": len(history),
    })
    out = Path(out) if out is not None else common.default_out(recipe.name, "qat", runs_root)
    path = common.write_run(out, source, model, info=info, history=history)
    return path, info


def format_accuracies(info: dict[str, Any]) -> str:
    """The four accuracies of a QAT run as a markdown table."""
    acc = info["accuracy"]
    rows = [("float (Keras, source)", acc["float"]),
            ("fake-quant (Keras, new run)", acc["fake_quant"]),
            ("int8 TFLite, post-training (source)", acc["ptq_int8_tflite"]),
            ("int8 TFLite, QAT (new run)", acc["qat_int8_tflite"])]
    lines = ["| accuracy | value | vs float |", "|---|---|---|"]
    for label, value in rows:
        lines.append(f"| {label} | {value:.4f} | {100 * (value - acc['float']):+.2f} points |")
    return "\n".join(lines)
