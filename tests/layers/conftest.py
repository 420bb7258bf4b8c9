"""Fixtures of the layer tests: a fixed seed and the default dtype policy for each test.

Under the JAX backend every new shape of every eager op is compiled by XLA,
and with the default LLVM optimisation level that costs seconds per random
initializer on a small CPU. These tests run tiny tensors, so they ask XLA for
its unoptimised backend (random initializers then compile about ten times
faster). This must happen before JAX creates its CPU client, hence before
anything runs an op; it only applies with KERAS_BACKEND=jax.
"""

import os

_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

if os.environ.get("KERAS_BACKEND") == "jax" and "xla_backend_optimization_level" not in (
    os.environ.get("XLA_FLAGS", "")
):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()

import keras  # noqa: E402
import pytest  # noqa: E402

from .harness import clear_jitted_calls  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded_and_float32():
    keras.utils.set_random_seed(0)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)
    clear_jitted_calls()
