"""TFLite conversion per quantization mode, and the verification report every export gets.

Modes (registry ``QUANTIZE_MODES``):

* ``none``      float32.
* ``dynamic``   dynamic-range: int8 weights, float activations.
* ``float16``   float16 weights.
* ``int8``      full-integer with a representative data set (class-balanced training
                samples). Ops without integer kernels stay float between QUANTIZE and
                DEQUANTIZE ops, with a warning naming their layers (``strict`` fails instead).
                ``int8_io`` makes the model's input and output int8 too.
* ``int16x8``   16-bit activations, 8-bit weights.

The conversion goes through a SavedModel written by Keras (``model.export``),
which is what the TFLite converter reads most reliably for Keras 3 models.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from kcnn.errors import KcnnError
from kcnn.quiet import native_stderr_muted
from kcnn.registry import Registry

QUANTIZE_MODES: Registry[Callable[..., None]] = Registry("quantization mode")
FLOAT_MODES = ("none", "dynamic", "float16")


def balanced_calibration(x, y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` training images taken round-robin over the classes (rare classes get calibrated
    too). ``x`` is an image array or a data split (only the chosen images are read)."""
    if n < 1:
        raise KcnnError(f"--calibration: must be >= 1 (got {n})")
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(y == c)).tolist() for c in np.unique(y)]
    picked: list[int] = []
    while len(picked) < min(n, len(y)):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(pool.pop())
    idx = np.asarray(picked, dtype=np.int64)
    return x.images(idx) if hasattr(x, "images") else x[idx]


def _representative(samples: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def gen():
        for s in samples:
            yield [np.asarray(s, dtype="float32")[None]]

    return gen


@QUANTIZE_MODES.register("none")
def _none(converter, tf, samples, int8_io):
    pass


@QUANTIZE_MODES.register("dynamic")
def _dynamic(converter, tf, samples, int8_io):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


@QUANTIZE_MODES.register("float16")
def _float16(converter, tf, samples, int8_io):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


@QUANTIZE_MODES.register("int8")
def _int8(converter, tf, samples, int8_io):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(samples)
    # Integer kernels first; float builtins only for ops that have no integer kernel.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8


@QUANTIZE_MODES.register("int16x8")
def _int16x8(converter, tf, samples, int8_io):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(samples)
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]


def require_tensorflow_backend() -> None:
    from kcnn.backend import require_tensorflow

    require_tensorflow("export")


