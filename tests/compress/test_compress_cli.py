"""``kcnn compress`` end to end in a subprocess; bad input exits 2 and writes nothing."""

import json
import os
import subprocess
import sys

import keras
import pytest

from tests.conftest import noise_lines

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
ENV.pop("KCNN_DEBUG", None)


def kcnn(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kcnn.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300)


def test_filter_prune_cli_writes_a_thinner_run(trained_run, tmp_path):
    from kcnn.engine.evaluate import evaluate
    from kcnn.saving import load_keras_model

    out = tmp_path / "pruned"
    res = kcnn("compress", "prune", trained_run, "--method", "filter", "--sparsity", "0.5",
               "--rounds", "1", "--finetune-epochs", "1", "--run-dir", out)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == str(out)
    assert any(line.startswith("| MACs |") for line in lines)
    assert any(line.startswith("| accuracy (test split) |") for line in lines)
    assert "(accuracy on the test split)" in res.stderr
    assert "after 1 fine-tuning epoch " in res.stderr and "fine-tuning epochs" not in res.stderr
    assert noise_lines(res.stderr) == []  # e.g. no tf.function retracing warnings
    info = json.loads((out / "compress.json").read_text())
    assert info["method"] == "prune-filter" and info["source_run"] == str(trained_run.resolve())
    assert info["channels"] == {"conv1_1": [8, 4], "conv2_1": [16, 8], "logits": [10, 10]}
    before, after = info["before"], info["after"]
    for key in ("params", "macs", "accuracy", "tflite_bytes", "latency_ms"):
        assert key in before and key in after
    assert after["macs"] < 0.4 * before["macs"] and after["params"] < before["params"]
    assert after["tflite_bytes"] < before["tflite_bytes"]
    model = load_keras_model(out / "model.keras")
    assert [layer.filters for layer in model.layers if hasattr(layer, "filters")] == [4, 8]
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["version"] == 1 and state["checkpoint"] is None and state["epoch"] >= 2
    assert after["tflite_accuracy"] == pytest.approx(after["accuracy"], abs=0.01)
    # The new run is a run: `kcnn evaluate` (and `kcnn export`, which opens it the same way)
    # accept it, with the source's recipe.
    metrics = evaluate(out, write=False)
    assert metrics["accuracy"] == pytest.approx(after["accuracy"])
    assert (out / "recipe.yaml").read_text() == (trained_run / "recipe.yaml").read_text()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["prune", "{run}", "--sparsity", "1.5"], "--sparsity: must be in (0, 1) (got 1.5)"),
        (["prune", "{run}", "--sparsity", "0"], "--sparsity: must be in (0, 1) (got 0.0)"),
        (["prune", "{run}", "--sparsity", "1"], "--sparsity: must be in (0, 1) (got 1.0)"),
        (["prune", "{run}", "--method", "random"], "--method: unknown method 'random'"),
        (["prune", "{tmp}"], "not a kcnn run (no recipe.yaml)"),
        (["prune", "{tmp}/nowhere"], "no such run directory"),
        (["lowrank", "{tmp}", "--energy", "0.9"], "not a kcnn run (no recipe.yaml)"),
        (["lowrank", "{run}"], "give --energy or --rank"),
        (["lowrank", "{run}", "--energy", "0"], "--energy: must be in (0, 1]"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(args, expected, trained_run, tmp_path):
    before = sorted(p.name for p in trained_run.iterdir())
    args = [a.format(run=trained_run, tmp=tmp_path) for a in args]
    res = kcnn("compress", *args, "--run-dir", tmp_path / "out", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
    assert sorted(p.name for p in trained_run.iterdir()) == before


def test_distillation_teacher_with_other_classes_exits_2(tiny_bn_recipe, tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(tmp_path / "teacher3.keras")
    run = tmp_path / "student"
    res = kcnn("train", tiny_bn_recipe, "--set", f"distill.teacher={tmp_path / 'teacher3.keras'}",
               "--run-dir", run)
    assert res.returncode == 2, res.stderr
    assert "predicts 3 classes but the student's data has 10" in res.stderr
    assert "Traceback" not in res.stderr and not run.exists()


def test_missing_teacher_is_a_clear_error_before_the_run_starts(tiny_bn_recipe, tmp_path):
    from kcnn.engine.train import train
    from kcnn.errors import KcnnError
    from kcnn.recipes import load

    recipe = load(tiny_bn_recipe, [f"distill.teacher={tmp_path / 'none'}"])
    with pytest.raises(KcnnError, match="distill.teacher: no trained teacher at"):
        train(recipe, run_dir=tmp_path / "student")
    assert not (tmp_path / "student").exists()
