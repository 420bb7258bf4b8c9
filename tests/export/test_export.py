"""TFLite export in every mode, verified against the Keras model; bad input; .tflite evaluation."""

import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from kcnn.engine.evaluate import evaluate
from kcnn.engine.train import train
from kcnn.errors import KcnnError, RunDirError
from kcnn.export import api
from kcnn.export.runtime import LATENCY_THREADS, TFLiteModel
from kcnn.export.tflite import balanced_calibration
from kcnn.recipes import load


@pytest.fixture(scope="module")
def export_run(tmp_path_factory):
    from tests.conftest import TINY, write_recipe

    root = tmp_path_factory.mktemp("export")
    data = json.loads(json.dumps(TINY))
    data["model"] = {"name": "simple_cnn", "filters": [32, 64], "batch_norm": True}
    data["train"]["epochs"] = 3
    recipe = write_recipe(root / "r.yaml", data)
    return train(load(recipe), run_dir=root / "run")


# (mode, size ratio bounds vs float32, max accuracy drop vs Keras)
MODES = [
    ("none", (1.0, 1.0), 0.0),
    ("dynamic", (0.2, 0.4), 0.02),
    ("float16", (0.4, 0.65), 0.01),
    ("int8", (0.2, 0.4), 0.03),
    ("int16x8", (0.2, 0.45), 0.02),
]


@pytest.fixture(scope="module")
def reports(export_run):
    return {mode: api.export_tflite(export_run, mode=mode, calibration=50, latency_runs=5)
            for mode, _, _ in MODES}


@pytest.mark.parametrize("mode,ratio,drop", MODES)
def test_every_mode_loads_is_accurate_and_shrinks(reports, export_run, mode, ratio, drop):
    report = reports[mode]
    path = export_run / "exports" / mode / "model.tflite"
    assert report["file"] == str(path) and path.is_file()
    assert json.loads((path.parent / "export_report.json").read_text())["quantize"] == mode
    lite = TFLiteModel(path)
    assert lite.predict(np.zeros((3, 8, 8, 1), "float32")).shape == (3, 10)
    assert report["keras_accuracy"] > 0.8
    assert report["accuracy"] >= report["keras_accuracy"] - drop - 1e-9
    assert report["agreement"] >= 1.0 - drop - 0.01
    size = report["size_bytes"] / reports["none"]["size_bytes"]
    assert ratio[0] <= size <= ratio[1], size
    assert report["flex_ops"] == [] and "CONV_2D" in report["ops"]
    assert report["latency_ms_median"] > 0
    # measured as an app runs it: XNNPACK on, one thread, one image per invoke()
    assert report["latency_delegate"] == "XNNPACK" and report["latency_threads"] == 1
    assert report["latency_batch"] == 1 and report["latency_runtime"].startswith("LiteRT ")
    if mode != "int16x8":  # XNNPACK has no int16-activation kernels
        assert report["xnnpack_ops"] == report["total_ops"] > 0, report["non_xnnpack_ops"]
        assert report["xnnpack_partitions"] == 1 and report["non_xnnpack_ops"] == {}
    if mode == "none":
        assert report["max_abs_logit_diff"] < 1e-4
    if mode in ("int8", "int16x8"):
        assert report["float_fallback_layers"] == [] and report["calibration_samples"] == 50


def test_int8_io_has_integer_tensors(export_run, tmp_path):
    report = api.export_tflite(export_run, mode="int8", int8_io=True, calibration=30,
                               out=tmp_path / "io.tflite", latency_runs=3)
    assert report["input_dtype"] == "int8"
    assert report["accuracy"] >= report["keras_accuracy"] - 0.03


def test_xnnpack_takes_the_int8_model_and_only_when_asked(reports):
    """The delegation count reads the interpreter's real node list: without the delegate
    nothing is delegated, so a runtime that stopped applying XNNPACK fails here."""
    path = reports["int8"]["file"]
    on, off = TFLiteModel(path).delegation(), TFLiteModel(path, xnnpack=False).delegation()
    assert on["delegated_ops"] == on["total_ops"] == off["total_ops"] > 0
    assert on["partitions"] == 1 and on["undelegated_ops"] == {}
    assert off["delegated_ops"] == 0 and off["partitions"] == 0
    assert sum(off["undelegated_ops"].values()) == off["total_ops"]
    assert "CONV_2D" in off["undelegated_ops"]
    timed = TFLiteModel(path, xnnpack=False).latency(np.zeros((8, 8, 1), "float32"), runs=3)
    assert timed["latency_delegate"] == "none" and timed["xnnpack_ops"] == 0


