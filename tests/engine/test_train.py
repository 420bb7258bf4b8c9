"""Training end to end on tiny digits runs: run dir contents, determinism, resume, NaN."""

import csv
import json

import keras
import numpy as np
import pytest

from kcnn.engine.evaluate import evaluate
from kcnn.engine.rundir import RunDir
from kcnn.engine.train import train
from kcnn.errors import DataError, Interrupted, RunDirError, TrainingError
from kcnn.recipes import load, loads

METRIC_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "loss", "per_class", "confusion_matrix"}


def history_rows(run):
    with open(run / "history.csv") as fh:
        return list(csv.DictReader(fh))


def test_tiny_train_then_evaluate(tiny_recipe, tmp_path):
    recipe = load(tiny_recipe, ["evaluate.plots=true", "train.callbacks.tensorboard=true"])
    run = train(recipe, run_dir=tmp_path / "run")
    for name in ("recipe.yaml", "model.keras", "history.csv", "metrics.json", "preprocess.json",
                 "plots/curves.png", "plots/confusion_matrix.png", "checkpoints/state.json"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").rglob("events.out.tfevents*"))
    assert len(list((run / "checkpoints").glob("epoch-*.weights.h5"))) == 2  # the last two

    saved = loads((run / "recipe.yaml").read_text())
    assert saved.versions["kcnn"] and saved.versions["keras"] == keras.__version__
    assert saved.versions["tensorflow"]
    assert saved.model_copy(update={"versions": None}) == recipe

    metrics = json.loads((run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 450
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / 450)
    assert metrics["accuracy"] > 0.5  # two epochs of a tiny CNN already learn digits
    assert [r["support"] for r in metrics["per_class"]] == cm.sum(axis=1).tolist()

    rows = history_rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # as the console numbers them
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(rows[0])

    again = evaluate(run, split="test")
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])
    val = evaluate(run, split="val")
    assert val["num_samples"] == 135 and (run / "metrics_val.json").is_file()

    stats = json.loads((run / "preprocess.json").read_text())
    assert len(stats["mean"]) == 1 and 0 < stats["mean"][0] < 1  # rescaled by 1/16, train split


def test_same_seed_same_metrics(tiny_recipe, tmp_path):
    recipe = load(tiny_recipe, ["train.epochs=1", "data.augment.translate=0.1", "model.dropout=0.2"])
    a = json.loads((train(recipe, run_dir=tmp_path / "a") / "metrics.json").read_text())
    b = json.loads((train(recipe, run_dir=tmp_path / "b") / "metrics.json").read_text())
    assert a["loss"] == b["loss"] and a["confusion_matrix"] == b["confusion_matrix"]
    c = json.loads((train(load(tiny_recipe, ["train.epochs=1", "seed=3"]),
                          run_dir=tmp_path / "c") / "metrics.json").read_text())
    assert c["loss"] != a["loss"]


class Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_after_mid_epoch_interrupt_matches_uninterrupted_run(tiny_recipe, tmp_path):
    recipe = load(tiny_recipe, ["train.epochs=3", "train.batch_size=64", "data.augment.crop_padding=1",
                                "train.schedule={type: cosine}"])
    full = train(recipe, run_dir=tmp_path / "full")

    with pytest.raises(Interrupted, match=r"interrupted by SIGINT during epoch 2; .*cut keeps "
                                          r"epochs 1-1\. Resume with: kcnn train --resume"):
        train(recipe, run_dir=tmp_path / "cut", callbacks=[Interrupt(epoch=1, batch=5)])
    state = RunDir(tmp_path / "cut").read_state()
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert not (tmp_path / "cut" / "metrics.json").exists()

    resumed = train(resume=tmp_path / "cut")
    assert [int(r["epoch"]) for r in history_rows(resumed)] == [1, 2, 3]
    assert RunDir(resumed).read_state()["epoch"] == 3
    # Same data order, augmentation, optimizer state and schedule position: same model.
    m_full = keras.saving.load_model(full / "model.keras", compile=False)
    m_res = keras.saving.load_model(resumed / "model.keras", compile=False)
    for w1, w2 in zip(m_full.get_weights(), m_res.get_weights()):
        np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-6)
    lr_full = [float(r["learning_rate"]) for r in history_rows(full)]
    lr_res = [float(r["learning_rate"]) for r in history_rows(resumed)]
    assert lr_res == pytest.approx(lr_full)


def test_resume_of_finished_run_only_reevaluates(tiny_recipe, tmp_path):
    run = train(load(tiny_recipe, ["train.epochs=1"]), run_dir=tmp_path / "r")
    before = (run / "checkpoints" / "state.json").read_text()
    assert train(resume=run) == run
    assert (run / "checkpoints" / "state.json").read_text() == before


def test_resume_on_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError, match="not a kcnn run"):
        train(resume=tmp_path)
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    with pytest.raises(RunDirError, match="no checkpoints/state.json"):
        train(resume=tmp_path)


def test_nan_loss_stops_with_a_clear_message(tiny_recipe, tmp_path):
    recipe = load(tiny_recipe, ["train.optimizer={type: sgd, lr: 1.0e+12}", "model.batch_norm=false"])
    with pytest.raises(TrainingError, match=r"loss became NaN/inf at epoch 1, batch \d+"):
        train(recipe, run_dir=tmp_path / "nan")


def test_bad_data_leaves_no_run_dir(tiny_recipe, tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((10, 4, 4)))
    recipe = load(tiny_recipe, [f"data.source={{type: npz, path: {tmp_path / 'bad.npz'}}}"])
    with pytest.raises(DataError, match="missing array 'y'"):
        train(recipe, runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_step_schedule_and_warmup_reach_the_optimizer(tiny_recipe, tmp_path):
    recipe = load(tiny_recipe, ["train.epochs=3", "train.optimizer={type: sgd, lr: 0.1, momentum: 0.9}",
                                "train.schedule={type: step, boundaries: [2], factor: 0.1, warmup_epochs: 1}"])
    rows = history_rows(train(recipe, run_dir=tmp_path / "s"))
    lrs = [float(r["learning_rate"]) for r in rows]  # lr after each epoch's last step
    assert lrs == pytest.approx([0.1, 0.1, 0.01], rel=1e-5)
