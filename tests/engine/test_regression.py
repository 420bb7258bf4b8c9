"""``data.task: regression`` end to end: float targets → mse training → mse/mae/r2 → TFLite."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from kcnn.engine.train import train
from kcnn.errors import KcnnError
from kcnn.recipes import load
from tests.cli.test_cli import kcnn
from tests.conftest import write_recipe

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "regression"


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("regression")
    blobs = runpy.run_path(str(EXAMPLE / "make_blobs.py"))["blobs"]
    x, y = blobs(n=400, size=8, seed=1)
    np.savez(tmp / "blobs.npz", x=x, y=y, target_names=np.array(["row", "col"]))
    recipe = {
        "name": "blobs", "seed": 0,
        "data": {"task": "regression", "source": {"type": "npz", "path": "blobs.npz"},
                 "preprocess": {"rescale": 1 / 255}},
        "model": {"name": "simple_cnn", "filters": [8, 16], "batch_norm": False},
        "train": {"epochs": 8, "batch_size": 32, "optimizer": {"type": "adam", "lr": 0.005},
                  "callbacks": {"tensorboard": False}, "verbose": 0},
    }
    path = write_recipe(tmp / "blobs.yaml", recipe)
    return train(load(path), run_dir=tmp / "run"), y


def test_regression_run_learns_the_targets(regression_run):
    run, y = regression_run
    m = json.loads((run / "metrics.json").read_text())
    assert {"mse", "rmse", "mae", "r2", "loss", "per_target"} <= set(m)
    assert "accuracy" not in m and "confusion_matrix" not in m
    assert [t["target"] for t in m["per_target"]] == ["row", "col"]
    assert m["num_samples"] == 100 and m["mse"] == pytest.approx(m["loss"], rel=1e-4)
    # A model that predicts the mean has r2 0 and mse = var(y) (about 1.3 here).
    assert m["r2"] > 0.8 and m["mse"] < 0.2 * float(np.var(y, axis=0).mean())
    history = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "mae", "val_loss", "val_mae"} <= set(history)
    assert (run / "plots" / "predicted_vs_true.png").stat().st_size > 1000
    assert not (run / "plots" / "confusion_matrix.png").exists()
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["monitor"] == "val_loss" and state["best"] == pytest.approx(
        min(row["val_loss"] for row in state["history"]))


def test_regression_evaluate_cli_and_tflite_export(regression_run):
    run, _ = regression_run
    res = kcnn("evaluate", run, "--split", "val", "--json")
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)
    assert m["split"] == "val" and m["num_samples"] == 30 and m["r2"] > 0.5
    from kcnn.engine.evaluate import format_report

    table = format_report(m).splitlines()
    assert table[1].startswith(f"mse {m['mse']:.4f}") and f"r2 {m['r2']:.4f}" in table[1]
    assert [line.split()[0] for line in table[4:]] == ["row", "col"]

    from kcnn.export.api import export_tflite

    report = export_tflite(run, mode="none", latency_runs=3)
    test = json.loads((run / "metrics.json").read_text())
    assert report["keras_mse"] == pytest.approx(test["mse"], rel=1e-4)
    assert report["max_abs_output_diff"] < 1e-3 and report["mse"] == pytest.approx(test["mse"], rel=1e-3)


def test_compress_refuses_a_regression_run(regression_run):
    from kcnn.compress.common import load_source

    with pytest.raises(KcnnError, match="regression runs .* are not supported"):
        load_source(regression_run[0])
