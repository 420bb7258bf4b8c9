"""``kcnn export --report``: where an integer TFLite model loses accuracy, layer by layer.

Every quantized op's output tensor (kept by the interpreter with
``experimental_preserve_all_tensors``) is dequantized and compared with the float Keras
model's matching layer output on a few hundred test images:

* **SNR** in dB, ``10 log10(Σ f² / Σ (q − f)²)`` over every element of every image
  (the error accumulated from the input up to this tensor; capped at ±120 dB);
* **cosine** similarity of the flattened tensors;
* **SNR drop**: the SNR of the nearest measured tensors the op reads minus its own: the
  error this layer *adds*, which names the layer that broke (a one-class int8 model
  usually has one layer whose range swallows its signal);
* for int8, the few worst layers by SNR drop are also converted once more with only
  that layer left in float (:class:`~kcnn.export.tflite.SelectiveQuantizer`), and the
  accuracy gained on the report images is recorded.

A TFLite op is matched to Keras layers by the name scopes in its output tensor's name
(a fused conv + batch norm + ReLU names all three; the float reference is the last of
them); the op producing the model output is matched to the output layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kcnn.errors import KcnnError
from kcnn.io import write_json

REPORT_IMAGES = 300
SNR_CAP_DB = 120.0
FLOAT_TRIALS = 3
SKIP_OPS = ("DEQUANTIZE",)
# Keras layers that become more than one TFLite op: only their last op's output is the
# layer's output (the converter may fold the last op into the next conv, e.g. a
# Normalization's division, leaving a SUB that must not be compared with the layer).
LAST_OPS = {"Normalization": ("MUL", "DIV"), "BatchNormalization": ("ADD",)}


def _is_last_op(layer, op_name: str) -> bool:
    kind = type(layer).__name__
    if kind == "Rescaling":
        return op_name == ("ADD" if layer.get_config().get("offset") else "MUL")
    return op_name in LAST_OPS.get(kind, (op_name,))


def check_report_options(mode: str | None, int8_io: bool, report: bool,
                         float_layers: str | None, all_modes: bool = False) -> None:
    """One line for ``--report`` / ``--float-layers`` with a mode they do not apply to."""
    from kcnn.export.tflite import check_float_layers

    if (report or float_layers) and all_modes:
        raise KcnnError("--report and --float-layers apply to one --quantize mode, not --all")
    if report and mode is not None and mode not in ("int8", "int16x8"):
        raise KcnnError(f"--report applies to --quantize int8 or int16x8 (got {mode!r})")
    if float_layers is not None and mode is not None:
        check_float_layers(mode, int8_io)


def report_images(part, seed: int, n: int = REPORT_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of a split (a fixed random subset, in split order) and their labels."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(part))[: min(n, len(part))])
    return np.asarray(part.images(idx), dtype="float32"), np.asarray(part.y)[idx]


# ----------------------------------------------------------------------------- matching
class _Graph:
    """The TFLite model's ops and tensors, with the Keras layer each output matches."""

    def __init__(self, content: bytes, model):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from kcnn.export.tflite import layers_of
        from kcnn.quiet import native_stderr_muted

        with native_stderr_muted():
            self.interpreter = Interpreter(
                model_content=content, experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            self.interpreter.allocate_tensors()
        self.tensors = {t["index"]: t for t in self.interpreter.get_tensor_details()}
        self.ops = self.interpreter._get_ops_details()  # no public API lists ops
        self.producer = {i: op for op in self.ops for i in op["outputs"]}
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        names = [layer.name for layer in model.layers]
        by_name = {layer.name: layer for layer in model.layers}
        shapes = {layer.name: _output_shape(layer) for layer in model.layers}
        output_layer = model.outputs[0]._keras_history.operation.name
        input_layer = model.inputs[0]._keras_history.operation.name
        self.entries: dict[str, dict[str, Any]] = {}  # reference layer → entry (last op wins)
        for op in self.ops:
            if op["op_name"] in SKIP_OPS:
                continue
            for index in op["outputs"]:
                tensor = self.tensors.get(index)
                if tensor is None:
                    continue
                layers = layers_of(tensor["name"], names)
                if op["op_name"] == "QUANTIZE" and op["inputs"][0] == self.input["index"]:
                    layers = [input_layer]
                elif self._feeds_output(index):
                    layers = [output_layer]
                if not layers or shapes.get(layers[-1]) != tuple(int(d) for d in tensor["shape"][1:]):
                    continue
                if len(layers) == 1 and layers[0] != input_layer and not _is_last_op(
                        by_name[layers[0]], op["op_name"]):  # (a fused op ends its layers)
                    continue
                self.entries[layers[-1]] = {
                    "layer": layers[-1], "layers": layers, "op": op["op_name"],
                    "dtype": np.dtype(tensor["dtype"]).name, "tensor": tensor["name"],
                    "index": index, "inputs": [int(i) for i in op["inputs"]],
                }
        self.input_layer = input_layer

    def _feeds_output(self, index: int) -> bool:
        if index == self.output["index"]:
            return True
        return any(op["op_name"] == "DEQUANTIZE" and index in op["inputs"]
                   and self.output["index"] in op["outputs"] for op in self.ops)

    def upstream(self, index: int, measured: dict[int, str], seen=None) -> set[str]:
        """The measured tensors nearest upstream of tensor ``index`` (through unmeasured ops)."""
        seen = set() if seen is None else seen
        if index in seen:
            return set()
        seen.add(index)
        op = self.producer.get(index)
        if op is None:
            return set()
        found: set[str] = set()
        for i in op["inputs"]:
            if i in measured:
                found.add(measured[i])
            elif i >= 0:
                found |= self.upstream(i, measured, seen)
        return found

    def run(self, x: np.ndarray) -> dict[int, np.ndarray]:
        """Float values of every entry's tensor (dequantized) for one batch ``x``."""
        interp = self.interpreter
        if int(self.input["shape"][0]) != len(x):
            interp.resize_tensor_input(self.input["index"], [len(x), *self.input["shape"][1:]])
            interp.allocate_tensors()
            self.input = interp.get_input_details()[0]
            self.output = interp.get_output_details()[0]
        interp.set_tensor(self.input["index"], _quantize(x, self.input))
        interp.invoke()
        values = {e["index"]: _dequantize(interp.get_tensor(e["index"]), self.tensors[e["index"]])
                  for e in self.entries.values()}
        values[-1] = _dequantize(interp.get_tensor(self.output["index"]), self.output)
        return values


def _output_shape(layer) -> tuple[int | None, ...] | None:
    """A single-use layer's output shape without the batch axis (None when shared)."""
    try:
        return tuple(layer.output.shape[1:])
    except (AttributeError, ValueError):
        return None


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        scale, zero = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _dequantize(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if not np.issubdtype(values.dtype, np.integer):
        return values.astype("float64")
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []), "float64")
    zeros = np.asarray(params.get("zero_points", []), "float64")
    if scales.size == 0:
        scale, zero = detail["quantization"]
        scales, zeros = np.asarray([scale], "float64"), np.asarray([zero], "float64")
    if scales.size > 1:  # per-channel along quantized_dimension
        shape = [1] * values.ndim
        shape[params.get("quantized_dimension", 0)] = -1
        scales, zeros = scales.reshape(shape), zeros.reshape(shape)
    return (values.astype("float64") - zeros) * scales


