"""The book's layers as Keras 3 layers.

Every class is registered for Keras serialization under the package name
``"kcnn"``, so a saved ``.keras`` model that uses them loads without
``custom_objects`` once :mod:`kcnn.layers` has been imported.

``LAYERS`` maps names to classes for recipes: each class name, plus a
snake_case alias (``"lrn"``, ``"residual_block"``, ...).

Importing this module imports Keras (not the CLI's business: only the engine
and model builders import it).
"""

from kcnn.layers.binary import BinaryConv2D, BinaryDense
from kcnn.layers.clustered import ClusteredConv2D, ClusteredDense, ClusteredDepthwiseConv2D  # noqa: F401  (registered for .keras; made by `kcnn compress cluster`, not recipes)
from kcnn.layers.deformable_conv import DeformableConv2D
from kcnn.layers.fake_quant import FakeQuant  # noqa: F401  (registered for .keras; used by `kcnn compress qat`)
from kcnn.layers.highway import HighwayConv2D, HighwayDense, highway_gate_bias
from kcnn.layers.lp_pooling import LpPooling2D
from kcnn.layers.lrn import LocalResponseNormalization
from kcnn.layers.mlpconv import MLPConv2D
from kcnn.layers.residual import ResidualBlock
from kcnn.layers.stochastic_pooling import StochasticPooling2D

_ALIASES = {
    "lrn": LocalResponseNormalization,
    "local_response_normalization": LocalResponseNormalization,
    "stochastic_pooling2d": StochasticPooling2D,
    "lp_pooling2d": LpPooling2D,
    "highway_dense": HighwayDense,
    "highway_conv2d": HighwayConv2D,
    "mlpconv2d": MLPConv2D,
    "mlp_conv2d": MLPConv2D,
    "residual_block": ResidualBlock,
    "deformable_conv2d": DeformableConv2D,
    "binary_conv2d": BinaryConv2D,
    "binary_dense": BinaryDense,
}

LAYERS = {cls.__name__: cls for cls in dict.fromkeys(_ALIASES.values())}
LAYERS.update(_ALIASES)

__all__ = [
    "LAYERS",
    "BinaryConv2D",
    "BinaryDense",
    "DeformableConv2D",
    "HighwayConv2D",
    "HighwayDense",
    "LocalResponseNormalization",
    "LpPooling2D",
    "MLPConv2D",
    "ResidualBlock",
    "StochasticPooling2D",
    "highway_gate_bias",
]
