"""`kcnn info`, `kcnn convert` and `kcnn visualize` through the Typer app (in process), and
their --help without TensorFlow (in a subprocess)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from kcnn.cli.main import app
from kcnn.models import create_model
from kcnn.recipes import dump, loads

RUNNER = CliRunner()
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
ENV.pop("KCNN_DEBUG", None)

PROBE = """
import sys
from kcnn.cli.main import app
try:
    app({args!r}, prog_name="kcnn", standalone_mode=False)
except SystemExit:
    pass
print("HEAVY", sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""


def invoke(*args):
    return RUNNER.invoke(app, [str(a) for a in args], env={"KCNN_DEBUG": "0"})


@pytest.mark.parametrize("command", ["info", "convert", "visualize"])
def test_help_imports_neither_tensorflow_nor_keras(command):
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=[command, "--help"])],
                         capture_output=True, text=True, env=ENV, check=True).stdout
    assert "HEAVY []" in out and "Usage" in out


@pytest.fixture
def dense_run(tmp_path):
    keras.utils.set_random_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(dump(loads(
        "name: t\ndata: {source: {type: digits, resize: 16}}\n"
        "model: {name: vgg11, width: 0.125, fc_units: 8}\n")))
    model = create_model("vgg11", num_classes=10, input_shape=(16, 16, 1), width=0.125,
                         fc_units=8)
    model.save(run / "model.keras")
    return run


def test_info_json_for_a_model_name():
    res = invoke("info", "resnet20", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["trainable_params"] == 269_722 and data["total_params"] == 271_098
    assert data["layers"][0]["type"] == "InputLayer"
    assert all(set(r) == {"name", "type", "output_shape", "params", "macs", "receptive_field"}
               for r in data["layers"])


def test_info_table_for_a_cifar_recipe_without_downloading(monkeypatch):
    monkeypatch.setattr(keras.datasets.cifar10, "load_data",
                        lambda: (_ for _ in ()).throw(AssertionError("no download")))
    res = invoke("info", "resnet20_cifar10")  # a bundled recipe by name
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == "model: resnet20"
    assert lines[-1].startswith("total: 271,098 parameters (269,722 trainable")
    assert any(line.startswith("stage3_block3 ") and line.split()[-3] == "81" for line in lines)


def test_info_run_dir_and_user_errors(dense_run):
    res = invoke("info", dense_run, "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["total_params"] == keras.saving.load_model(
        dense_run / "model.keras").count_params()
    bad = invoke("info", "no_such_thing")
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: no_such_thing: not a run directory") and \
        len(bad.stderr.strip().splitlines()) == 1


def test_convert_fully_convolutional(dense_run, tmp_path):
    missing_flag = invoke("convert", dense_run)
    assert missing_flag.exit_code == 2 and "--fully-convolutional" in missing_flag.stderr
    res = invoke("convert", dense_run, "--fully-convolutional")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(dense_run / "model_fcn.keras")
    out = tmp_path / "elsewhere.keras"
    res = invoke("convert", dense_run, "--fully-convolutional", "--out", out)
    assert res.exit_code == 0 and out.is_file()
    fcn = keras.saving.load_model(out)
    original = keras.saving.load_model(dense_run / "model.keras")
    x = np.random.default_rng(0).uniform(0, 16, (2, 16, 16, 1)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fcn(x))[:, 0, 0],
                               keras.ops.convert_to_numpy(original(x)), atol=1e-5)
    assert keras.ops.convert_to_numpy(fcn(np.zeros((1, 48, 32, 1), "float32"))).shape == (1, 3, 2, 10)


def test_visualize_writes_pngs(dense_run, tmp_path):
    from PIL import Image

    image = tmp_path / "seven.png"
    Image.fromarray((np.eye(8)[::-1] * 255).astype("uint8")).save(image)
    args = ["visualize", dense_run, "--filters", "first", "--filters", "conv4_2",
            "--feature-maps", image, "--layer", "conv1_1"]
    if keras.backend.backend() == "tensorflow":
        args += ["--saliency", image]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    written = res.stdout.strip().splitlines()
    names = ["filters_conv1_1.png", "filters_conv4_2.png", "feature_maps_conv1_1_seven.png"]
    if keras.backend.backend() == "tensorflow":
        names.append("saliency_seven.png")
    assert written == [str(dense_run / "plots" / n) for n in names]
    assert all((dense_run / "plots" / n).stat().st_size > 1000 for n in names)
    bad = invoke("visualize", dense_run, "--filters", "conv9")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: no layer 'conv9'")
