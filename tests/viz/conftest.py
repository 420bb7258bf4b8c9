import keras
import numpy as np
import pytest
from PIL import Image

from kcnn.models import create_model
from kcnn.recipes import dump, loads

RECIPE = """
name: tiny_viz
data:
  source: {type: digits, resize: 16}
  preprocess: {rescale: 0.0625, standardize: false}
model: {name: simple_cnn, filters: [4, 8], batch_norm: false}
"""


def tiny_model(channels=1):
    keras.utils.set_random_seed(0)
    return create_model("simple_cnn", num_classes=10, input_shape=(16, 16, channels),
                        filters=[4, 8], batch_norm=False,
                        preprocessing=[keras.layers.Rescaling(1 / 16, name="rescale")])


@pytest.fixture
def tiny_run(tmp_path):
    """A run directory with a small untrained digits model and its recipe."""
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    (run / "recipe.yaml").write_text(dump(loads(RECIPE)))
    tiny_model().save(run / "model.keras")
    return run


@pytest.fixture
def digit_png(tmp_path):
    from sklearn.datasets import load_digits

    img = (load_digits().images[0] * 255 / 16).astype("uint8")  # a zero, ink bright
    path = tmp_path / "digit.png"
    Image.fromarray(img).save(path)
    return path


def png_shape(path):
    import matplotlib.image

    return matplotlib.image.imread(path).shape


__all__ = ["np", "png_shape", "tiny_model"]
