"""Binary weights as a compression: packed storage of BinaryConv2D kernels and the binary recipe.

(The layers themselves, BinaryConv2D and BinaryDense, are tested in tests/layers/test_binary.py.)
"""

import keras
import numpy as np

from kcnn.compress.binary import pack_kernel, unpack_kernel, weight_storage
from kcnn.layers import BinaryConv2D
from kcnn.layers.binary import binarize


def test_pack_unpack_round_trip():
    w = np.random.default_rng(4).normal(size=(3, 3, 5, 7)).astype("float32")
    bits, alpha = pack_kernel(w)
    assert bits.dtype == np.uint8 and bits.size == -(-w.size // 8) and alpha.shape == (7,)
    np.testing.assert_allclose(unpack_kernel(bits, alpha, w.shape),
                               keras.ops.convert_to_numpy(binarize(w)), rtol=1e-6)


def test_weight_storage_counts_one_bit_per_weight():
    inputs = keras.Input((8, 8, 1))
    x = BinaryConv2D(16, 3, use_bias=False, name="bin")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    report = weight_storage(model)
    # 144 binary weights → 18 bytes + 16 float32 α; the Dense layer stays float32.
    assert report["binary_weights"] == 144
    assert report["layers"] == [{"layer": "bin", "weights": 144, "float32_bytes": 576,
                                 "packed_bytes": 18 + 64}]
    assert report["float32_bytes"] == 4 * (144 + 170)
    assert report["packed_bytes"] == 82 + 4 * 170


def test_bundled_binary_recipe_validates():
    from kcnn.recipes import load
    from kcnn.recipes.load import RECIPES_DIR

    recipe = load(RECIPES_DIR / "digits_binary.yaml")
    types = [e.get("type") for e in recipe.model.kwargs["layers"] if isinstance(e, dict)]
    assert types.count("BinaryConv2D") == 4