def test_latency_threads_reach_the_report_and_the_table(export_run, reports, tmp_path):
    report = api.export_tflite(export_run, mode="int8", calibration=20, latency_runs=3,
                               latency_threads=2, out=tmp_path / "t2.tflite")
    assert report["latency_threads"] == 2 and report["latency_delegate"] == "XNNPACK"
    assert api.DEFAULT_LATENCY_THREADS == LATENCY_THREADS == reports["none"]["latency_threads"]
    assert json.loads((tmp_path / "export_report.json").read_text())["latency_threads"] == 2
    table = api.comparison_table([reports["none"], reports["int8"]]).splitlines()
    assert table[-1].startswith("latency: median of 5 single-image invoke() calls")
    assert table[-1].endswith(", XNNPACK delegate on, 1 thread")
    header = [c.strip() for c in table[0].strip("|").split("|")]
    row = dict(zip(header, (c.strip() for c in table[3].strip("|").split("|"))))
    assert row["ops on XNNPACK"] == f"{reports['int8']['total_ops']}/{reports['int8']['total_ops']}"
    assert row["latency vs float"].endswith("×")
    # a float export timed with other settings is no baseline for the latency ratio
    mixed = api.comparison_table([report], baseline=reports["none"]).splitlines()
    row = dict(zip(header, (c.strip() for c in mixed[2].strip("|").split("|"))))
    assert row["latency vs float"] == "–" and row["size vs float"].endswith("×")
    assert mixed[-2].endswith(", XNNPACK delegate on, 2 threads")
    assert mixed[-1].startswith("latency vs float left out where the settings differ")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_thread_count_is_one_line(threads):
    with pytest.raises(KcnnError, match=r"--threads: must be an integer >= 1"):
        api.check_options("tflite", "int8", None, threads)


def test_calibration_set_is_class_balanced():
    y = np.array([0] * 90 + [1] * 9 + [2] * 1)
    x = np.arange(100)[:, None]
    picked = balanced_calibration(x, y, 9)[:, 0]
    counts = np.bincount(y[picked], minlength=3)
    assert counts.tolist() == [4, 4, 1]
    with pytest.raises(KcnnError, match="must be >= 1"):
        balanced_calibration(x, y, 0)


def test_evaluate_tflite_like_keras(export_run, reports):
    metrics = evaluate(export_run / "exports" / "none" / "model.tflite")
    assert metrics["accuracy"] == pytest.approx(reports["none"]["accuracy"])
    assert {"balanced_accuracy", "macro_f1", "loss", "per_class", "confusion_matrix"} <= set(metrics)
    keras_metrics = json.loads((export_run / "metrics.json").read_text())
    assert metrics["loss"] == pytest.approx(keras_metrics["loss"], rel=1e-3)


@keras.saving.register_keras_serializable(package="kcnn_tests")
class CumulativeChannels(keras.layers.Layer):
    """Cumulative sum over channels: TFLite's CUMSUM has no integer kernel."""

    def call(self, x):
        return keras.ops.cumsum(x, axis=-1)


def test_float_only_layer_strict_and_warning(export_run, tmp_path, capsys):
    run = tmp_path / "lrn_run"
    shutil.copytree(export_run, run, ignore=shutil.ignore_patterns("exports"))
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = CumulativeChannels(name="cumsum")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(10, name="logits")(x)).save(run / "model.keras")
    report = api.export_tflite(run, mode="int8", calibration=20, latency_runs=3)
    assert report["float_fallback_layers"] == ["cumsum"]
    assert "CUMSUM" in report["float_fallback_ops"]
    assert "warning: int8: layers without integer kernels" in capsys.readouterr().err
    out = tmp_path / "strict.tflite"
    with pytest.raises(KcnnError, match=r"--strict: .*cumsum"):
        api.export_tflite(run, mode="int8", calibration=20, strict=True, out=out)
    assert not out.exists()


def test_saved_model_and_keras_formats(export_run, tmp_path):
    sm = api.export_other(export_run, "saved_model", tmp_path / "sm")
    assert (tmp_path / "sm" / "saved_model.pb").is_file() and sm["size_bytes"] > 0
    with pytest.raises(KcnnError, match="sm: already exists; pass --force to replace it"):
        api.export_other(export_run, "saved_model", tmp_path / "sm")
    again = api.export_other(export_run, "saved_model", tmp_path / "sm", force=True)  # atomic swap
    assert again["file"] == str(tmp_path / "sm") and not list(tmp_path.glob(".sm.*"))
    k = api.export_other(export_run, "keras", tmp_path / "copy.keras")
    assert (tmp_path / "copy.keras").read_bytes() == (export_run / "model.keras").read_bytes()
    assert k["size_bytes"] > 0


def test_export_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError, match="not a kcnn run"):
        api.export_tflite(tmp_path)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--quantize", "int4"], "--quantize: unknown mode 'int4'"),
        (["--quantize", "int8", "--calibration", "0"], "--calibration: must be >= 1 (got 0)"),
        (["--format", "onnx"], "--format: unknown format 'onnx'"),
    ],
)
def test_cli_bad_input_exits_2(export_run, args, expected):
    res = subprocess.run([sys.executable, "-m", "kcnn.cli.main", "export", str(export_run), *args],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert expected in res.stderr and "Traceback" not in res.stderr


def test_cli_not_a_run_exits_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "kcnn.cli.main", "export", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not a kcnn run" in res.stderr
    assert not (tmp_path / "exports").exists()
