"""What differs between Keras backends, in one place.

kcnn trains, evaluates, compresses and visualizes on TensorFlow and on JAX. Three
things need a backend's own API:

* gradients with respect to the input (saliency): ``tf.GradientTape`` or ``jax.grad``;
* determinism switches (TensorFlow's op determinism);
* TFLite conversion, which only TensorFlow can do. On another backend the model is
  saved (``.keras`` files are backend-neutral) and converted by a child process
  running kcnn on TensorFlow (:mod:`kcnn.export.convert_child`).

Data pipelines are tf.data on every backend (Keras' ``fit`` takes them on JAX too),
and ``distribute.strategy: data_parallel`` lives in :mod:`kcnn.engine.data_parallel`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kcnn.errors import KcnnError


def name() -> str:
    import keras

    return keras.backend.backend()


def is_tensorflow() -> bool:
    return name() == "tensorflow"


def versions() -> dict[str, str]:
    """Keras, its backend and the backend library's version (recorded in every run)."""
    import keras

    out = {"keras": keras.__version__, "backend": name()}
    if "tensorflow" in sys.modules or is_tensorflow():
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
    if name() == "jax":
        import jax

        out["jax"] = jax.__version__
    return out


def device_description() -> str:
    """The device computations run on, for benchmark reports."""
    import platform

    if name() == "jax":
        import jax

        d = jax.devices()[0]
        return f"{d.platform}: {getattr(d, 'device_kind', d)}"
    return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


def require_tensorflow(what: str) -> None:
    """One line when ``what`` can only run on the TensorFlow backend."""
    if not is_tensorflow():
        raise KcnnError(f"{what} needs the TensorFlow backend (KERAS_BACKEND is {name()!r}); "
                        f"run it with KERAS_BACKEND=tensorflow")


def enable_op_determinism() -> None:
    """Deterministic kernels where the backend has a switch for them (JAX on CPU already is)."""
    if is_tensorflow():
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def gpus() -> list:
    """The GPUs the current backend can use."""
    if name() == "jax":
        import jax

        return [d for d in jax.devices() if d.platform == "gpu"]
    if is_tensorflow():
        import tensorflow as tf

        return tf.config.list_physical_devices("GPU")
    return []


def class_score_gradient(model, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores of the batch, d score[0, predicted class] / d image) in inference mode."""
    scores = np.asarray(model(image, training=False))
    if scores.ndim != 2:
        raise KcnnError(f"saliency needs class scores (batch, classes); the model outputs "
                        f"{tuple(scores.shape)}")
    predicted = int(np.argmax(scores[0]))
    if name() == "jax":
        import jax

        grad = jax.grad(lambda x: model(x, training=False)[0, predicted])(
            jax.numpy.asarray(image, dtype="float32"))
        return scores, np.asarray(grad)
    if not is_tensorflow():
        raise KcnnError(f"saliency needs the TensorFlow or JAX backend (KERAS_BACKEND is {name()!r})")
    import tensorflow as tf

    x = tf.convert_to_tensor(image, dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        target = model(x, training=False)[0, predicted]
    return scores, tape.gradient(target, x).numpy()


def convert_in_tensorflow(model, mode: str, calibration: np.ndarray | None, int8_io: bool,
                          float_layers: Sequence[str]) -> bytes:
    """TFLite bytes of ``model`` from a child process on the TensorFlow backend."""
    with tempfile.TemporaryDirectory(prefix="kcnn-convert-") as tmp:
        work = Path(tmp)
        model.save(work / "model.keras")
        if calibration is not None:
            np.save(work / "calibration.npy", np.asarray(calibration, dtype="float32"))
        (work / "options.json").write_text(json.dumps(
            {"mode": mode, "int8_io": int8_io, "float_layers": list(float_layers)}))
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        res = subprocess.run([sys.executable, "-m", "kcnn.export.convert_child", str(work)],
                             env=env, capture_output=True, text=True)
        error = work / "error.txt"
        if error.is_file():
            raise KcnnError(error.read_text().strip())
        out = work / "model.tflite"
        if res.returncode != 0 or not out.is_file():
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise KcnnError(f"TFLite conversion ({mode}) in a TensorFlow child process failed "
                            f"(exit {res.returncode}): {last}")
        return out.read_bytes()


def rerun_on_tensorflow(argv: Sequence[str]) -> int:
    """Run this ``kcnn`` command line again in a child process on the TensorFlow backend
    (``kcnn export`` of a run trained on JAX); its output is this command's output."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    return subprocess.call([sys.executable, "-m", "kcnn.cli.main", *argv], env=env)
