"""Fully connected head → convolutions: same scores at the training size, a score map beyond."""

import keras
import numpy as np
import pytest

from kcnn.errors import KcnnError
from kcnn.models import create_model
from kcnn.models.convert import convert_run, fully_convolutional


def dense_model():
    keras.utils.set_random_seed(1)
    pre = [keras.layers.Rescaling(1 / 16, name="rescale"),
           keras.layers.Normalization(mean=[0.3], variance=[0.2], name="standardize")]
    model = create_model("vgg11_bn", num_classes=4, input_shape=(32, 32, 1), width=0.125,
                         fc_units=[24, 12], preprocessing=pre)
    # Non-trivial batch-norm statistics so that inference differs from initialisation.
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=True)
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.uniform(0, 16, (8, 32, 32, 1)), rng.integers(0, 4, 8))
    return model


def test_fc_to_conv_is_exact_and_slides():
    model = dense_model()
    fcn = fully_convolutional(model)
    assert tuple(fcn.inputs[0].shape) == (None, None, None, 1)
    fc1 = fcn.get_layer("fc1")
    assert isinstance(fc1, keras.layers.Conv2D)
    assert fc1.kernel_size == (1, 1) or tuple(fc1.kernel.shape[:2]) == (1, 1)  # pool5 is 1×1 here
    assert tuple(fcn.get_layer("fc2").kernel.shape) == (1, 1, 24, 12)
    assert fcn.count_params() == model.count_params()

    x = np.random.default_rng(2).uniform(0, 16, (3, 32, 32, 1)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    got = keras.ops.convert_to_numpy(fcn(x, training=False))
    assert got.shape == (3, 1, 1, 4)
    np.testing.assert_allclose(got[:, 0, 0], expected, atol=1e-5, rtol=1e-5)

    big = np.random.default_rng(3).uniform(0, 16, (2, 64, 96, 1)).astype("float32")
    scores = keras.ops.convert_to_numpy(fcn(big, training=False))
    assert scores.shape == (2, 2, 3, 4)  # one score vector per 32-pixel step
    assert np.isfinite(scores).all()
    # Different windows give different scores (the classifier really slides).
    assert np.abs(scores[:, 0, 0] - scores[:, 1, 2]).max() > 1e-4


def test_first_fc_becomes_an_hxw_convolution():
    keras.utils.set_random_seed(0)
    model = create_model("alexnet_cifar", num_classes=3, input_shape=(32, 32, 3), width=0.125,
                         fc_units=16)
    fcn = fully_convolutional(model)
    h, w, c = model.get_layer("flatten").input.shape[1:]
    assert (h, w) == (3, 3)
    assert tuple(fcn.get_layer("fc1").kernel.shape) == (h, w, c, 16)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fcn(x))[:, 0, 0], keras.ops.convert_to_numpy(model(x)),
        atol=1e-5, rtol=1e-5)


def test_models_without_a_dense_head_are_refused():
    model = create_model("resnet20", num_classes=3, input_shape=(16, 16, 3), width=2)
    with pytest.raises(KcnnError, match="no Flatten → Dense head"):
        fully_convolutional(model)


def test_convert_run_writes_model_fcn(tmp_path):
    model = dense_model()
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: x\n")
    model.save(run / "model.keras")
    path = convert_run(run)
    assert path == run / "model_fcn.keras"
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp file left
    loaded = keras.saving.load_model(path, compile=False)
    x = np.random.default_rng(4).uniform(0, 16, (2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x))[:, 0, 0],
                               keras.ops.convert_to_numpy(model(x)), atol=1e-5, rtol=1e-5)
    with pytest.raises(KcnnError, match="must end in .keras"):
        convert_run(run, tmp_path / "out.h5")