def convert(model, mode: str, calibration: np.ndarray | None = None, int8_io: bool = False,
            float_layers: Sequence[str] = ()) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer in ``mode``. Builtin ops only (no Flex).

    ``float_layers`` (int8 only): names of Keras layers whose TFLite ops stay in float
    (see :class:`SelectiveQuantizer`). On another Keras backend the conversion runs in a
    TensorFlow child process (:func:`kcnn.backend.convert_in_tensorflow`)."""
    from kcnn import backend

    if not backend.is_tensorflow():
        return backend.convert_in_tensorflow(model, mode, calibration, int8_io, float_layers)
    import tensorflow as tf

    configure = QUANTIZE_MODES.get(mode)
    if mode in ("int8", "int16x8") and (calibration is None or len(calibration) == 0):
        raise KcnnError(f"{mode} export needs calibration samples (--calibration N, N >= 1)")
    if int8_io and mode != "int8":
        raise KcnnError(f"--int8-io applies to --quantize int8 only (got {mode!r})")
    if float_layers:
        check_float_layers(mode, int8_io)
        return SelectiveQuantizer(model, calibration).quantize(float_layers)[0]
    with tempfile.TemporaryDirectory(prefix="kcnn-export-") as tmp:
        model.export(f"{tmp}/saved_model", format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(f"{tmp}/saved_model")
        configure(converter, tf, calibration, int8_io)
        with native_stderr_muted():  # the converter's own settings and MLIR log lines
            try:
                return converter.convert()
            except Exception as err:
                text = str(err)
                hint = " (it would need Flex/SELECT_TF_OPS, which kcnn does not allow)" if "Flex" in text or "not supported" in text else ""
                first = next((line for line in text.splitlines() if "error" in line.lower()), text[:300])
                raise KcnnError(f"TFLite conversion ({mode}) failed{hint}: {first.strip()}") from None


def float_fallback(ops: list[dict[str, Any]], layer_names: list[str]) -> tuple[list[str], list[str]]:
    """In an integer model: (op types, layer names) of ops that still compute in float."""
    fallback_ops, layers = [], []
    for op in ops:
        if op["op"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if any(d in ("float32", "float16") for d in op["output_dtypes"]):
            fallback_ops.append(op["op"])
            for name in op["outputs"]:
                layer = _layer_of(name, layer_names)
                if layer and layer not in layers:
                    layers.append(layer)
    return sorted(set(fallback_ops)), layers


def _layer_of(tensor_name: str, layer_names: list[str]) -> str | None:
    """The Keras layer a TFLite tensor came from, by its name scope (``model/conv_1/Op``:
    Keras may add a ``_N`` suffix when a name was used before in the session)."""
    parts = {re.sub(r"_\d+$", "", p) for p in tensor_name.replace(";", "/").split("/")}
    parts |= set(tensor_name.replace(";", "/").split("/"))
    best = [n for n in layer_names if n in parts]
    return max(best, key=len) if best else None


# ----------------------------------------------------------------------------- float layers
def check_float_layers(mode: str, int8_io: bool) -> None:
    """``--float-layers`` works on full-integer int8 models with float input and output."""
    if mode != "int8":
        raise KcnnError(f"--float-layers applies to --quantize int8 only (got {mode!r}): the "
                        f"TFLite quantizer's node denylist is an int8 feature")
    if int8_io:
        raise KcnnError("--float-layers cannot be combined with --int8-io")


def match_layers(pattern: str, layer_names: Sequence[str]) -> list[str]:
    """The layers whose whole name matches the regular expression ``pattern``
    (``re.fullmatch``, as ``kcnn compress cluster --layers``: ``conv2_1``, ``conv2_.*``);
    a one-line error when the pattern is invalid or matches nothing."""
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise KcnnError(f"--float-layers: bad regular expression {pattern!r} ({err})") from None
    matched = [name for name in layer_names if regex.fullmatch(name)]
    if not matched:
        shown = ", ".join(layer_names[:30]) + (", …" if len(layer_names) > 30 else "")
        raise KcnnError(f"--float-layers: {pattern!r} matches no layer of the model "
                        f"(layers: {shown})")
    return matched


def layers_of(tensor_name: str, layer_names: Sequence[str]) -> list[str]:
    """Every Keras layer whose name scope appears in a TFLite tensor name, in
    ``layer_names`` order: a fused op (conv + batch norm + ReLU) names each TensorFlow op
    it absorbed, separated by ``;``."""
    parts = set(tensor_name.replace(";", "/").split("/"))
    parts |= {re.sub(r"_\d+$", "", p) for p in parts}
    return [name for name in layer_names if name in parts]


class SelectiveQuantizer:
    """int8 conversion that can leave chosen layers in float.

    The converter has no option for this; TFLite's public quantization debugger does:
    ``tf.lite.experimental.QuantizationDebugger`` calibrates the model once (the same
    calibration as :func:`convert`, ``_experimental_calibrate_only``) and
    ``QuantizationDebugOptions(denylisted_nodes=...)`` re-runs the MLIR quantizer with
    the named ops (by output tensor name) left in float, between DEQUANTIZE and
    QUANTIZE ops. One calibration serves any number of denylists (``kcnn export
    --report`` tries several)."""

    def __init__(self, model, calibration: np.ndarray):
        require_tensorflow_backend()
        import tensorflow as tf

        self.layer_names = [layer.name for layer in model.layers]
        self.output_layer = model.outputs[0]._keras_history.operation.name
        with tempfile.TemporaryDirectory(prefix="kcnn-export-") as tmp:
            model.export(f"{tmp}/saved_model", format="tf_saved_model", verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(f"{tmp}/saved_model")
            QUANTIZE_MODES.get("int8")(converter, tf, calibration, False)
            try:
                with native_stderr_muted(), warnings.catch_warnings():
                    # it runs its debug model on the deprecated tf.lite.Interpreter
                    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
                    self.debugger = tf.lite.experimental.QuantizationDebugger(
                        converter=converter, debug_dataset=_representative(calibration[:1]))
            except Exception as err:
                raise KcnnError(f"TFLite calibration (int8, --float-layers) failed: "
                                f"{str(err).splitlines()[0][:300]}") from None
        self.nodes = self._nodes(self.debugger.calibrated_model)

    def _nodes(self, content: bytes) -> list[tuple[str, list[str]]]:
        """(output tensor name, Keras layers it computes) of every op of the calibrated
        model; the op producing the model's output (a tensor named after the signature,
        not a layer) computes the output layer."""
        from ai_edge_litert.interpreter import Interpreter

        with native_stderr_muted():
            interpreter = Interpreter(model_content=content)
        names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
        outputs = {d["index"] for d in interpreter.get_output_details()}
        nodes = []
        for op in interpreter._get_ops_details():  # no public API lists ops
            for index in op["outputs"]:
                if index in names:
                    layers = layers_of(names[index], self.layer_names)
                    if index in outputs and self.output_layer not in layers:
                        layers.append(self.output_layer)
                    nodes.append((names[index], layers))
        return nodes

    def quantize(self, float_layers: Sequence[str] = ()) -> tuple[bytes, list[str]]:
        """(the int8 model with the ops computing ``float_layers`` in float, those ops'
        output tensor names)."""
        import tensorflow as tf

        wanted = set(float_layers)
        nodes = [name for name, layers in self.nodes if wanted & set(layers)]
        if wanted and not nodes:
            raise KcnnError(f"--float-layers: no TFLite op computes {', '.join(sorted(wanted))} "
                            f"(folded into another op, or not a computing layer)")
        with native_stderr_muted(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            self.debugger.options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=nodes or None)
            return self.debugger.get_nondebug_quantized_model(), nodes


def convert_with_float_layers(model, mode: str, calibration: np.ndarray, *, int8_io: bool = False,
                              float_layers: str | None = None, quantizer: bool = False
                              ) -> tuple[bytes, SelectiveQuantizer | None, list[str]]:
    """:func:`convert`, with the layers matching the regular expression ``float_layers``
    kept in float. Returns ``(content, the SelectiveQuantizer used or made (``quantizer``:
    make one for int8 even without float layers), every layer the float ops compute)``."""
    names = [layer.name for layer in model.layers]
    wanted = match_layers(float_layers, names) if float_layers else []
    if wanted:
        check_float_layers(mode, int8_io)
    selective = SelectiveQuantizer(model, calibration) if wanted or (
        quantizer and mode == "int8") else None
    if not wanted:
        return convert(model, mode, calibration, int8_io=int8_io), selective, []
    content, nodes = selective.quantize(wanted)
    floated = [layers for node, layers in selective.nodes if node in set(nodes)]
    kept = [name for name in names if any(name in layers for layers in floated)]
    return content, selective, kept


def exclude_requested_float(report: dict[str, Any], kept: Sequence[str]) -> None:
    """Layers kept in float on request are not a float fallback: take them out of
    ``report``'s ``float_fallback_*`` (and record them as ``float_layers``)."""
    if not kept:
        return
    report["float_layers"] = list(kept)
    report["float_fallback_layers"] = [n for n in report["float_fallback_layers"] if n not in kept]
    if not report["float_fallback_layers"]:
        report["float_fallback_ops"] = []
