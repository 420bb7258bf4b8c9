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
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from kcnn.errors import KcnnError
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
    import keras

    if keras.backend.backend() != "tensorflow":
        raise KcnnError(
            f"export needs the TensorFlow backend (KERAS_BACKEND is {keras.backend.backend()!r}); "
            "run it with KERAS_BACKEND=tensorflow"
        )


def convert(model, mode: str, calibration: np.ndarray | None = None, int8_io: bool = False) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer in ``mode``. Builtin ops only (no Flex)."""
    require_tensorflow_backend()
    import tensorflow as tf

    configure = QUANTIZE_MODES.get(mode)
    if mode in ("int8", "int16x8") and (calibration is None or len(calibration) == 0):
        raise KcnnError(f"{mode} export needs calibration samples (--calibration N, N >= 1)")
    if int8_io and mode != "int8":
        raise KcnnError(f"--int8-io applies to --quantize int8 only (got {mode!r})")
    with tempfile.TemporaryDirectory(prefix="kcnn-export-") as tmp:
        model.export(f"{tmp}/saved_model", format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(f"{tmp}/saved_model")
        configure(converter, tf, calibration, int8_io)
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