# ----------------------------------------------------------------------------- the report
def _snr_db(signal: float, noise: float) -> float:
    if noise <= 0:
        return SNR_CAP_DB
    if signal <= 0:
        return -SNR_CAP_DB
    return float(np.clip(10.0 * math.log10(signal / noise), -SNR_CAP_DB, SNR_CAP_DB))


def _cosine(dot: float, qq: float, ff: float) -> float:
    if qq <= 0 or ff <= 0:
        return 1.0 if qq == ff else 0.0
    return float(np.clip(dot / math.sqrt(qq * ff), -1.0, 1.0))


def _accumulate(graph: _Graph, model, images: np.ndarray, batch_size: int):
    """Per entry [Σf², Σ(q−f)², Σqf, Σq²], and the quantized and float outputs."""
    import keras

    entries = [e for e in graph.entries.values() if e["layer"] != graph.input_layer]
    probe = keras.Model(model.input, [model.get_layer(e["layer"]).output for e in entries])
    sums = {e["layer"]: np.zeros(4) for e in graph.entries.values()}
    lite_out, float_out = [], []
    for i in range(0, len(images), batch_size):
        x = images[i: i + batch_size]
        quantized = graph.run(x)
        floats = probe(x, training=False)
        floats = floats if isinstance(floats, (list, tuple)) else [floats]
        pairs = list(zip(entries, floats))
        if graph.input_layer in graph.entries:  # the input's float reference: the images
            pairs.append((graph.entries[graph.input_layer], x))
        for e, f in pairs:
            f = np.asarray(keras.ops.convert_to_numpy(f), "float64")
            q = quantized[e["index"]].reshape(f.shape)
            sums[e["layer"]] += [np.sum(f * f), np.sum((q - f) ** 2), np.sum(q * f), np.sum(q * q)]
        lite_out.append(quantized[-1].reshape(len(x), -1))
        float_out.append(np.asarray(keras.ops.convert_to_numpy(model(x, training=False))))
    return sums, np.concatenate(lite_out), np.concatenate(float_out).reshape(len(images), -1)


