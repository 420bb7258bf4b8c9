import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Under KERAS_BACKEND=jax every new shape of every eager op is compiled by XLA; with the
# default optimisation level that costs seconds per op on a small CPU. The tests use tiny
# tensors, so ask XLA for its unoptimised backend. Must run before JAX creates its client.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if os.environ.get("KERAS_BACKEND") == "jax" and "xla_backend_optimization_level" not in (
    os.environ.get("XLA_FLAGS", "")
):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()

import copy  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

TINY = {
    "name": "tiny",
    "description": "tiny digits run for tests",
    "seed": 0,
    "data": {
        "source": {"type": "digits"},
        "preprocess": {"rescale": 0.0625},
    },
    "model": {"name": "simple_cnn", "filters": [8, 16], "batch_norm": False},
    "train": {
        "epochs": 2,
        "batch_size": 32,
        "optimizer": {"type": "adam", "lr": 0.01},
        "callbacks": {"tensorboard": False},
        "verbose": 0,
    },
    "evaluate": {"plots": False},
}


# Lines that TensorFlow, absl, CUDA and LiteRT print on their own (kcnn.quiet keeps them off
# the terminal): what a test of a real `kcnn` run must not find on its stderr.
NOISE = re.compile(
    r"absl|InitializeLog|[Cc]uda|CUDA|cuInit|oneDNN|TF_ENABLE_ONEDNN_OPTS|NodeDef mentions|"
    r"XNNPACK|fully_quantize|inference_type|retracing|cpu_feature_guard|This TensorFlow binary|"
    r"^[IWEF]\d{4} \d|^(INFO|WARNING): ")


def noise_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are the libraries' own chatter, not kcnn's."""
    return [line for line in stderr.splitlines() if NOISE.search(line)]


def random_bn(model, seed: int = 0) -> None:
    """Non-trivial BatchNormalization weights and statistics, so that slicing or folding
    them wrongly shows in a test."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(size=c),
                               rng.normal(size=c), rng.uniform(0.5, 2.0, c)])


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def tiny_recipe_dict():
    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_recipe(tmp_path, tiny_recipe_dict):
    return write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict)


@pytest.fixture
def seeded_float32():
    """Seeds Keras, NumPy and Python with 0; restores the global dtype policy afterwards.

    Not autouse: a test folder opts in with an autouse fixture of its own that
    requests this one (tests/layers, tests/compress).
    """
    import keras

    keras.utils.set_random_seed(0)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


@pytest.fixture(scope="session")
def tiny_bn_recipe(tmp_path_factory):
    """TINY with batch norm (so filter pruning has BN layers to slice)."""
    data = copy.deepcopy(TINY)
    data["model"]["batch_norm"] = True
    return write_recipe(tmp_path_factory.mktemp("tiny_bn_recipe") / "tiny_bn.yaml", data)


@pytest.fixture(scope="session")
def trained_run(tiny_bn_recipe, tmp_path_factory):
    """A run dir of ``tiny_bn_recipe``, trained once per session (per xdist worker).

    Tests read it and write their outputs elsewhere; a test that needs to
    change a run copies it first.
    """
    from kcnn.engine.train import train
    from kcnn.recipes import load

    return train(load(tiny_bn_recipe), run_dir=tmp_path_factory.mktemp("trained_run") / "run")
