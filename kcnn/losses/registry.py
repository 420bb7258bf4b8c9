"""The loss registry (``train.loss.type`` → Keras loss class).

A module of its own so that the loss modules can register themselves without
importing the package that imports them.
"""

from __future__ import annotations

from typing import Any

from kcnn.registry import Registry

LOSSES: Registry[Any] = Registry("loss")
