"""The JAX backend end to end (run by `make test`'s JAX pass): training, exact resume,
then the real `kcnn` command line on the run: evaluate, info, visualize (saliency needs
jax.grad), export (converted by a TensorFlow child process) and compress."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kcnn.engine.train import train
from kcnn.errors import Interrupted
from kcnn.recipes import loads
from tests.conftest import noise_lines
from tests.engine.test_resume import REAL

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax",
                                reason="the JAX pass of `make test` runs these")

# The TensorFlow resume tests' recipe (batch norm, dropout, stochastic pooling, augmentation,
# class-balanced sampler: every random state a resume must restore), smaller.
RECIPE = (REAL.replace("name: real", "name: jax_real")
          .replace("samples_per_class: 24", "samples_per_class: 12")
          .replace("batch_size: 32", "batch_size: 16"))
assert RECIPE.count("jax_real") == RECIPE.count("samples_per_class: 12") == 1


class StopAt(keras.callbacks.Callback):
    """Ctrl-C after batch 2 of epoch 1 (0-based)."""

    epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (1, 2):
            raise KeyboardInterrupt


def weights(run):
    return keras.saving.load_model(run / "model.keras", compile=False).get_weights()


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    return train(loads(RECIPE), run_dir=tmp_path_factory.mktemp("jax") / "full")


@pytest.mark.slow
def test_interrupted_run_resumes_exactly_on_jax(jax_run, tmp_path):
    with pytest.raises(Interrupted):
        train(loads(RECIPE), run_dir=tmp_path / "cut", callbacks=[StopAt()])
    assert json.loads((tmp_path / "cut/checkpoints/state.json").read_text())["epoch"] == 1
    resumed = train(resume=tmp_path / "cut")
    assert (resumed / "history.csv").read_text() == (jax_run / "history.csv").read_text()
    for a, b in zip(weights(resumed), weights(jax_run)):
        np.testing.assert_array_equal(a, b)
    recipe = (jax_run / "recipe.yaml").read_text()
    assert "backend: jax" in recipe and "jax: " in recipe


def kcnn(*args, timeout=400):
    res = subprocess.run([sys.executable, "-m", "kcnn.cli.main", *args], capture_output=True,
                         text=True, timeout=timeout, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert not noise_lines(res.stderr), noise_lines(res.stderr)
    return res


@pytest.mark.slow
def test_cli_commands_on_a_jax_run(jax_run, tmp_path):
    from PIL import Image

    res = kcnn("evaluate", str(jax_run))
    metrics = json.loads((jax_run / "metrics.json").read_text())
    assert f"{metrics['accuracy']:.4f}" in res.stdout

    assert "total:" in kcnn("info", str(jax_run)).stdout

    image = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype("uint8")).save(image)
    out = tmp_path / "viz"
    kcnn("visualize", str(jax_run), "--saliency", str(image), "--filters", "first", "--out", str(out))
    assert (out / "saliency_digit.png").stat().st_size > 1000

    # TensorFlow converts; the JAX-trained model's TFLite twin must agree with it.
    kcnn("export", str(jax_run), "--quantize", "none")
    report = json.loads((jax_run / "exports/none/export_report.json").read_text())
    assert report["agreement"] >= 0.99
    assert report["accuracy"] == pytest.approx(metrics["accuracy"], abs=0.02)

    # Compression fine-tunes on JAX and measures its TFLite twin through TensorFlow.
    pruned = tmp_path / "pruned"
    kcnn("compress", "prune", str(jax_run), "--method", "magnitude", "--sparsity", "0.5",
         "--rounds", "1", "--finetune-epochs", "1", "--run-dir", str(pruned))
    result = json.loads((pruned / "compress.json").read_text())
    assert result["after"]["tflite_bytes"] > 0
