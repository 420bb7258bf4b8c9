"""Model families, built by name from the registry.

Importing this package does not import Keras; builders do when called.
"""

from kcnn.models import simple  # noqa: F401  (registers builders)
from kcnn.models.registry import MODELS, builder_params, create_model, list_models, register_model

__all__ = ["MODELS", "builder_params", "create_model", "list_models", "register_model"]
