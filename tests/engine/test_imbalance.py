"""Imbalanced data end to end: long-tailed splits, per-sample costs, imbalance metrics, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from imblearn.metrics import geometric_mean_score

from kcnn.data.sources import Dataset, Split, load_dataset
from kcnn.engine.evaluate import classification_metrics, format_report, score_logits
from kcnn.engine.train import train
from kcnn.errors import DataError, RecipeError
from kcnn.recipes import load, loads
from kcnn.recipes import schema as S
from kcnn.recipes.load import RECIPES_DIR
from tests.conftest import write_recipe


# ----------------------------------------------------------------------------- long tail
def test_exp_long_tail_counts_and_untouched_val_test():
    plain = load_dataset(S.Data(source={"type": "digits"}))
    lt = load_dataset(S.Data(source={"type": "digits"}, long_tail={"ratio": 20}))
    # n_max = 123; n_c = round(123 · 20^(−c/9)), capped by what class c has (class 0: 120)
    assert np.bincount(lt.train.y).tolist() == [120, 88, 63, 45, 32, 23, 17, 12, 9, 6]
    for name in ("val", "test"):
        np.testing.assert_array_equal(lt.split(name).x, plain.split(name).x)
        np.testing.assert_array_equal(lt.split(name).y, plain.split(name).y)
    # the long-tailed images are a subset of the plain training images
    plain_rows = {row.tobytes() for row in plain.train.x}
    assert all(row.tobytes() in plain_rows for row in lt.train.x)
    again = load_dataset(S.Data(source={"type": "digits"}, long_tail={"ratio": 20}))
    np.testing.assert_array_equal(again.train.x, lt.train.x)
    other = load_dataset(S.Data(source={"type": "digits"}, long_tail={"ratio": 20, "seed": 1}))
    assert not np.array_equal(other.train.x, lt.train.x)


def test_step_long_tail_reduces_half_the_classes():
    lt = load_dataset(S.Data(source={"type": "digits"}, long_tail={"ratio": 20, "profile": "step"}))
    assert np.bincount(lt.train.y).tolist() == [120, 122, 120, 123, 122, 6, 6, 6, 6, 6]


def test_long_tail_ratio_below_one_is_a_recipe_error(tiny_recipe_dict, tmp_path):
    tiny_recipe_dict["data"]["long_tail"] = {"ratio": 0.5}
    with pytest.raises(RecipeError, match=r"data.long_tail.ratio: must be >= 1 \(got 0.5\)"):
        load(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict))


# ----------------------------------------------------------------------------- per-sample costs
def _npz(tmp_path, n=60, **extra):
    x = np.repeat(np.arange(n, dtype="float32")[:, None, None], 4, axis=1)[..., None]
    x = np.repeat(x, 4, axis=2)  # (n, 4, 4, 1), every pixel = sample number
    y = np.arange(n) % 3
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, **extra)
    return path


def test_npz_cost_vector_follows_its_samples_into_the_pipeline(tmp_path):
    from kcnn.data.pipeline import EpochFeeder, train_dataset
    from kcnn.data.samplers import ShuffleSampler

    path = _npz(tmp_path, cost=np.arange(60, dtype="float32") / 10)
    data = load_dataset(S.Data(source={"type": "npz", "path": str(path)}, split={"val": 0.2, "test": 0.2}))
    for split in (data.train, data.val, data.test):
        np.testing.assert_allclose(split.w, split.x[:, 0, 0, 0] / 10)
    feeder = EpochFeeder(ShuffleSampler(data.train.y, 3, seed=0), 8, 0, 1)
    for x, y, w in train_dataset(data.train, feeder, S.Augment(), seed=0).as_numpy_iterator():
        np.testing.assert_allclose(w, x[:, 0, 0, 0] / 10)
        np.testing.assert_array_equal(y, x[:, 0, 0, 0].astype(int) % 3)


@pytest.mark.parametrize("extra, match", [
    ({"w": -np.ones(60)}, "finite and >= 0"),
    ({"w": np.ones(59)}, "must be 60 numbers"),
    ({"w": np.zeros(60)}, "all zeros"),
    ({"w": np.ones(60), "cost": np.ones(60)}, "not both"),
])
def test_bad_cost_vectors(tmp_path, extra, match):
    path = _npz(tmp_path, **extra)
    with pytest.raises(DataError, match=match):
        load_dataset(S.Data(source={"type": "npz", "path": str(path)}))


# ----------------------------------------------------------------------------- metrics
def test_g_mean_expected_cost_and_report():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 0, 2, 2, 0, 2])
    logits = np.eye(3)[pred]
    cost = np.array([[0, 1, 1], [5, 0, 1], [2, 2, 0]])
    m = classification_metrics(y, logits, ["a", "b", "c"], 0.5, cost)
    assert m["g_mean"] == pytest.approx(geometric_mean_score(y, pred))
    assert m["g_mean"] == pytest.approx((2 / 3 * 1 / 2 * 3 / 4) ** (1 / 3))
    assert m["expected_cost"] == pytest.approx((1 + 5 + 2) / 9)
    report = format_report({**m, "split": "test", "num_samples": 9})
    assert "g_mean 0.6300" in report and "expected_cost 0.8889" in report
    header = report.splitlines()[3].split()
    assert header == ["class", "precision", "recall", "f1", "support"]
    assert report.splitlines()[5].split() == ["b", "0.500", "0.500", "0.500", "2"]
    assert "expected_cost" not in classification_metrics(y, logits, ["a", "b", "c"], 0.5)


def test_post_hoc_logit_adjustment_changes_predictions_at_evaluation():
    counts = [90, 9, 1]
    y_train = np.repeat([0, 1, 2], counts)
    data = Dataset(Split(np.zeros((100, 2, 2, 1)), y_train), Split(np.zeros((0, 2, 2, 1)), y_train[:0]),
                   Split(np.zeros((3, 2, 2, 1)), np.array([0, 1, 2])), 3, ["a", "b", "c"])
    logits = np.array([[8.0, 0.0, 0.0], [3.0, 2.5, 0.0], [1.0, 0.0, 0.5]], "float32")
    base = dict(name="t", data={"source": {"type": "digits"}}, model={"name": "simple_cnn"})
    plain = S.Recipe(**base, train={"loss": {"type": "logit_adjusted", "tau": 1.0}})
    post = S.Recipe(**base, train={"loss": {"type": "logit_adjusted", "tau": 1.0, "post_hoc": True}})
    assert score_logits(plain, data, data.test.y, logits)["accuracy"] == pytest.approx(1 / 3)
    # z − log π adds 0.105, 2.408 and 4.605 to the three logits: rows 2 and 3 flip to their class
    assert score_logits(post, data, data.test.y, logits)["balanced_accuracy"] == pytest.approx(1.0)


def test_tune_tau_picks_the_best_balanced_accuracy_and_prefers_the_given_tau():
    from kcnn.losses.logit_adjusted import tune_tau

    priors = np.array([0.8, 0.2])  # z − τ·log π moves class 1 up by τ·log 4 ≈ 1.386τ against class 0
    y = np.array([0, 0, 1, 1])
    margins = np.array([2.0, 3.0, 0.5, 1.2])  # z_0 − z_1: class 1 wins once 1.386τ exceeds it
    logits = np.stack([margins, np.zeros(4)], axis=1)
    tau, scores = tune_tau(logits, y, priors)
    assert set(scores) == {0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0}
    assert [scores[t] for t in (0.0, 0.5, 1.0, 1.25, 1.5, 2.25)] == pytest.approx(
        [0.5, 0.75, 1.0, 1.0, 0.75, 0.5])
    assert tau == 1.0  # 1.0 and 1.25 tie at 1.0; the preferred τ wins
    assert tune_tau(logits, y, priors, prefer=3.0)[0] == 1.25


def test_tune_tau_needs_post_hoc():
    with pytest.raises(ValueError, match="tune_tau needs post_hoc: true"):
        S.LogitAdjustedLoss(type="logit_adjusted", tune_tau=True)


# ----------------------------------------------------------------------------- end to end
def test_tuned_post_hoc_tau_is_written_into_the_run(tiny_recipe_dict, tmp_path):
    from kcnn.engine.evaluate import evaluate

    tiny_recipe_dict["data"]["long_tail"] = {"ratio": 10}
    tiny_recipe_dict["train"]["epochs"] = 1
    tiny_recipe_dict["train"]["loss"] = {"type": "logit_adjusted", "post_hoc": True, "tune_tau": True}
    run = train(load(write_recipe(tmp_path / "t.yaml", tiny_recipe_dict)), run_dir=tmp_path / "r")
    tuned = json.loads((run / "post_hoc_tau.json").read_text())
    scores = tuned["balanced_accuracy_by_tau"]
    assert tuned["split"] == "val" and len(scores) == 13
    assert scores[str(tuned["tau"])] == pytest.approx(max(scores.values()))
    saved = loads((run / "recipe.yaml").read_text())
    assert saved.train.loss.tau == tuned["tau"] and saved.versions["kcnn"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["post_hoc_tau"] == tuned["tau"]
    again = evaluate(run, write=False)  # kcnn evaluate predicts with the tuned τ from recipe.yaml
    assert again["balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"])


def test_digits_lt_cost_matrix_recipe_trains_one_epoch(tmp_path):
    path = RECIPES_DIR / "digits_lt_cost_matrix.yaml"
    recipe = load(path, ["train.epochs=1", "train.verbose=0", "evaluate.plots=false"])
    run = train(recipe, run_dir=tmp_path / "r")
    metrics = json.loads((run / "metrics.json").read_text())
    saved = loads((run / "recipe.yaml").read_text())
    matrix = np.array(saved.train.loss.matrix)  # the CSV, inlined in the resolved recipe
    assert matrix.shape == (10, 10) and matrix[9, 0] == pytest.approx(4.47)
    cm = np.array(metrics["confusion_matrix"])
    assert cm.sum() == 450  # the test split is not long-tailed
    assert metrics["expected_cost"] == pytest.approx((cm * matrix).sum() / cm.sum())
    recalls = np.array([r["recall"] for r in metrics["per_class"]])
    expected_g = 0.0 if recalls.min() == 0 else float(np.exp(np.log(recalls).mean()))
    assert metrics["g_mean"] == pytest.approx(expected_g)
    assert metrics["balanced_accuracy"] == pytest.approx(recalls.mean())
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    assert json.loads((run / "checkpoints" / "state.json").read_text())["epoch"] == 1


def test_wrong_shape_cost_matrix_fails_before_the_run_dir(tiny_recipe_dict, tmp_path):
    tiny_recipe_dict["train"]["loss"] = {"type": "cost_matrix", "matrix": [[0, 1, 1], [1, 0, 1], [1, 1, 0]]}
    recipe = load(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict))
    with pytest.raises(RecipeError, match=r"train.loss.matrix: is 3×3 but the data has 10 classes"):
        train(recipe, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_balancing_sampler_names_the_empty_class(tiny_recipe_dict, tmp_path):
    tiny_recipe_dict["data"]["num_classes"] = 11
    tiny_recipe_dict["data"]["sampler"] = {"type": "class_balanced"}
    recipe = load(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict))
    with pytest.raises(DataError, match="class '10' has no samples in the training split"):
        train(recipe, run_dir=tmp_path / "run")


def test_class_weights_of_the_wrong_length(tiny_recipe_dict, tmp_path):
    tiny_recipe_dict["train"]["loss"] = {"type": "cross_entropy", "class_weights": [1, 2, 3]}
    recipe = load(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict))
    with pytest.raises(RecipeError, match="train.loss.class_weights: has 3 entries but the data has 10"):
        train(recipe, run_dir=tmp_path / "run")


BAD_MATRICES = {
    "negative": ([[0, -1], [1, 0]], "train.loss.matrix: entries must be >= 0 (got -1 at [0][1])"),
    "diagonal": ([[0, 1], [1, 2]], "train.loss.matrix: the diagonal must be 0"),
    "ragged": ([[0, 1, 1], [1, 0]], "train.loss.matrix: must be square"),
}


def kcnn_cli(*args):
    return subprocess.run([sys.executable, "-m", "kcnn.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_cost_matrix_exits_2(tiny_recipe_dict, tmp_path):
    paths = {}
    for name, (matrix, _) in BAD_MATRICES.items():
        tiny_recipe_dict["train"]["loss"] = {"type": "cost_matrix", "matrix": matrix}
        paths[name] = write_recipe(tmp_path / f"{name}.yaml", tiny_recipe_dict)
    out = kcnn_cli("train", paths["negative"], "--run-dir", tmp_path / "run")
    assert out.returncode == 2, out.stderr
    assert BAD_MATRICES["negative"][1] in out.stderr and "negative.yaml" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()
    out = kcnn_cli("recipe", "validate", *paths.values())
    assert out.returncode == 2
    for name, (_, message) in BAD_MATRICES.items():
        assert f"{name}.yaml: {message}" in out.stderr


def test_cost_matrix_csv_is_read_relative_to_the_recipe(tiny_recipe_dict, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "cost.csv").write_text("# true class per row\n0, 2\n3, 0\n")
    tiny_recipe_dict["train"]["loss"] = {"type": "cost_matrix", "matrix": "cost.csv"}
    recipe = load(write_recipe(tmp_path / "sub" / "r.yaml", tiny_recipe_dict))
    assert recipe.train.loss.matrix == [[0, 2], [3, 0]]
    (tmp_path / "sub" / "cost.csv").write_text("0,x\n1,0\n")
    with pytest.raises(RecipeError, match="non-numeric"):
        load(tmp_path / "sub" / "r.yaml")


def test_every_digits_lt_recipe_is_valid_and_changes_one_thing():
    base = load(RECIPES_DIR / "digits_lt_base.yaml")
    assert base.data.long_tail.ratio == 20 and base.data.long_tail.profile == "exp"
    recipes = sorted(RECIPES_DIR.glob("digits_lt_*.yaml"))
    seen = set()
    for path in recipes:
        r = load(path)
        assert r.data.long_tail == base.data.long_tail, path
        assert r.model == base.model, path
        seen.add(r.data.sampler.type)
        seen.add(r.train.loss.type)
    assert seen >= {"shuffle", "batch_downsample", "class_balanced", "label_shuffling", "cross_entropy",
                    "focal", "cost_matrix", "logit_adjusted"}
    assert yaml.safe_load((RECIPES_DIR / "digits_lt_progressive.yaml").read_text())["data"]["sampler"][
        "progressive"] is True
