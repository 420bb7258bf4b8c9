"""Running ``.tflite`` models with LiteRT (``ai_edge_litert``), the maintained successor
of ``tf.lite.Interpreter``."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from kcnn.errors import KcnnError
from kcnn.quiet import native_stderr_muted


class TFLiteModel:
    """A TFLite flatbuffer with helpers to predict, time and inspect it.

    Inputs are raw float pixels; quantized inputs (``--int8-io``) are quantized
    here with the model's own scale and zero point, and quantized outputs are
    dequantized, so callers always see float logits.
    """

    def __init__(self, content: bytes | str | Path, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.content = Path(content).read_bytes() if isinstance(content, (str, Path)) else content
        with native_stderr_muted():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
            try:
                self.interpreter = Interpreter(model_content=self.content, num_threads=num_threads)
                self.interpreter.allocate_tensors()
            except Exception as err:
                raise KcnnError(f"cannot load TFLite model ({type(err).__name__}: {err})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = int(self.input["shape"][0])

    @property
    def input_dtype(self):
        return self.input["dtype"]

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if np.issubdtype(self.output["dtype"], np.integer):
            scale, zero = self.output["quantization"]
            return (y.astype("float32") - zero) * scale
        return y.astype("float32")

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.input["shape"][1:]])
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self._batch = batch

    def predict(self, x, batch_size: int = 64) -> np.ndarray:
        """Outputs for an image array, or for every image of a data split (read a batch at
        a time, so a file-backed split is never loaded whole)."""
        out = []
        batches = x.batches(batch_size) if hasattr(x, "batches") else (
            x[i : i + batch_size] for i in range(0, len(x), batch_size))
        for batch in batches:
            chunk = np.asarray(batch, dtype="float32")
            self._resize(len(chunk))
            self.interpreter.set_tensor(self.input["index"], self._quantize(chunk))
            self.interpreter.invoke()
            out.append(self._dequantize(self.interpreter.get_tensor(self.output["index"])))
        return np.concatenate(out) if out else np.zeros((0,), "float32")

    def latency_ms(self, image: np.ndarray, runs: int = 100, warmup: int = 5) -> float:
        """Median single-image latency in milliseconds (XNNPACK, this object's thread count)."""
        self._resize(1)
        q = self._quantize(np.asarray(image, dtype="float32")[None])
        times = []
        for i in range(warmup + runs):
            self.interpreter.set_tensor(self.input["index"], q)
            t = time.perf_counter()
            self.interpreter.invoke()
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000.0)
        return float(statistics.median(times))

    def ops(self) -> list[dict[str, Any]]:
        """The model's operators (before any delegate rewrites them), with tensor dtypes."""
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        plain = Interpreter(
            model_content=self.content,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        plain.allocate_tensors()
        tensors = {t["index"]: t for t in plain.get_tensor_details()}
        result = []
        for op in plain._get_ops_details():  # no public API lists ops; this one is stable
            outs = [tensors[i] for i in op["outputs"] if i in tensors]
            ins = [tensors[i] for i in op["inputs"] if i in tensors]
            result.append({
                "op": op["op_name"],
                "outputs": [t["name"] for t in outs],
                "output_dtypes": [np.dtype(t["dtype"]).name for t in outs],
                "input_dtypes": [np.dtype(t["dtype"]).name for t in ins],
            })
        return result
