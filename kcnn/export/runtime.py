"""Running ``.tflite`` models with LiteRT (``ai_edge_litert``), the maintained successor
of ``tf.lite.Interpreter``."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from kcnn.errors import KcnnError
from kcnn.quiet import native_stderr_muted

# Latency figures are taken the way an Android/iOS app runs a model on the CPU: LiteRT's
# interpreter with its default XNNPACK delegate, batch 1, a fixed number of threads. One
# thread is the default: numbers from different machines (and from a shared machine under
# load) compare best that way, and LiteRT runs one thread unless the app sets a number.
LATENCY_THREADS = 1
LATENCY_WARMUP = 10


def litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "unknown"


class TFLiteModel:
    """A TFLite flatbuffer with helpers to predict, time and inspect it.

    Inputs are raw float pixels; quantized inputs (``--int8-io``) are quantized
    here with the model's own scale and zero point, and quantized outputs are
    dequantized, so callers always see float logits.

    ``xnnpack`` (default on) keeps LiteRT's default delegate, XNNPACK, which runs the
    float, float16-weight, dynamic-range and int8 operators it supports; off, every
    operator runs on LiteRT's own builtin kernels (for comparisons only: no app turns it
    off). ``num_threads`` is fixed for the object's life.
    """

    def __init__(self, content: bytes | str | Path, num_threads: int = LATENCY_THREADS,
                 xnnpack: bool = True):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
            raise KcnnError(f"threads: must be an integer >= 1 (got {num_threads!r})")
        self.content = Path(content).read_bytes() if isinstance(content, (str, Path)) else content
        self.num_threads = num_threads
        self.xnnpack = xnnpack
        # BUILTIN (what AUTO means today) is named explicitly: it is the resolver that
        # applies the default delegate, and the latency report depends on it.
        resolver = (OpResolverType.BUILTIN if xnnpack
                    else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        with native_stderr_muted():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
            try:
                self.interpreter = Interpreter(model_content=self.content, num_threads=num_threads,
                                               experimental_op_resolver_type=resolver)
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

    def latency_ms(self, image: np.ndarray, runs: int = 100, warmup: int = LATENCY_WARMUP) -> float:
        """Median single-image latency in milliseconds (XNNPACK unless this object was made
        without it, this object's thread count)."""
        return self.latency(image, runs, warmup)["latency_ms_median"]

    def latency(self, image: np.ndarray, runs: int = 100,
                warmup: int = LATENCY_WARMUP) -> dict[str, Any]:
        """Single-image latency and the settings it was taken with, as report fields.

        Only ``invoke()`` is timed; the input is set (and quantized, for int8 input) before
        the clock starts, as an app that writes straight into the input tensor would."""
        return self.latency_report(self.invoke_times(image, runs, warmup), warmup)

    def latency_report(self, times: list[float], warmup: int) -> dict[str, Any]:
        """Report fields for invoke times measured on this object (see :meth:`latency`)."""
        share = self.delegation()
        return {
            "latency_ms_median": float(statistics.median(times)),
            "latency_ms_p90": float(np.percentile(times, 90)),
            "latency_runs": len(times),
            "latency_warmup": warmup,
            "latency_threads": self.num_threads,
            "latency_batch": 1,
            "latency_runtime": f"LiteRT {litert_version()} interpreter",
            "latency_delegate": "XNNPACK" if self.xnnpack else "none",
            "xnnpack_ops": share["delegated_ops"],
            "total_ops": share["total_ops"],
            "xnnpack_partitions": share["partitions"],
            "non_xnnpack_ops": share["undelegated_ops"],
        }

    def invoke_times(self, image: np.ndarray, runs: int,
                     warmup: int = LATENCY_WARMUP) -> list[float]:
        """Milliseconds of each of ``runs`` single-image ``invoke()`` calls after ``warmup``
        untimed ones (a benchmark can interleave models by calling this in chunks)."""
        if runs < 1:
            raise KcnnError(f"latency runs: must be >= 1 (got {runs})")
        self._resize(1)
        q = self._quantize(np.asarray(image, dtype="float32")[None])
        times = []
        for i in range(warmup + runs):
            self.interpreter.set_tensor(self.input["index"], q)
            t = time.perf_counter()
            self.interpreter.invoke()
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000.0)
        return times

    def delegation(self) -> dict[str, Any]:
        """How much of the model the XNNPACK delegate took over.

        A delegate shows in the interpreter's node list as extra ``DELEGATE`` nodes, one
        per partition it replaced; the model's own nodes stay listed. A partition's nodes
        are found by walking back from the ``DELEGATE`` node's outputs to its inputs. Every
        node left over runs on LiteRT's builtin kernels, and each one between two
        partitions costs a hand-over. Returns ``partitions``, ``delegated_ops``,
        ``total_ops`` and ``undelegated_ops`` ({op type: count})."""
        ops = self.interpreter._get_ops_details()  # no public API lists nodes
        own = {o["index"]: o for o in ops if o["op_name"] != "DELEGATE"}
        producer = {int(t): o["index"] for o in own.values() for t in o["outputs"]}
        partitions = [o for o in ops if o["op_name"] == "DELEGATE"]
        taken: set[int] = set()
        for node in partitions:
            entry = {int(t) for t in node["inputs"]}
            stack = [int(t) for t in node["outputs"]]
            while stack:
                tensor = stack.pop()
                index = producer.get(tensor)
                if tensor in entry or index is None or index in taken:
                    continue
                taken.add(index)
                stack.extend(int(t) for t in own[index]["inputs"] if int(t) >= 0)
        left = Counter(o["op_name"] for i, o in own.items() if i not in taken)
        return {"partitions": len(partitions), "delegated_ops": len(taken),
                "total_ops": len(own), "undelegated_ops": dict(sorted(left.items()))}

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
