"""Fine-tuning: warm start, freezing, layer-wise learning rates, gradual unfreezing, co-training."""

import json

import keras
import numpy as np
import pytest

from kcnn.engine import finetune as F
from kcnn.engine.cotrain import nearest_source
from kcnn.engine.optim import lr_multipliers, make_optimizer
from kcnn.engine.train import train, training_phases
from kcnn.errors import KcnnError
from kcnn.recipes import dump, load, loads
from kcnn.recipes.load import RECIPES_DIR
from kcnn.recipes.schema import Train


def small_model(classes=3, name_prefix=""):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="conv1_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="conv2_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(x))


def test_units_group_batch_norm_with_their_conv():
    assert F.unit_names(small_model()) == [["conv1", "conv1_bn"], ["conv2", "conv2_bn"], ["logits"]]


def test_frozen_weights_and_bn_statistics_do_not_move():
    model = small_model()
    frozen = F.frozen_layers(model, depth=0.34)  # the shallowest of three units
    assert frozen == ["conv1", "conv1_bn"]
    F.apply_freeze(model, frozen)
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(32, 8, 8, 1)).astype("float32") * 3 + 1, rng.integers(0, 3, 32),
              batch_size=8, epochs=2, verbose=0)
    for name in ("conv1", "conv1_bn"):  # kernel, gamma, beta, moving mean and variance
        for a, b in zip(before[name], model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    moved = [not np.array_equal(a, b) for a, b in zip(before["conv2_bn"], model.get_layer("conv2_bn").get_weights())]
    assert all(moved)  # the trainable BN learns and updates its statistics


def test_freeze_by_regex_and_trainable_top():
    model = small_model()
    assert F.frozen_layers(model, patterns=["conv.*"]) == ["conv1", "conv1_bn", "conv2", "conv2_bn"]
    assert F.frozen_layers(model, trainable_top=1) == ["conv1", "conv1_bn", "conv2", "conv2_bn"]
    assert F.frozen_layers(model, trainable_top=2) == ["conv1", "conv1_bn"]


def _one_sgd_step(optimizer, model):
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(1).normal(size=(4, 8, 8, 1)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=False) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    before = [v.numpy().copy() for v in model.trainable_variables]
    optimizer.apply(grads, model.trainable_variables)
    return {v.path: (v.numpy() - b, g.numpy()) for v, b, g in zip(model.trainable_variables, before, grads)}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="uses tf.GradientTape")
@pytest.mark.parametrize("keras_multi", [True, False])
def test_lr_multipliers_scale_one_sgd_step(keras_multi, monkeypatch):
    model = small_model()
    cfg = Train(optimizer={"type": "sgd", "lr": 0.1, "lr_multipliers": {"conv2": 0.1}})
    if not keras_multi:
        monkeypatch.delattr(keras.optimizers, "MultiOptimizer")
    optimizer = make_optimizer(cfg, steps_per_epoch=10, model=model)
    assert ("Multi" in type(optimizer).__name__) == keras_multi
    steps = _one_sgd_step(optimizer, model)
    delta, grad = steps["conv2/kernel"]
    np.testing.assert_allclose(delta, -0.01 * grad, rtol=1e-3, atol=1e-6)
    delta, grad = steps["logits/kernel"]
    np.testing.assert_allclose(delta, -0.1 * grad, rtol=1e-3, atol=1e-6)


def test_depth_scaled_multipliers_interpolate():
    m = lr_multipliers(small_model(), depth_scaled=(0.1, 1.0))
    assert m["conv1/kernel"] == pytest.approx(0.1)
    assert m["conv2/kernel"] == pytest.approx(0.55) and m["conv2_bn/gamma"] == pytest.approx(0.55)
    assert m["logits/kernel"] == pytest.approx(1.0)


