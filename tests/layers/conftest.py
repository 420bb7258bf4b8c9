"""Fixtures of the layer tests: a fixed seed and the default dtype policy for each test.

(The seeding fixture is shared in tests/conftest.py, as are the XLA fast-compile
flags for KERAS_BACKEND=jax.)
"""

import pytest

from .harness import clear_jitted_calls


@pytest.fixture(autouse=True)
def _seeded_and_float32(seeded_float32):
    yield
    clear_jitted_calls()
