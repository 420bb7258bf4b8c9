"""Pruning: filter pruning is exact surgery on the functional graph; magnitude masks stay zero."""

import json

import keras
import numpy as np
import pytest

from kcnn.compress.filters import filter_prune, plan_filter_pruning
from kcnn.compress.magnitude import apply_masks, magnitude_masks, prunable_kernels, remove_masks
from kcnn.compress.prune import round_sparsity
from tests.conftest import random_bn

X = np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype("float32")




def residual_model():
    """Conv → BN → ReLU, a residual Add, pooling, Conv → ReLU → Flatten → Dense → Dropout → Dense."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(0.5, name="rescale")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(x)
    x = keras.layers.BatchNormalization(name="b1")(x)
    a = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c2")(a)
    x = keras.layers.BatchNormalization(name="b2")(x)
    x = keras.layers.Add(name="add")([a, x])
    x = keras.layers.ReLU(name="r2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(12, 3, padding="same", name="c3")(x)
    x = keras.layers.ReLU(name="r3")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(16, activation="relu", name="fc")(x)
    x = keras.layers.Dropout(0.3, name="drop")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    random_bn(model)
    return model


def zero_removed_channels(model, plan):
    """The original model with every removed channel forced to zero: producers' kernel and
    bias columns, and BN's gamma and beta (so BN outputs 0 there)."""
    ref = keras.models.clone_model(model)
    ref.set_weights(model.get_weights())
    for layer in ref.layers:
        _, keep = plan.slices.get(layer.name, (None, None))
        if keep is None or not layer.weights:
            continue
        weights = layer.get_weights()
        n = weights[0].shape[-1]
        removed = sorted(set(range(n)) - set(keep))
        if isinstance(layer, keras.layers.BatchNormalization):
            weights[0][removed] = 0  # gamma
            weights[1][removed] = 0  # beta
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            for w in weights:  # kernel (last axis = outputs) and bias
                w[..., removed] = 0
        layer.set_weights(weights)
    return ref


def test_filter_pruning_is_exact_surgery():
    model = residual_model()
    pruned, plan = filter_prune(model, 0.5)
    counts = {layer.name: getattr(layer, "filters", None) or layer.units
              for layer in pruned.layers
              if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))}
    assert counts == {"c1": 4, "c2": 4, "c3": 6, "fc": 8, "logits": 10}
    assert pruned.get_layer("b1").gamma.shape == (4,)
    assert pruned.get_layer("fc").kernel.shape == (4 * 4 * 6, 8)  # rows of the kept channels
    # The residual pair is one group: the same channels leave both branches.
    groups = {tuple(g.producers): g for g in plan.groups}
    assert set(groups) == {("c1", "c2"), ("c3",), ("fc",)}
    assert plan.unprunable == {"logits": "model output"}
    keep = groups[("c1", "c2")].keep
    scores = np.asarray(groups[("c1", "c2")].scores)

    def folded_l1(conv, bn):  # L1 norm of each filter with the following BN folded in
        gamma, _, _, var = model.get_layer(bn).get_weights()
        kernel = model.get_layer(conv).kernel.numpy()
        return np.abs(kernel).sum(axis=(0, 1, 2)) * np.abs(gamma) / np.sqrt(var + 1e-3)

    l1 = folded_l1("c1", "b1") + folded_l1("c2", "b2")
    np.testing.assert_allclose(scores, l1, rtol=1e-5)
    assert keep == sorted(np.argsort(-l1)[:4].tolist())  # the largest L1 norms stay
    raw = plan_filter_pruning(model, 0.5, criterion="l1")
    c3 = model.get_layer("c3").kernel.numpy()
    np.testing.assert_allclose(
        next(g.scores for g in raw.groups if g.producers == ["c3"]),
        np.abs(c3).sum(axis=(0, 1, 2)), rtol=1e-6)

    reference = zero_removed_channels(model, plan)
    out = keras.ops.convert_to_numpy(pruned(X))
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(reference(X)), atol=1e-5,
                               rtol=1e-5)
    # ... and pruning changed something (the removed channels did contribute).
    assert np.abs(out - keras.ops.convert_to_numpy(model(X))).max() > 1e-3
    assert pruned.count_params() < model.count_params()


