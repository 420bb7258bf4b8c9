"""``kcnn export --report`` (per-layer quantization error) and ``--float-layers``."""

import json
import math

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from kcnn.cli.main import app
from kcnn.export import api
from kcnn.export.report import _cosine, _snr_db
from kcnn.export.runtime import TFLiteModel
from kcnn.saving import load_keras_model

RUNNER = CliRunner()


@pytest.fixture(scope="module")
def int8_report(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "int8" / "model.tflite"
    res = RUNNER.invoke(app, ["export", str(trained_run), "--quantize", "int8", "--report",
                              "--calibration", "50", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return res, json.loads((out.parent / "quant_report.json").read_text()), out


def test_report_lists_every_quantized_conv_and_dense_layer(int8_report, trained_run):
    res, report, out = int8_report
    model = load_keras_model(trained_run / "model.keras")
    computing = [layer.name for layer in model.layers
                 if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert computing == ["conv1_1", "conv2_1", "logits"]
    rows = {name: row for row in report["layers"] for name in row["layers"]}
    for name in computing:
        row = rows[name]
        assert row["dtype"] == "int8" and row["op"] in ("CONV_2D", "FULLY_CONNECTED")
        assert math.isfinite(row["snr_db"]) and -1.0 <= row["cosine"] <= 1.0
        assert row["snr_db"] > 10 and row["cosine"] > 0.9  # a healthy int8 model
    assert rows["conv1_1"]["layer"] == "conv1_1_relu"  # conv + BN + ReLU: one fused op
    assert report["worst_layer"] in {layer.name for layer in model.layers}
    assert report["worst_layers"][0] in rows and len(report["float_trials"]) == 3
    assert 0 < report["num_images"] <= 300  # (the tiny run is barely trained: ~50 %)
    assert report["accuracy"] == pytest.approx(report["float_accuracy"], abs=0.1)
    assert report["predicted_classes"]["quantized"] == 10
    # The export report carries it too, and the CLI prints the worst layers before the path.
    export = json.loads((out.parent / "export_report.json").read_text())
    assert export["quant_report"]["worst_layer"] == report["worst_layer"]
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == str(out)
    assert any(line.startswith(f"worst layer: {report['worst_layer']}") for line in lines)
    assert "| layer | op | SNR (dB) |" in res.stdout


def test_snr_and_cosine_edge_cases():
    assert _snr_db(100.0, 1.0) == pytest.approx(20.0)
    assert _snr_db(1.0, 0.0) == 120.0 and _snr_db(0.0, 1.0) == -120.0
    assert _cosine(-2.0, 1.0, 4.0) == pytest.approx(-1.0) and _cosine(0.0, 0.0, 0.0) == 1.0


def test_float_layers_keeps_one_layer_in_float(trained_run, tmp_path):
    out = tmp_path / "f" / "model.tflite"
    report = api.export_tflite(trained_run, mode="int8", calibration=50, latency_runs=2,
                               out=out, float_layers="conv2_1")
    assert report["float_layers"] == ["conv2_1", "conv2_1_bn", "conv2_1_relu"]
    assert report["float_fallback_layers"] == []  # asked for, not a fallback
    convs = [op for op in TFLiteModel(out).ops() if op["op"] == "CONV_2D"]
    by_layer = {("conv2_1" if "conv2_1" in op["outputs"][0] else "conv1_1"): op for op in convs}
    assert by_layer["conv2_1"]["output_dtypes"] == ["float32"]
    assert "float32" in by_layer["conv2_1"]["input_dtypes"]  # float weights
    assert by_layer["conv1_1"]["output_dtypes"] == ["int8"]
    assert report["accuracy"] >= report["keras_accuracy"] - 0.05


@pytest.mark.parametrize("args,expected", [
    (["--quantize", "int8", "--float-layers", "nothing_like_this"],
     "--float-layers: 'nothing_like_this' matches no layer of the model"),
    (["--quantize", "int8", "--float-layers", "conv(("], "--float-layers: bad regular expression"),
    (["--quantize", "int16x8", "--float-layers", "conv1_1"], "--float-layers applies to --quantize int8"),
    (["--quantize", "float16", "--report"], "--report applies to --quantize int8 or int16x8"),
    (["--all", "--report"], "not --all"),
])
def test_bad_report_options_exit_2_with_one_line(trained_run, tmp_path, args, expected):
    res = RUNNER.invoke(app, ["export", str(trained_run), *args, "--out", str(tmp_path / "m.tflite")])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], res.output
    assert not (tmp_path / "m.tflite").exists()
    assert np.all([not p.name.startswith("m.") for p in tmp_path.iterdir()])
