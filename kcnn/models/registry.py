"""Model registry (timm style): thin registered entrypoints → keras.Model.

Entry points and their modules never import Keras at module level, so listing
models or validating a recipe stays fast and TensorFlow-free.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from kcnn.registry import Registry

MODELS: Registry[Callable[..., Any]] = Registry("model")

# Arguments every builder receives from the engine rather than from the recipe.
ENGINE_ARGS = ("preprocessing",)


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a builder under its function name."""
    return MODELS.register(fn.__name__)(fn)


def list_models() -> list[str]:
    return MODELS.names()


def builder_params(name: str) -> list[str]:
    """Names of the recipe-settable arguments of a registered builder."""
    sig = inspect.signature(MODELS.get(name))
    return [p for p in sig.parameters if p not in ENGINE_ARGS]


def create_model(
    name: str,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    preprocessing: Sequence[Any] | None = None,
    **kwargs: Any,
):
    """Build a registered model; ``preprocessing`` layers run first (rescale, standardize)."""
    return MODELS.get(name)(
        num_classes=num_classes,
        input_shape=tuple(input_shape),
        preprocessing=list(preprocessing or []),
        **kwargs,
    )


def check_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Recipe-time checks of a builder's arguments, without importing Keras.

    The common choice options (``pooling``, ``head``) are checked here; a builder
    may add its own checks as a ``check_kwargs(kwargs)`` attribute. Problems raise
    a :class:`~kcnn.errors.KcnnError` whose message starts with the key.
    """
    from kcnn.errors import KcnnError
    from kcnn.models.common import HEADS, POOLINGS, check_choice

    for key, valid in (("pooling", POOLINGS), ("head", HEADS)):
        if key in kwargs:
            try:
                check_choice(kwargs[key], valid, key)
            except KcnnError as err:
                raise KcnnError(f"model.{key}: {err}") from None
    hook = getattr(MODELS.get(name), "check_kwargs", None)
    if hook is not None:
        hook(kwargs)


def register_variant(builder, name: str, doc: str):
    """Register ``builder`` (made by a family's entrypoint factory) as ``name`` with ``doc``."""
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    return register_model(builder)
