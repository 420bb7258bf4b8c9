"""Cost-sensitive losses against hand-computed NumPy values; class weights; make_loss errors."""

import keras
import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from kcnn.errors import DataError, RecipeError
from kcnn.losses import LOSSES, make_loss
from kcnn.losses.basic import CrossEntropy
from kcnn.losses.cost_matrix import CostMatrixLoss, expected_cost
from kcnn.losses.focal import FocalLoss
from kcnn.losses.logit_adjusted import LogitAdjustedLoss
from kcnn.losses.weights import balanced_weights, effective_number_weights
from kcnn.recipes import schema as S

Z = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-2.0, 3.0, 1.0], [1.0, 1.0, -4.0]], "float32")
Y = np.array([0, 2, 1, 2])


def log_softmax(z):
    z = z.astype("float64")
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def value(loss, y=Y, z=Z, sample_weight=None):
    return float(keras.ops.convert_to_numpy(loss(y, z, sample_weight=sample_weight)))


def test_weighted_cross_entropy():
    w = np.array([1.0, 2.0, 4.0])
    expected = np.mean(-w[Y] * log_softmax(Z)[np.arange(4), Y])
    assert value(CrossEntropy(3, class_weights=w.tolist())) == pytest.approx(expected, rel=1e-6)
    assert value(CrossEntropy(3)) == pytest.approx(np.mean(-log_softmax(Z)[np.arange(4), Y]), rel=1e-6)
    # label smoothing and weights combine: w_y · (−Σ q log p)
    q = np.eye(3)[Y] * 0.9 + 0.1 / 3
    smoothed = np.mean(w[Y] * -(q * log_softmax(Z)).sum(axis=1))
    assert value(CrossEntropy(3, 0.1, w.tolist())) == pytest.approx(smoothed, rel=1e-6)


def test_per_sample_weights_multiply_the_per_sample_loss():
    sw = np.array([0.0, 1.0, 3.0, 0.5], "float32")
    per_sample = -log_softmax(Z)[np.arange(4), Y]
    assert value(CrossEntropy(3), sample_weight=sw) == pytest.approx(np.mean(sw * per_sample), rel=1e-6)


def test_focal_loss():
    logp = log_softmax(Z)[np.arange(4), Y]
    p = np.exp(logp)
    alpha = np.array([0.25, 1.0, 2.0])
    expected = np.mean(-alpha[Y] * (1 - p) ** 2 * logp)
    assert value(FocalLoss(3, gamma=2.0, alpha=alpha.tolist())) == pytest.approx(expected, rel=1e-5)
    assert value(FocalLoss(3, gamma=0.5)) == pytest.approx(np.mean(-((1 - p) ** 0.5) * logp), rel=1e-5)
    assert value(FocalLoss(3, gamma=0.0)) == pytest.approx(value(CrossEntropy(3)), rel=1e-6)
    # hand value: logits [2, 0, 0], label 0 → p = e²/(e²+2)
    p0 = np.e**2 / (np.e**2 + 2)
    assert value(FocalLoss(3, gamma=2.0), [0], [[2.0, 0.0, 0.0]]) == pytest.approx(
        -(1 - p0) ** 2 * np.log(p0), rel=1e-5)


def test_cost_matrix_loss():
    c = np.array([[0, 1, 2], [10, 0, 1], [5, 5, 0]], "float64")
    p = np.exp(log_softmax(Z))
    ec = (p * c[Y]).sum(axis=1)
    assert value(CostMatrixLoss(3, c.tolist())) == pytest.approx(ec.mean(), rel=1e-5)
    ce = -log_softmax(Z)[np.arange(4), Y]
    assert value(CostMatrixLoss(3, c.tolist(), cross_entropy_weight=0.5)) == pytest.approx(
        np.mean(ec + 0.5 * ce), rel=1e-5)
    assert value(CostMatrixLoss(2, [[0, 1], [5, 0]]), [1], [[0.0, 0.0]]) == pytest.approx(2.5)
    assert expected_cost([0, 1, 2, 2], [0, 0, 1, 2], c) == pytest.approx((0 + 10 + 5 + 0) / 4)


@pytest.mark.parametrize("bad, match", [
    ([[0, 1], [1, 0], [1, 1]], "must be 3×3"),
    ([[0, -1, 0], [1, 0, 0], [1, 1, 0]], ">= 0"),
    ([[1, 1, 0], [1, 0, 0], [1, 1, 0]], "diagonal must be 0"),
])
def test_cost_matrix_loss_validates(bad, match):
    with pytest.raises(ValueError, match=match):
        CostMatrixLoss(3, bad)


def test_logit_adjusted_loss_and_post_hoc_variant():
    priors = np.array([0.7, 0.2, 0.1])
    tau = 1.5
    shifted = Z + tau * np.log(priors)
    expected = np.mean(-log_softmax(shifted)[np.arange(4), Y])
    loss = LogitAdjustedLoss(3, priors.tolist(), tau=tau)
    assert value(loss) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_array_equal(loss.adjust_logits(Z), Z)  # trained adjusted: predict with raw z
    post = LogitAdjustedLoss(3, priors.tolist(), tau=tau, post_hoc=True)
    assert value(post) == pytest.approx(value(CrossEntropy(3)), rel=1e-6)
    np.testing.assert_allclose(post.adjust_logits(Z), Z - tau * np.log(priors), rtol=1e-6)
    # the adjustment turns a majority prediction into a minority one here
    assert np.argmax(Z[3]) == 0 and np.argmax(post.adjust_logits(Z)[3]) == 1


