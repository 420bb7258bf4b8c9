"""Quantization-aware training: int8 weight grid, BN folding, the fake-quant model, and
``kcnn compress qat`` → ``kcnn export --quantize int8`` end to end."""

import json

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from kcnn.cli.main import app
from kcnn.compress.qat import (
    fold_batchnorm,
    observe_ranges,
    plain_model,
    qat_model,
    quantization_points,
)
from kcnn.layers.fake_quant import FakeQuant, fake_quant_weights, quantize_weights_per_channel
from kcnn.saving import load_keras_model
from tests.conftest import random_bn

RUNNER = CliRunner()
X = np.random.default_rng(0).uniform(0, 16, size=(24, 8, 8, 1)).astype("float32")


def numpy_int8_per_channel(w, keep_axes):
    """TFLite's symmetric per-channel int8 weights: scale = max|w|/127 per output channel,
    round half away from zero. Returns (dequantized, integer levels)."""
    keep = {a % w.ndim for a in keep_axes}
    axes = tuple(a for a in range(w.ndim) if a not in keep)
    w = w.astype("float64")
    scale = np.abs(w).max(axis=axes, keepdims=True) / 127.0
    q = np.clip(np.trunc(w / scale + np.copysign(0.5, w)), -127, 127)
    return q * scale, q


def test_weight_fake_quant_hits_255_levels_per_channel_and_matches_numpy():
    rng = np.random.default_rng(1)
    # 4 output channels, 1152 values each spread over the whole range, each its own scale.
    per_channel = [rng.permutation(np.linspace(-a, a, 3 * 3 * 128)) for a in (0.05, 0.3, 1.0, 7.0)]
    w = np.stack(per_channel, -1).reshape(3, 3, 128, 4).astype("float32")
    got = keras.ops.convert_to_numpy(quantize_weights_per_channel(w))
    ref, levels = numpy_int8_per_channel(w, (-1,))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    for c in range(4):
        assert len(np.unique(levels[..., c])) == 255
        assert levels[..., c].min() == -127 and levels[..., c].max() == 127
        scale = np.abs(w[..., c]).max() / 127.0
        assert len(np.unique(np.round(got[..., c] / scale))) == 255
    # Depthwise kernels (kh, kw, in, multiplier): one scale per (in, multiplier) pair.
    d = rng.normal(size=(3, 3, 4, 2)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(quantize_weights_per_channel(d, (2, 3))),
                               numpy_int8_per_channel(d, (2, 3))[0], rtol=1e-6, atol=1e-9)
    # The grid is a fixed point, and a channel of zeros stays zero.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(quantize_weights_per_channel(got)), got,
                               rtol=1e-6)
    zeros = keras.ops.convert_to_numpy(quantize_weights_per_channel(np.zeros((2, 3), "float32")))
    assert np.all(zeros == 0)