def test_warm_start_loads_matching_layers_and_reports(tmp_path):
    source = small_model(classes=5)
    source.save(tmp_path / "src.keras")
    target = small_model(classes=3)
    report = F.warm_start(target, tmp_path / "src.keras")
    assert report.loaded == ["conv1", "conv1_bn", "conv2", "conv2_bn"]
    assert [s["layer"] for s in report.skipped] == ["logits"]
    assert report.skipped[0]["reason"] == "shape [(6, 3), (3,)] vs source [(6, 5), (5,)]"
    for name in report.loaded:
        for a, b in zip(source.get_layer(name).get_weights(), target.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    only_conv1 = F.warm_start(small_model(classes=3), tmp_path / "src.keras", layers="conv1")
    assert only_conv1.loaded == ["conv1"]
    with pytest.raises(KcnnError, match=r"layer 'logits' does not match the source: model shapes \[\(6, 3\), \(3,\)\] vs source \[\(6, 5\), \(5,\)\]"):
        F.warm_start(small_model(classes=3), tmp_path / "src.keras", skip_mismatch=False)
    with pytest.raises(KcnnError, match="model.init.from: no trained model at"):
        F.warm_start(small_model(), tmp_path / "nothing")


def test_strategies_expand_into_train_settings():
    base = "name: ft\ndata: {source: {type: digits}}\nmodel: {name: simple_cnn}\n"
    head = loads(base + "finetune: {strategy: head_only}")
    assert head.train.trainable_top == 1
    assert loads(base + "finetune: {strategy: top_k, k: 3}").train.trainable_top == 3
    full = loads(base + "finetune: {strategy: full}")
    assert full.train.optimizer.depth_scaled.shallow == 0.1 and full.train.trainable_top is None
    gradual = loads(base + "finetune: {strategy: gradual, every: 3}")
    assert gradual.train.unfreeze.every == 3
    # explicit settings win, and the expansion survives a dump/load round trip
    explicit = loads(base + "finetune: {strategy: head_only}\ntrain: {trainable_top: 2}")
    assert explicit.train.trainable_top == 2
    for r in (head, full, gradual, explicit):
        assert loads(dump(r)) == r
    assert "trainable_top: 1" in dump(head)


def test_gradual_phases():
    cfg = Train(epochs=5, unfreeze={"start_top": 1, "every": 2})
    assert training_phases(cfg, num_units=10) == [(0, 2, 1), (2, 4, 2), (4, 5, 3)]
    assert training_phases(cfg, num_units=2) == [(0, 2, 1), (2, 5, 2)]
    assert training_phases(Train(epochs=3, trainable_top=2), 5) == [(0, 3, 2)]


class TrainableLog(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.per_epoch = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch[epoch] = [layer.name for layer in self.model.layers if layer.trainable_weights]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from tests.conftest import TINY, write_recipe

    root = tmp_path_factory.mktemp("pre")
    data = json.loads(json.dumps(TINY))
    data["data"]["classes"] = [0, 1, 2, 3, 4]
    data["model"] = {"name": "simple_cnn", "filters": [8, 16], "batch_norm": True}
    data["train"]["epochs"] = 1
    return train(load(write_recipe(root / "pre.yaml", data)), run_dir=root / "run")


def test_gradual_unfreezes_on_the_right_epochs(pretrained, tiny_recipe, tmp_path):
    log = TrainableLog()
    recipe = load(tiny_recipe, [
        "data.classes=[5, 6, 7, 8, 9]", "data.samples_per_class=10",
        "model={name: simple_cnn, filters: [8, 16], batch_norm: true}",
        f"model.init={{from: {pretrained}, layers: '(?!logits$).*'}}",
        "finetune={strategy: gradual, every: 1}", "train.epochs=3", "train.batch_size=16"])
    run = train(recipe, run_dir=tmp_path / "g", callbacks=[log])
    assert log.per_epoch[0] == ["logits"]
    assert log.per_epoch[1] == ["conv2_1", "conv2_1_bn", "logits"]
    assert log.per_epoch[2] == ["conv1_1", "conv1_1_bn", "conv2_1", "conv2_1_bn", "logits"]
    info = json.loads((run / "finetune.json").read_text())
    assert [p["epochs"] for p in info["phases"]] == [[0, 1], [1, 2], [2, 3]]
    assert info["warm_start"]["loaded"] == ["conv1_1", "conv1_1_bn", "conv2_1", "conv2_1_bn"]
    assert "# frozen during epochs 1-1: conv1_1, conv1_1_bn, conv2_1, conv2_1_bn" in (run / "recipe.yaml").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["per_class"]) == 5 and sum(r["support"] for r in metrics["per_class"]) < 450


def test_nearest_source_matches_brute_force():
    rng = np.random.default_rng(0)
    target, source = rng.normal(size=(7, 5)), rng.normal(size=(40, 5))
    idx = nearest_source(target, source, 3)
    dist = ((target[:, None, :] - source[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.sort(np.argsort(dist, axis=1)[:, :3], axis=1))


def test_co_training_trains_both_heads(pretrained, tiny_recipe, tmp_path):
    recipe = load(tiny_recipe, [
        "data.classes=[5, 6, 7, 8, 9]", "data.samples_per_class=4",
        "model={name: simple_cnn, filters: [8, 16], batch_norm: true}",
        f"model.init={{from: {pretrained}, layers: '(?!logits$).*'}}",
        "finetune={strategy: full, co_training: {source: {type: digits}, classes: [0, 1, 2, 3, 4], "
        "neighbours: 2, layer: pool1, weight: 0.5}}",
        "train.epochs=2", "train.batch_size=8"])
    run = train(recipe, run_dir=tmp_path / "co")
    info = json.loads((run / "finetune.json").read_text())["co_training"]
    assert 2 <= info["selected"] <= 4 * 5 * 2 and sum(info["selected_per_class"]) == info["selected"]
    rows = (run / "history.csv").read_text().splitlines()
    assert "target_loss" in rows[0] and "source_loss" in rows[0] and "val_target_accuracy" in rows[0]
    model = keras.saving.load_model(run / "model.keras", compile=False)
    assert model.output_shape == (None, 5)  # export and evaluation see the target head only
    assert json.loads((run / "metrics.json").read_text())["num_samples"] > 0


def test_every_finetune_recipe_validates():
    files = sorted(RECIPES_DIR.glob("digits_finetune_*.yaml")) + [RECIPES_DIR / "digits_pretrain.yaml"]
    assert len(files) >= 6
    strategies = set()
    for f in files:
        r = load(f)
        if r.finetune:
            strategies.add(r.finetune.strategy)
            assert r.model.init is not None
    assert strategies == {"head_only", "top_k", "full", "gradual"}