def test_balanced_and_effective_number_weights():
    y = np.repeat([0, 1, 2], [100, 10, 1])
    counts = np.bincount(y)
    np.testing.assert_allclose(balanced_weights(counts),
                               compute_class_weight("balanced", classes=np.arange(3), y=y))
    beta = 0.99
    raw = np.array([(1 - beta) / (1 - beta**100), (1 - beta) / (1 - beta**10), 1.0])
    np.testing.assert_allclose(effective_number_weights(counts, beta), raw * 3 / raw.sum())
    # hand values: E_n = (1 − β^n)/(1 − β): 63.397, 9.562, 1
    en = np.array([63.3968, 9.5618, 1.0])
    np.testing.assert_allclose(effective_number_weights(counts, beta), (1 / en) * 3 / (1 / en).sum(),
                               rtol=1e-4)
    np.testing.assert_allclose(effective_number_weights(counts, 0.0), [1, 1, 1])
    inv = 1 / counts
    np.testing.assert_allclose(effective_number_weights(counts, 1 - 1e-9), inv * 3 / inv.sum(), rtol=1e-5)


def test_make_loss_resolves_recipe_settings_from_class_counts():
    counts = [100, 10, 1]
    ce = make_loss(S.CrossEntropyLoss(type="cross_entropy", class_weights="balanced"), 3, counts)
    np.testing.assert_allclose(ce.class_weights, [111 / 300, 111 / 30, 111 / 3])
    en = make_loss(S.CrossEntropyLoss(type="cross_entropy", class_weights="effective_number", beta=0.9),
                   3, counts)
    np.testing.assert_allclose(en.class_weights, effective_number_weights(counts, 0.9))
    focal = make_loss(S.FocalLoss(type="focal", gamma=1.0, alpha=[1, 2, 3]), 3, counts)
    assert focal.alpha == [1, 2, 3] and focal.gamma == 1.0
    la = make_loss(S.LogitAdjustedLoss(type="logit_adjusted", tau=0.5), 3, counts)
    np.testing.assert_allclose(la.priors, np.array(counts) / 111)
    cm = make_loss(S.CostMatrixLoss(type="cost_matrix", matrix=[[0, 1], [2, 0]]), 2)
    assert cm.matrix == [[0, 1], [2, 0]]


def test_squared_error_regression_and_l2_classification():
    from kcnn.losses.basic import SquaredError

    pred = np.array([[1.0], [2.0], [-1.0]], "float32")
    target = np.array([0.5, 2.0, 1.0], "float32")  # (N,) against (N, 1): one target
    reg = make_loss(S.SquaredErrorLoss(type="mse"), 1, regression=True)
    assert reg.regression and value(reg, target, pred) == pytest.approx((0.25 + 0 + 4) / 3, rel=1e-6)
    two = SquaredError(2, regression=True)
    y2, z2 = np.array([[1.0, 0.0], [0.0, 3.0]], "float32"), np.array([[0.0, 0.0], [1.0, 1.0]], "float32")
    assert value(two, y2, z2) == pytest.approx(np.mean((y2 - z2) ** 2), rel=1e-6)
    assert keras.losses.deserialize(keras.losses.serialize(two)).get_config() == two.get_config()
    probs = np.exp(log_softmax(Z))  # classification: softmax against one-hot labels
    expected = np.mean(np.mean((probs - np.eye(3)[Y]) ** 2, axis=1))
    assert value(SquaredError(3)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(RecipeError, match="train.loss.type: 'focal' needs class labels"):
        make_loss(S.FocalLoss(type="focal"), 1, regression=True)


def test_make_loss_errors():
    with pytest.raises(RecipeError, match=r"train.loss.class_weights: has 2 entries but the data has 3"):
        make_loss(S.CrossEntropyLoss(type="cross_entropy", class_weights=[1, 2]), 3, [5, 5, 5])
    with pytest.raises(RecipeError, match=r"train.loss.alpha: has 4 entries"):
        make_loss(S.FocalLoss(type="focal", alpha=[1, 2, 3, 4]), 3, [5, 5, 5])
    with pytest.raises(RecipeError, match=r"train.loss.matrix: is 2×2 but the data has 3 classes"):
        make_loss(S.CostMatrixLoss(type="cost_matrix", matrix=[[0, 1], [2, 0]]), 3)
    with pytest.raises(DataError, match="class 'cat' has none"):
        make_loss(S.CrossEntropyLoss(type="cross_entropy", class_weights="balanced"), 3, [4, 0, 2],
                  ["dog", "cat", "cow"])
    with pytest.raises(RecipeError, match="class counts"):
        make_loss(S.LogitAdjustedLoss(type="logit_adjusted"), 3)


@pytest.mark.parametrize("loss", [
    CrossEntropy(3, 0.1, [1.0, 2.0, 3.0]),
    FocalLoss(3, 1.5, [0.5, 1.0, 1.0]),
    CostMatrixLoss(3, [[0, 1, 2], [3, 0, 1], [1, 1, 0]], 0.3),
    LogitAdjustedLoss(3, [0.5, 0.3, 0.2], 1.2, post_hoc=True),
    LOSSES.get("mse")(3),
])
def test_config_round_trip_through_keras_serialization(loss):
    config = keras.losses.serialize(loss)
    again = keras.losses.deserialize(config)
    assert type(again) is type(loss)
    assert again.get_config() == loss.get_config()
    assert value(again) == pytest.approx(value(loss), rel=1e-6)


def test_every_registered_loss_is_in_the_recipe_schema():
    assert set(LOSSES.names()) == set(S.type_names(S.Loss))


def test_losses_train_a_model_and_save_with_it(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile("adam", loss=FocalLoss(3, 2.0, [1.0, 2.0, 3.0]))
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    model.fit(x, np.arange(16) % 3, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(again.loss, FocalLoss) and again.loss.alpha == [1.0, 2.0, 3.0]