def test_weight_fake_quant_gradient_is_straight_through():
    import tensorflow as tf

    w = tf.Variable(np.random.default_rng(2).normal(size=(5, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(fake_quant_weights(w) * tf.constant([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(tape.gradient(loss, w).numpy(), np.tile([1.0, 2.0, 3.0], (5, 1)))


def test_fake_quant_layer_tracks_ranges_and_rounds_to_256_levels():
    layer = FakeQuant(momentum=0.5)
    x = np.linspace(-1.0, 3.0, 1001, dtype="float32")[None]
    assert np.array_equal(keras.ops.convert_to_numpy(layer(x)), x)  # no range yet: identity
    layer(x, training=True)  # first batch initializes the range
    assert float(layer.range_min.numpy()) == pytest.approx(-1.0)
    assert float(layer.range_max.numpy()) == pytest.approx(3.0)
    layer(x * 3, training=True)  # moving average: halfway to the new extremes
    assert float(layer.range_max.numpy()) == pytest.approx(6.0)
    y = keras.ops.convert_to_numpy(layer(x))
    scale = (float(layer.range_max.numpy()) - float(layer.range_min.numpy())) / 255
    assert len(np.unique(y)) <= 256 and np.max(np.abs(y - x)) <= scale / 2 + 1e-6
    layer.observe(True)
    layer(x * 0.5)
    layer.observe(False)
    assert float(layer.range_min.numpy()) == pytest.approx(-0.5)
    assert float(layer.range_max.numpy()) == pytest.approx(1.5)
    assert FakeQuant.from_config(layer.get_config()).momentum == 0.5
    with pytest.raises(ValueError, match="Received: momentum=1"):
        FakeQuant(momentum=1)


def test_fake_quant_layer_harness(tmp_path):
    from tests.layers import harness

    harness.run_layer_checks(
        FakeQuant, {"momentum": 0.9, "num_bits": 8}, (2, 4, 4, 3), tmp_path,
        expected_output_shape=(2, 4, 4, 3), expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=3, atol=1e-5,
    )




def test_bn_folding_preserves_outputs(trained_run):
    model = load_keras_model(trained_run / "model.keras")
    folded, folds = fold_batchnorm(model)
    assert folds == {"conv1_1": "conv1_1_bn", "conv2_1": "conv2_1_bn"}
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    np.testing.assert_allclose(folded.predict(X, verbose=0), model.predict(X, verbose=0),
                               rtol=1e-4, atol=1e-4)
    # Depthwise and Dense kernels, a conv with its own bias, a BN that cannot be folded.
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(inputs)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU(6.0, name="dw_relu")(x)
    x = keras.layers.Conv2D(4, 1, use_bias=True, name="pw")(x)
    x = keras.layers.BatchNormalization(name="pw_bn")(x)
    x = keras.layers.BatchNormalization(name="lonely_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(5, name="fc")(x)
    outputs = keras.layers.BatchNormalization(name="fc_bn")(x)
    net = keras.Model(inputs, outputs)
    random_bn(net)
    net.get_layer("pw").set_weights([w + 0.1 for w in net.get_layer("pw").get_weights()])
    folded, folds = fold_batchnorm(net)
    assert folds == {"dw": "dw_bn", "pw": "pw_bn", "fc": "fc_bn"}
    assert [layer.name for layer in folded.layers if "bn" in layer.name] == ["lonely_bn"]
    x = np.random.default_rng(3).normal(size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(folded(x), net(x), rtol=1e-4, atol=1e-4)


def test_fake_quant_model_has_tflite_quantization_points_and_int8_grid(trained_run):
    model = load_keras_model(trained_run / "model.keras")
    folded, _ = fold_batchnorm(model)
    assert quantization_points(folded) == [
        "rescale", "standardize", "conv1_1_relu", "conv2_1_relu", "gap", "logits"]
    qat = qat_model(folded)
    fq = [layer.name for layer in qat.layers if isinstance(layer, FakeQuant)]
    assert fq == ["image_fq", "rescale_fq", "standardize_fq", "conv1_1_relu_fq", "conv2_1_relu_fq",
                  "gap_fq", "logits_fq"]
    observe_ranges(qat, X)
    ranges = {layer.name: float(layer.range_min.numpy()) for layer in qat.layers if layer.name in fq}
    assert ranges["conv1_1_relu_fq"] == 0.0 and ranges["image_fq"] == 0.0  # ReLU / pixels ≥ 0
    f, q = folded.predict(X, verbose=0), qat.predict(X, verbose=0)
    cosine = np.sum(f * q) / np.sqrt(np.sum(f * f) * np.sum(q * q))
    assert 0.99 < cosine < 1.0 and np.mean(f.argmax(-1) == q.argmax(-1)) > 0.9
    plain = plain_model(qat, folded)
    assert [type(layer).__name__ for layer in plain.layers] == [
        type(layer).__name__ for layer in folded.layers]
    for name in ("conv1_1", "conv2_1", "logits"):
        kernel = plain.get_layer(name).get_weights()[0]
        scale = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0) / 127
        levels = kernel / scale
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)


def test_qat_cli_writes_a_run_that_exports_to_int8(trained_run, tmp_path):
    out = tmp_path / "qat"
    res = RUNNER.invoke(app, ["compress", "qat", str(trained_run), "--epochs", "1",
                              "--run-dir", str(out), "--no-tflite"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == str(out)
    assert any(line.startswith("| int8 TFLite, QAT (new run) |") for line in lines)
    info = json.loads((out / "compress.json").read_text())
    assert info["method"] == "qat" and info["epochs"] == 1
    acc = info["accuracy"]
    assert set(acc) == {"float", "fake_quant", "ptq_int8_tflite", "qat_int8_tflite"}
    assert all(0.1 < v <= 1.0 for v in acc.values()), acc  # (the tiny run is barely trained)
    # The fake-quant Keras model predicts what the int8 TFLite model does.
    assert acc["qat_int8_tflite"] == pytest.approx(acc["fake_quant"], abs=0.02)
    assert info["folded_batchnorm"] == {"conv1_1": "conv1_1_bn", "conv2_1": "conv2_1_bn"}
    assert info["before"]["int8_tflite_accuracy"] == acc["ptq_int8_tflite"]
    res = RUNNER.invoke(app, ["export", str(out), "--quantize", "int8"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "exports" / "int8" / "export_report.json").read_text())
    assert report["accuracy"] == pytest.approx(acc["qat_int8_tflite"])  # same conversion


def test_qat_bad_epochs_exits_2(trained_run, tmp_path):
    res = RUNNER.invoke(app, ["compress", "qat", str(trained_run), "--epochs", "-1",
                              "--run-dir", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "--epochs: must be >= 0 (got -1)" in res.output
    assert not (tmp_path / "out").exists()
