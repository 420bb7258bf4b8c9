"""``--set`` and ``extends``: a new model.name or type replaces the section; problems are
blamed on the ``--set`` item that caused them; unknown bundled names get a suggestion."""

import os
import subprocess
import sys

import pytest

from kcnn.errors import RecipeError
from kcnn.recipes import load
from kcnn.recipes.load import RECIPES_DIR, apply_overrides, bundled_names, deep_merge, resolve_path
from tests.conftest import write_recipe

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
ENV.pop("KCNN_DEBUG", None)


def error_of(path, overrides=None) -> str:
    with pytest.raises(RecipeError) as info:
        load(path, overrides)
    return str(info.value)


def kcnn(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kcnn.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=ENV, timeout=120)


# ----------------------------------------------------------------------------- model.name
def test_set_model_name_replaces_the_model_section():
    r = load("quickstart", ["model.name=resnet20"])
    assert r.model.name == "resnet20" and r.model.kwargs == {}
    assert load("quickstart").model.kwargs["filters"] == [32, 64, 128]  # the base is untouched


def test_set_model_name_keeps_earlier_and_later_set_keys():
    r = load("quickstart", ["model.width=2", "model.name=resnet20", "model.dropout=0.1"])
    assert r.model.name == "resnet20" and r.model.kwargs == {"width": 2, "dropout": 0.1}


def test_set_same_model_name_merges():
    r = load("quickstart", ["model.name=simple_cnn", "model.dropout=0.3"])
    assert r.model.kwargs["filters"] == [32, 64, 128] and r.model.kwargs["dropout"] == 0.3


def test_cli_show_quickstart_with_other_model():
    res = kcnn("recipe", "show", "quickstart", "--set", "model.name=resnet20")
    assert res.returncode == 0, res.stderr
    model = res.stdout.split("\nmodel:\n", 1)[1].split("\ntrain:", 1)[0]
    assert model.strip() == "name: resnet20"


def test_extends_child_with_other_model_name_replaces(tmp_path, tiny_recipe_dict):
    tiny_recipe_dict["model"]["init"] = {"from": "runs/x"}
    write_recipe(tmp_path / "base.yaml", tiny_recipe_dict)
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nmodel: {name: resnet20, width: 1}\n")
    r = load(tmp_path / "child.yaml")
    assert r.model.name == "resnet20" and r.model.kwargs == {"width": 1} and r.model.init is None
    (tmp_path / "same.yaml").write_text("extends: base.yaml\nmodel: {dropout: 0.5}\n")
    same = load(tmp_path / "same.yaml")
    assert same.model.kwargs == {"filters": [8, 16], "batch_norm": False, "dropout": 0.5}
    assert same.model.init is not None


def test_deep_merge_model_name_rule():
    base = {"model": {"name": "simple_cnn", "filters": [8]}, "data": {"source": {"name": "mnist"}}}
    assert deep_merge(base, {"model": {"name": "vgg11"}})["model"] == {"name": "vgg11"}
    assert deep_merge(base, {"model": {"name": "simple_cnn", "dropout": 0.1}})["model"] == {
        "name": "simple_cnn", "filters": [8], "dropout": 0.1}
    # a layers list without a name is the 'layers' builder
    layers = {"model": {"layers": [{"Dense": {"units": 2}}]}}
    assert deep_merge(layers, {"model": {"name": "simple_cnn"}})["model"] == {"name": "simple_cnn"}
    # `name` only selects the kind of the model section, not of e.g. a keras source
    merged = deep_merge(base, {"data": {"source": {"name": "cifar10", "type": "keras"}}})
    assert merged["data"]["source"] == {"name": "cifar10", "type": "keras"}