def test_channels_feeding_an_opaque_layer_stay():
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(6, 3, name="a")(inputs)
    b = keras.layers.Conv2D(6, 3, name="b")(inputs)
    x = keras.layers.Concatenate(name="cat")([a, b])
    x = keras.layers.Conv2D(8, 1, name="c")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    pruned, plan = filter_prune(model, 0.5)
    assert plan.unprunable["a"] == "feeds Concatenate 'cat'"
    assert pruned.get_layer("a").filters == 6 and pruned.get_layer("b").filters == 6
    assert pruned.get_layer("c").filters == 4
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(pruned(X)),
        keras.ops.convert_to_numpy(zero_removed_channels(model, plan)(X)), atol=1e-5)


def test_keep_counts_and_rounds():
    model = residual_model()
    plan = plan_filter_pruning(model, keep_counts={"c1": 7, "c3": 3, "fc": 16})
    kept = {g.producers[0]: (g.channels if g.keep is None else len(g.keep)) for g in plan.groups}
    assert kept == {"c1": 7, "c3": 3, "fc": 16}
    assert round_sparsity(0.5, 3, 3) == pytest.approx(0.5)
    assert round_sparsity(0.5, 1, 2) == pytest.approx(1 - 0.5 ** 0.5)


def test_magnitude_masks_stay_zero_after_fine_tuning():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(x))
    masks = magnitude_masks(model, 0.6)
    for key, var in prunable_kernels(model):
        w = var.numpy()
        assert masks[key].sum() == w.size - round(0.6 * w.size)
        # every dropped weight is no larger than every kept one
        assert np.abs(w[masks[key] == 0]).max() <= np.abs(w[masks[key] == 1]).min()
    apply_masks(model, masks)
    before = {k: v.numpy().copy() for k, v in prunable_kernels(model)}
    model.compile(keras.optimizers.Adam(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    y = np.arange(len(X)) % 3
    model.fit(X, y, epochs=3, batch_size=2, verbose=0)
    for key, var in prunable_kernels(model):
        w = var.numpy()
        assert np.all(w[masks[key] == 0] == 0), key
        assert not np.allclose(w[masks[key] == 1], before[key][masks[key] == 1]), key
    remove_masks(model)
    assert all(var.constraint is None for _, var in prunable_kernels(model))
    # The next round's masks (higher sparsity) contain this round's: zeros go first.
    for key, mask in magnitude_masks(model, 0.8).items():
        assert np.all(mask[masks[key] == 0] == 0)


def test_magnitude_prune_run_writes_plain_model_and_masks(trained_run, tmp_path):
    from kcnn.compress.prune import prune_run
    from kcnn.engine.rundir import RunDir
    from kcnn.saving import load_keras_model

    out, info = prune_run(trained_run, method="magnitude", sparsity=0.6, rounds=1,
                          finetune_epochs=1, out=tmp_path / "mag", tflite=False, verbose=0,
                          log=lambda m: None)
    assert out == tmp_path / "mag"
    run = RunDir.open(out)
    assert run.read_state()["checkpoint"] is None
    model = load_keras_model(run.model)
    masks = np.load(out / "masks.npz")
    for layer in model.layers:
        if layer.name in ("conv1_1", "conv2_1", "logits"):
            k = layer.kernel.numpy()
            mask = masks[f"{layer.name}__kernel"]
            assert np.all(k[mask == 0] == 0)
            assert np.mean(k == 0) == pytest.approx(0.6, abs=0.02)
    saved = json.loads((out / "compress.json").read_text())
    assert saved["method"] == "prune-magnitude" and [r["round"] for r in saved["rounds"]] == [1]
    assert saved["after"]["nonzero_params"] < saved["before"]["nonzero_params"]
    assert (out / "history.csv").read_text().count("\n") == 2  # header + 1 epoch
    assert (out / "recipe.yaml").read_text() == (trained_run / "recipe.yaml").read_text()
    assert not list(tmp_path.glob(".mag.tmp-*"))
