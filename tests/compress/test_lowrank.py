"""Low-rank factorization: exact at full rank, ranks chosen by singular-value energy."""

import json

import keras
import numpy as np
import pytest

from kcnn.compress.lowrank import factorize, rank_for_energy
from kcnn.errors import KcnnError

X = np.random.default_rng(0).normal(size=(5, 9, 9, 3)).astype("float32")


def conv_model():
    inputs = keras.Input((9, 9, 3))
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(5, (3, 2), dilation_rate=(2, 1), name="c2")(x)
    x = keras.layers.Conv2D(4, 1, name="pointwise")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(7, activation="relu", name="fc")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def out(model):
    return keras.ops.convert_to_numpy(model(X))


@pytest.mark.parametrize("mode", ["spatial", "channel"])
def test_full_rank_is_exact(mode):
    model = conv_model()
    new, report = factorize(model, rank=10_000, mode=mode, require_saving=False)
    np.testing.assert_allclose(out(new), out(model), atol=1e-4, rtol=1e-4)
    assert set(report["layers"]) == {"c1", "c2", "fc", "logits"}
    assert "1×1" in report["skipped"]["pointwise"]  # nothing to split in a 1×1 kernel
    for info in report["layers"].values():
        assert info["rank"] == info["full_rank"] and info["energy"] == pytest.approx(1.0)
    c1a, c1b = new.get_layer("c1_lowrank"), new.get_layer("c1")
    if mode == "spatial":  # k×1 then 1×k, the strides split per axis
        assert c1a.kernel.shape == (3, 1, 3, 9) and c1a.strides == (2, 1)
        assert c1b.kernel.shape == (1, 3, 9, 6) and c1b.strides == (1, 2)
    else:  # k×k into r channels, then 1×1
        assert c1a.kernel.shape == (3, 3, 3, 6) and c1b.kernel.shape == (1, 1, 6, 6)
    assert new.get_layer("fc_lowrank").kernel.shape[1] == 7
    assert c1b.activation is keras.activations.relu and c1a.use_bias is False


def test_energy_picks_the_rank():
    s = np.array([3.0, 2.0, 1.0])  # squared: 9, 4, 1 of 14
    assert [rank_for_energy(s, e) for e in (0.5, 0.9, 0.93, 1.0)] == [1, 2, 3, 3]
    assert rank_for_energy(s, 9 / 14) == 1


def test_truncation_saves_parameters_and_skips_what_would_not():
    rng = np.random.default_rng(1)
    inputs = keras.Input((32,))
    x = keras.layers.Dense(32, name="big")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="small")(x))
    # A kernel of rank 4 plus small noise: 90% energy needs ≤ 4 directions.
    low = rng.normal(size=(32, 4)) @ rng.normal(size=(4, 32)) + 0.01 * rng.normal(size=(32, 32))
    model.get_layer("big").set_weights([low.astype("float32"), np.zeros(32, "float32")])
    new, report = factorize(model, energy=0.9)
    assert report["layers"]["big"]["rank"] <= 4
    assert report["layers"]["big"]["params_after"] < report["layers"]["big"]["params_before"]
    assert "would not save" in report["skipped"]["small"]
    x = rng.normal(size=(4, 32)).astype("float32")
    err = np.abs(keras.ops.convert_to_numpy(new(x) - model(x))).max()
    assert err < 0.1 * np.abs(keras.ops.convert_to_numpy(model(x))).max()
    assert new.count_params() < model.count_params()


def test_bad_arguments():
    model = conv_model()
    with pytest.raises(KcnnError, match="give --energy or --rank"):
        factorize(model, energy=0.9, rank=2)
    with pytest.raises(KcnnError, match=r"--energy: must be in \(0, 1\]"):
        factorize(model, energy=1.5)
    with pytest.raises(KcnnError, match="--mode: unknown mode 'depth'"):
        factorize(model, rank=2, mode="depth")


def test_lowrank_run_writes_a_run(trained_run, tmp_path):
    from kcnn.compress.lowrank import lowrank_run
    from kcnn.engine.evaluate import evaluate

    out, info = lowrank_run(trained_run, energy=0.95, mode="channel", out=tmp_path / "lr",
                            tflite=False, verbose=0, log=lambda m: None)
    saved = json.loads((out / "compress.json").read_text())
    assert saved["method"] == "lowrank" and saved["settings"]["mode"] == "channel"
    assert set(saved["layers"]) <= {"conv1_1", "conv2_1", "logits"} and saved["layers"]
    assert saved["after"]["params"] < saved["before"]["params"]
    metrics = evaluate(out, write=False)
    assert metrics["accuracy"] == pytest.approx(saved["after"]["accuracy"])
    assert not (out / "history.csv").exists()
