"""Knowledge distillation: the loss against NumPy, the Distiller, the recipe section, training."""

import json

import keras
import numpy as np
import pytest

from kcnn.engine.distill import Distiller, distillation_loss, resolve_teacher
from kcnn.errors import Interrupted, KcnnError, RecipeError
from kcnn.recipes import load


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_distillation(y, s, t, temperature, alpha):
    log_p = np_log_softmax(t / temperature)
    log_q = np_log_softmax(s / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1).mean()
    ce = -np_log_softmax(s)[np.arange(len(y)), y].mean()
    return alpha * temperature**2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize("temperature,alpha", [(4.0, 0.9), (1.0, 0.5), (2.5, 0.0), (3.0, 1.0)])
def test_loss_matches_numpy(temperature, alpha):
    rng = np.random.default_rng(0)
    s = rng.normal(size=(8, 5)).astype("float32") * 3
    t = rng.normal(size=(8, 5)).astype("float32") * 3
    y = rng.integers(0, 5, 8)
    got = float(keras.ops.convert_to_numpy(
        distillation_loss(y, s, t, temperature=temperature, alpha=alpha)))
    assert got == pytest.approx(np_distillation(y, s.astype("float64"), t.astype("float64"),
                                                temperature, alpha), rel=1e-5)


def test_same_logits_leave_only_the_hard_term():
    s = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    y = np.array([0, 1, 2, 0])
    loss = float(keras.ops.convert_to_numpy(distillation_loss(y, s, s, temperature=4, alpha=0.9)))
    assert loss == pytest.approx(0.1 * np_distillation(y, s, s, 4, 0.0), rel=1e-5)


def _tiny(units, name, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(units, name=f"{name}_out")(inputs), name=name)


def test_distiller_trains_the_student_only_and_saves_it(tmp_path):
    student, teacher = _tiny(3, "student", 0), _tiny(3, "teacher", 1)
    distiller = Distiller(student, teacher, temperature=2.0, alpha=0.7)
    distiller.compile(keras.optimizers.SGD(0.1),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.integers(0, 3, 16)
    expected = np_distillation(y, student.predict(x, verbose=0).astype("float64"),
                               teacher.predict(x, verbose=0).astype("float64"), 2.0, 0.7)
    got = distiller.compute_loss(x, y, distiller(x), training=False)
    assert float(keras.ops.convert_to_numpy(got)) == pytest.approx(expected, rel=1e-5)
    # The teacher's weights are not the distiller's: only the student trains.
    assert len(distiller.trainable_variables) == 2
    t_before = [w.copy() for w in teacher.get_weights()]
    s_before = [w.copy() for w in student.get_weights()]
    distiller.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(t_before, teacher.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(s_before, student.get_weights()))
    distiller.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert loaded.name == "student" and [layer.name for layer in loaded.layers][-1] == "student_out"


def test_teacher_path_resolution(tmp_path):
    for name in ("20250101-000000", "20250102-000000", ".hidden"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.keras").write_bytes(b"x")
    assert resolve_teacher(tmp_path) == (tmp_path / "20250102-000000" / "model.keras").resolve()
    assert resolve_teacher(tmp_path / "20250101-000000").name == "model.keras"
    with pytest.raises(KcnnError, match="distill.teacher: no trained teacher at"):
        resolve_teacher(tmp_path / "missing")


def test_recipes_validate_without_a_teacher_and_check_values():
    from kcnn.recipes.load import RECIPES_DIR

    recipe = load(RECIPES_DIR / "digits_distill.yaml")
    assert recipe.distill.temperature == 4 and recipe.distill.alpha == 0.9
    assert load(RECIPES_DIR / "digits_distill.yaml", ["distill=null"]).distill is None
    assert load(RECIPES_DIR / "digits_teacher.yaml").name == "digits_teacher"
    with pytest.raises(RecipeError, match=r"distill.alpha: must be <= 1"):
        load(RECIPES_DIR / "digits_distill.yaml", ["distill.alpha=1.5"])
    with pytest.raises(RecipeError, match=r"distill.temperature: must be > 0"):
        load(RECIPES_DIR / "digits_distill.yaml", ["distill.temperature=0"])


class Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption")


def test_distilled_training_saves_the_plain_student_and_resumes(trained_run, tiny_bn_recipe,
                                                                tmp_path):
    from kcnn.engine.rundir import RunDir
    from kcnn.engine.train import train
    from kcnn.saving import load_keras_model

    recipe = load(tiny_bn_recipe, [f"distill.teacher={trained_run}", "model.filters=[4, 8]",
                                   "distill.temperature=3", "name=student"])
    run_dir = tmp_path / "student"
    with pytest.raises(Interrupted, match="keeps epochs 1-1"):
        train(recipe, run_dir=run_dir, callbacks=[Interrupt()])
    run = RunDir.open(run_dir)
    assert run.read_state()["epoch"] == 1
    saved = load(run.recipe)
    assert saved.distill.teacher == str((trained_run / "model.keras").resolve())
    train(resume=run_dir)
    assert run.read_state()["epoch"] == 2
    student = load_keras_model(run.model)
    assert student.name == "simple_cnn"
    assert [layer.filters for layer in student.layers if hasattr(layer, "filters")] == [4, 8]
    teacher = load_keras_model(trained_run / "model.keras")
    assert student.count_params() < teacher.count_params()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.1 and len(metrics["per_class"]) == 10
