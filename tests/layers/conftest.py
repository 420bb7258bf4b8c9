"""Fixtures of the layer tests: a fixed seed and the default dtype policy for each test.

(The XLA fast-compile flags for KERAS_BACKEND=jax are set in tests/conftest.py.)
"""

import keras
import pytest

from .harness import clear_jitted_calls


@pytest.fixture(autouse=True)
def _seeded_and_float32():
    keras.utils.set_random_seed(0)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)
    clear_jitted_calls()
