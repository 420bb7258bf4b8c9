"""Model families, built by name from the registry.

Importing this package does not import Keras; builders do when called.
"""

# Importing the family modules registers their builders.
from kcnn.models import (  # noqa: F401
    alexnet,
    highway,
    layer_list,
    mobilenet,
    nin,
    resnet,
    shufflenet,
    simple,
    squeezenet,
    vgg,
)
from kcnn.models.registry import (
    MODELS,
    builder_params,
    check_kwargs,
    create_model,
    list_models,
    register_model,
)

__all__ = ["MODELS", "builder_params", "check_kwargs", "create_model", "list_models",
           "register_model"]