def test_set_type_replaces_typed_section(tiny_recipe):
    r = load(tiny_recipe, ["train.optimizer.type=sgd"])
    assert r.train.optimizer.type == "sgd" and r.train.optimizer.lr == 0.01  # sgd's default
    r = load(tiny_recipe, ["train.optimizer={type: sgd, momentum: 0.9}"])
    assert r.train.optimizer.momentum == 0.9
    data, keys = apply_overrides({"train": {"optimizer": {"type": "adam", "beta_1": 0.8}}},
                                 ["train.optimizer.type=sgd", "train.optimizer.nesterov=true"])
    assert data == {"train": {"optimizer": {"type": "sgd", "nesterov": True}}}
    assert keys == {"train.optimizer": "train.optimizer.type=sgd",
                    "train.optimizer.type": "train.optimizer.type=sgd",
                    "train.optimizer.nesterov": "train.optimizer.nesterov=true"}


# ----------------------------------------------------------------------------- --set blame
@pytest.mark.parametrize("overrides,expected", [
    (["train.optimizer.lr=-1"], "--set train.optimizer.lr=-1: train.optimizer.lr: must be > 0 (got -1)"),
    (["train.epochs=2", "train.batch_size=0"],
     "--set train.batch_size=0: train.batch_size: must be > 0 (got 0)"),
    (["train.optimizer={type: sgd, lr: 0}"],
     "--set train.optimizer={type: sgd, lr: 0}: train.optimizer.lr: must be > 0 (got 0)"),
    (["model.name=resnt20"], "--set model.name=resnt20: model.name: unknown model 'resnt20'"),
    (["model.pooling=bogus"], "--set model.pooling=bogus: model.pooling: unknown pooling 'bogus'"),
    (["model.name=resnet20", "model.filters=[8]"],
     "--set model.filters=[8]: model.filters: unknown argument for model 'resnet20'"),
    (["train.optimizer.type=sgd", "train.optimizer.beta_1=0.5"],
     "--set train.optimizer.beta_1=0.5: train.optimizer.beta_1: unknown key"),
])
def test_set_problems_are_blamed_on_the_set_item(tiny_recipe, overrides, expected):
    assert error_of(tiny_recipe, overrides).startswith(expected)


def test_file_problems_stay_with_the_file(tmp_path, tiny_recipe_dict):
    tiny_recipe_dict["train"]["epochs"] = 0
    p = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict)
    lines = error_of(p, ["train.batch_size=0"]).splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("r.yaml: train.epochs: must be > 0 (got 0)")
    assert lines[1] == "--set train.batch_size=0: train.batch_size: must be > 0 (got 0)"


def test_cli_set_error_is_one_line(tiny_recipe):
    res = kcnn("recipe", "validate", tiny_recipe, "--set", "train.optimizer.lr=-1")
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "--set train.optimizer.lr=-1: train.optimizer.lr: must be > 0 (got -1)" in lines[0]


def test_set_into_a_value_is_blamed_on_the_item(tiny_recipe):
    assert error_of(tiny_recipe, ["train.epochs.x=1"]) == (
        "--set train.epochs.x=1: train.epochs.x: train.epochs is not a section (it is 2)"
    )


# ----------------------------------------------------------------------------- names
def test_unknown_bundled_name_suggests(tmp_path):
    assert error_of("quickstrt") == (
        "quickstrt: no such recipe file or bundled recipe; did you mean 'quickstart'?"
    )
    assert error_of("zzzzzz") == "zzzzzz: no such recipe file or bundled recipe"
    assert resolve_path("quickstrt").name == "quickstrt"  # resolve_path itself never raises


def test_missing_yaml_file_named_like_a_bundled_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert error_of("quickstart.yaml") == (
        "quickstart.yaml: file not found; did you mean the bundled recipe 'quickstart'?"
    )
    assert error_of("missing.yaml") == "missing.yaml: file not found"


def test_cli_train_unknown_name_suggests(tmp_path):
    res = kcnn("train", "quickstrt", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "quickstrt: no such recipe file or bundled recipe; did you mean 'quickstart'?" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_bundled_names_come_from_recipes_dir():
    names = bundled_names()
    assert "quickstart" in names and names == sorted(f.stem for f in RECIPES_DIR.glob("*.yaml"))
