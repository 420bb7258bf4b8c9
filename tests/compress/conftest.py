"""Fixtures of the compression tests.

The tiny trained digits run they share (``trained_run``, ``tiny_bn_recipe``)
and the seeding fixture live in tests/conftest.py.
"""

import pytest


@pytest.fixture(autouse=True)
def _seeded(seeded_float32):
    """Every compression test starts from seed 0 and the default dtype policy."""