def quantization_report(model, content: bytes, images: np.ndarray,
                        labels: np.ndarray | None = None, *,
                        float_accuracy: Callable[[Sequence[str]], float] | None = None,
                        trials: int = FLOAT_TRIALS, batch_size: int = 100) -> dict[str, Any]:
    """Per-layer SNR, cosine and SNR drop of ``content`` (an integer TFLite model of
    ``model``) on ``images``; the worst layers; and, given ``float_accuracy(layers)``
    (the accuracy on ``images`` of a conversion with ``layers`` kept in float), the
    accuracy gained by keeping each of the ``trials`` worst layers in float."""
    graph = _Graph(content, model)
    if not graph.entries:
        raise KcnnError("--report: no TFLite tensor could be matched to a Keras layer")
    sums, lite_out, float_out = _accumulate(graph, model, images, batch_size)
    measured = {e["index"]: e["layer"] for e in graph.entries.values()}
    rows = []
    for e in graph.entries.values():
        ff, noise, dot, qq = sums[e["layer"]]
        snr = _snr_db(ff, noise)
        upstream = graph.upstream(e["index"], measured)
        snr_in = min((_snr_db(*sums[u][:2]) for u in upstream), default=SNR_CAP_DB)
        rows.append({**{k: e[k] for k in ("layer", "layers", "op", "dtype", "tensor")},
                     "snr_db": snr, "cosine": _cosine(dot, qq, ff),
                     # the input's own rounding is not a layer's fault: no drop
                     "snr_drop_db": max(0.0, snr_in - snr) if e["layer"] != graph.input_layer
                     else 0.0})
    ranked = sorted((r for r in rows if r["dtype"] in ("int8", "int16") and r["op"] != "QUANTIZE"),
                    key=lambda r: (-r["snr_drop_db"], r["snr_db"]))
    result: dict[str, Any] = {
        "num_images": int(len(images)),
        "layers": rows,
        "worst_layers": [r["layer"] for r in ranked[:5]],
        "predicted_classes": {"quantized": int(len(np.unique(lite_out.argmax(-1)))),
                              "float": int(len(np.unique(float_out.argmax(-1))))},
        "agreement": float(np.mean(lite_out.argmax(-1) == float_out.argmax(-1))),
    }
    if labels is not None:
        result["accuracy"] = float(np.mean(lite_out.argmax(-1) == labels))
        result["float_accuracy"] = float(np.mean(float_out.argmax(-1) == labels))
    result["worst_layer"] = ranked[0]["layer"] if ranked else None
    if float_accuracy is not None and labels is not None:
        _float_trials(result, ranked[:trials], float_accuracy)
    return result


def _float_trials(result: dict[str, Any], worst: list[dict[str, Any]],
                  float_accuracy: Callable[[Sequence[str]], float]) -> None:
    trials = []
    for row in worst:
        try:
            accuracy = float_accuracy(row["layers"])
        except KcnnError:  # no op of the calibrated model could be named after it
            continue
        trials.append({"layer": row["layer"], "layers": row["layers"], "accuracy": accuracy,
                       "gain_points": 100.0 * (accuracy - result["accuracy"])})
    result["float_trials"] = trials
    best = max(trials, key=lambda t: t["gain_points"], default=None)
    if best is not None and best["gain_points"] > 0:
        result["worst_layer"] = best["layer"]
    for row in result["layers"]:
        gain = next((t["gain_points"] for t in trials if t["layer"] == row["layer"]), None)
        if gain is not None:
            row["float_gain_points"] = gain


def write_quant_report(path: Path, model, content: bytes, part, *, mode: str, seed: int,
                       quantizer=None, float_layers: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``quant_report.json``; returns the report (``file`` added). ``quantizer`` (a
    :class:`~kcnn.export.tflite.SelectiveQuantizer`, int8) enables the float trials."""
    from kcnn.export.runtime import TFLiteModel

    images, labels = report_images(part, seed)
    labels = labels if np.issubdtype(np.asarray(labels).dtype, np.integer) else None

    def float_accuracy(layers: Sequence[str]) -> float:
        content_, _ = quantizer.quantize([*float_layers, *layers])
        return float(np.mean(TFLiteModel(content_).predict(images).argmax(-1) == labels))

    report = quantization_report(model, content, images, labels,
                                 float_accuracy=float_accuracy if quantizer else None)
    report.update({"quantize": mode, "float_layers": list(float_layers), "file": str(path)})
    write_json(path, report)
    return report


def format_report(report: dict[str, Any], top: int = 8) -> str:
    """The worst layers first, as a markdown table, and one line naming the worst."""
    rows = sorted(report["layers"], key=lambda r: (-r["snr_drop_db"], r["snr_db"]))
    rows = [r for r in rows if r["dtype"] in ("int8", "int16") and r["op"] != "QUANTIZE"][:top]
    lines = ["| layer | op | SNR (dB) | SNR drop (dB) | cosine | accuracy if float |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        gain = r.get("float_gain_points")
        lines.append(f"| {r['layer']} | {r['op']} | {r['snr_db']:.1f} | {r['snr_drop_db']:.1f} | "
                     f"{r['cosine']:.4f} | {'–' if gain is None else f'{gain:+.2f} points'} |")
    lines.append(f"worst layer: {report['worst_layer']} (report: {report['file']})")
    classes = report["predicted_classes"]
    if classes["quantized"] == 1 and classes["float"] > 1:
        lines.append("warning: the quantized model predicts one class on every report image")
    return "\n".join(lines)
