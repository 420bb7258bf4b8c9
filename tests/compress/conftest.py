"""Fixtures of the compression tests: one tiny trained digits run shared by the session."""

import json

import keras
import pytest

from tests.conftest import TINY, write_recipe


@pytest.fixture(autouse=True)
def _seeded_and_float32():
    keras.utils.set_random_seed(0)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


@pytest.fixture(scope="session")
def tiny_bn_recipe(tmp_path_factory):
    """TINY with batch norm (so filter pruning has BN layers to slice)."""
    data = json.loads(json.dumps(TINY))
    data["model"]["batch_norm"] = True
    return write_recipe(tmp_path_factory.mktemp("compress_recipe") / "tiny_bn.yaml", data)


@pytest.fixture(scope="session")
def trained_run(tiny_bn_recipe, tmp_path_factory):
    from kcnn.engine.train import train
    from kcnn.recipes import load

    return train(load(tiny_bn_recipe), run_dir=tmp_path_factory.mktemp("compress") / "run")
