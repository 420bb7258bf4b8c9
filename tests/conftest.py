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


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def tiny_recipe_dict():
    import copy

    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_recipe(tmp_path, tiny_recipe_dict):
    return write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict)
