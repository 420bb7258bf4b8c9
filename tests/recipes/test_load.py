"""Recipe loading and validation: one test per kind of bad input, plus round trips."""

import sys
from pathlib import Path

import pytest
import yaml

from kcnn.errors import RecipeError
from kcnn.recipes import dump, load, loads
from kcnn.recipes.load import RECIPES_DIR, deep_merge
from kcnn.recipes.schema import Recipe, json_schema
from tests.conftest import write_recipe


def error_of(path, overrides=None) -> str:
    with pytest.raises(RecipeError) as info:
        load(path, overrides)
    return str(info.value)


def test_valid_recipe_loads_with_defaults(tiny_recipe):
    r = load(tiny_recipe)
    assert r.name == "tiny"
    assert r.train.optimizer.type == "adam" and r.train.optimizer.lr == 0.01
    assert r.train.schedule.type == "constant"
    assert r.data.split.test == 0.25 and r.data.split.seed == 0
    assert r.model.kwargs == {"filters": [8, 16], "batch_norm": False}


def test_dump_load_round_trip(tiny_recipe):
    r = load(tiny_recipe)
    assert loads(dump(r)) == r
    with_versions = r.model_copy(update={"versions": {"kcnn": "0.1.0"}})
    assert loads(dump(with_versions)) == with_versions


def test_bundled_recipes_round_trip():
    for f in sorted(RECIPES_DIR.glob("*.yaml")):
        r = load(f)
        assert loads(dump(r)) == r, f


def test_missing_file(tmp_path):
    msg = error_of(tmp_path / "nope.yaml")
    assert "nope.yaml" in msg and "file not found" in msg


def test_yaml_syntax_error_gives_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata:\n  source: {type: digits\nmodel: {name: simple_cnn}\n")
    msg = error_of(p)
    assert msg.startswith(str(p) if not str(p).startswith(str(Path.cwd())) else "")
    assert "bad.yaml" in msg and "line 4" in msg and "YAML syntax error" in msg


def test_unknown_key_suggests(tiny_recipe_dict, tmp_path):
    tiny_recipe_dict["train"]["optimizer"]["lrr"] = 0.1
    msg = error_of(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict))
    assert "r.yaml: train.optimizer.lrr: unknown key (did you mean 'lr'?)" in msg


def test_unknown_top_level_key(tiny_recipe_dict, tmp_path):
    tiny_recipe_dict["trian"] = {}
    msg = error_of(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict))
    assert "trian: unknown key (did you mean 'train'?)" in msg


def test_wrong_type(tiny_recipe_dict, tmp_path):
    tiny_recipe_dict["train"]["epochs"] = "many"
    msg = error_of(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict))
    assert "train.epochs:" in msg and "integer" in msg and "'many'" in msg


@pytest.mark.parametrize(
    "key,value,expected",
    [
        (("train", "optimizer", "lr"), -1, "train.optimizer.lr: must be > 0 (got -1)"),
        (("train", "optimizer", "lr"), 0, "train.optimizer.lr: must be > 0 (got 0)"),
        (("train", "batch_size"), 0, "train.batch_size: must be > 0 (got 0)"),
        (("train", "batch_size"), -8, "train.batch_size: must be > 0 (got -8)"),
    ],
)
def test_non_positive_numbers(tiny_recipe_dict, tmp_path, key, value, expected):
    node = tiny_recipe_dict
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    msg = error_of(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict))
    assert msg == f"{tmp_path / 'r.yaml'}: {expected}" or msg.endswith(f"r.yaml: {expected}")


@pytest.mark.parametrize(
    "section,bad,kind",
    [
        (("train", "optimizer"), {"type": "adamm"}, "optimizer 'adamm' (did you mean 'adam'"),
        (("train", "schedule"), {"type": "cosin"}, "schedule 'cosin' (did you mean 'cosine'"),
        (("train", "loss"), {"type": "crossentropy"}, "loss 'crossentropy'"),
        (("data", "source"), {"type": "digitz"}, "data source 'digitz' (did you mean 'digits'"),
        (("data", "sampler"), {"type": "shufle"}, "sampler 'shufle' (did you mean 'shuffle'"),
    ],
)
def test_unknown_registry_names_list_valid_ones(tiny_recipe_dict, tmp_path, section, bad, kind):
    tiny_recipe_dict[section[0]][section[1]] = bad
    msg = error_of(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict))
    assert f"{'.'.join(section)}: unknown {kind}" in msg
    assert "valid names:" in msg


def test_unknown_model_lists_models(tiny_recipe_dict, tmp_path):
    tiny_recipe_dict["model"] = {"name": "simple_cn"}
    msg = error_of(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict))
    assert "model.name: unknown model 'simple_cn' (did you mean 'simple_cnn'?)" in msg
    assert "valid names:" in msg and "nin_small" in msg


def test_unknown_model_argument(tiny_recipe_dict, tmp_path):
    tiny_recipe_dict["model"]["filtres"] = [8]
    msg = error_of(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict))
    assert "model.filtres: unknown argument for model 'simple_cnn' (did you mean 'filters'?)" in msg


def test_extends_deep_merges_and_chains(tmp_path, tiny_recipe_dict):
    write_recipe(tmp_path / "base.yaml", tiny_recipe_dict)
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\ntrain: {epochs: 7}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "top.yaml").write_text(
        "extends: ../mid.yaml\nname: top\ntrain: {optimizer: {lr: 0.5}}\n"
    )
    r = load(tmp_path / "sub" / "top.yaml")
    assert r.name == "top" and r.train.epochs == 7
    assert r.train.optimizer.type == "adam" and r.train.optimizer.lr == 0.5
    assert r.train.batch_size == 32  # from the base


def test_extends_type_change_replaces_section():
    base = {"optimizer": {"type": "adam", "beta_1": 0.8}}
    assert deep_merge(base, {"optimizer": {"type": "sgd"}}) == {"optimizer": {"type": "sgd"}}
    assert deep_merge(base, {"optimizer": {"lr": 1}})["optimizer"]["beta_1"] == 0.8


def test_extends_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    msg = error_of(tmp_path / "a.yaml")
    assert "extends cycle:" in msg and "a.yaml -> " in msg and "b.yaml" in msg


def test_extends_missing_base(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: nothere.yaml\nname: a\n")
    assert "extends: base recipe not found: nothere.yaml" in error_of(tmp_path / "a.yaml")


def test_set_overrides_parse_yaml_values(tiny_recipe):
    r = load(tiny_recipe, ["train.optimizer.lr=0.05", "data.augment.flip=true",
                           "train.schedule={type: step, boundaries: [1, 2]}"])
    assert r.train.optimizer.lr == 0.05
    assert r.data.augment.flip is True
    assert r.train.schedule.type == "step" and r.train.schedule.boundaries == [1.0, 2.0]


def test_set_unknown_key_is_blamed_on_set(tiny_recipe):
    msg = error_of(tiny_recipe, ["train.optimizer.lrr=0.1"])
    assert msg.startswith(
        "--set train.optimizer.lrr=0.1: train.optimizer.lrr: unknown key (did you mean 'lr'?)"
    )


def test_set_bad_value_is_blamed_on_set(tiny_recipe):
    assert error_of(tiny_recipe, ["train.optimizer.lr=-1"]) == (
        "--set train.optimizer.lr=-1: train.optimizer.lr: must be > 0 (got -1)"
    )


def test_set_malformed(tiny_recipe):
    assert "expected key.path=value" in error_of(tiny_recipe, ["train.epochs"])


def test_unsafe_yaml_tag_refused(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    msg = error_of(p)
    assert "evil.yaml" in msg and "python/object/apply:os.system" in msg and "refused" in msg


def test_relative_data_path_resolves_against_recipe(tmp_path, tiny_recipe_dict):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.npz").write_bytes(b"")
    tiny_recipe_dict["data"]["source"] = {"type": "npz", "path": "data/d.npz"}
    r = load(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict))
    assert r.data.source.path == str((tmp_path / "data" / "d.npz").resolve())


def test_several_problems_give_one_line_each(tiny_recipe_dict, tmp_path):
    tiny_recipe_dict["train"]["epochs"] = 0
    tiny_recipe_dict["train"]["batch_size"] = -1
    lines = error_of(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict)).splitlines()
    assert len(lines) == 2
    assert all(line.startswith(str(tmp_path / "r.yaml")) or "r.yaml: train." in line for line in lines)


def test_schema_module_does_not_import_tensorflow():
    import subprocess

    code = ("import sys; from kcnn.recipes.load import load; "
            "load('recipes/quickstart.yaml'); "
            "print(sorted(m for m in ('tensorflow','keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_json_schema_describes_sections():
    schema = json_schema()
    assert {"name", "data", "model", "train", "extends"} <= set(schema["properties"])
    assert "written by kcnn" in schema["properties"]["versions"]["description"].lower()
    yaml.safe_dump(schema)  # plain data only
    assert Recipe.model_json_schema()["additionalProperties"] is False


# ----------------------------------------------------------------------------- regression
def _regression(tmp_path, tiny_recipe_dict, **train):
    d = tiny_recipe_dict
    np_path = tmp_path / "r.npz"
    np_path.write_bytes(b"")  # existence is enough for validation
    d["data"] = {"task": "regression", "source": {"type": "npz", "path": "r.npz"}}
    d["train"].update(train)
    return write_recipe(tmp_path / "reg.yaml", d)


def test_regression_defaults_to_mse_and_val_loss(tmp_path, tiny_recipe_dict):
    r = load(_regression(tmp_path, tiny_recipe_dict))
    assert r.data.task == "regression"
    assert r.train.loss.type == "mse" and r.train.monitor == "val_loss"
    assert loads(dump(r)) == r
    assert load(_regression(tmp_path, tiny_recipe_dict, loss={"type": "l2"})).train.loss.type == "l2"


@pytest.mark.parametrize("overrides,expected", [
    (["train.loss={type: focal}"], "train.loss.type: 'focal' is a classification loss; use mse or l2"),
    (["train.monitor=val_accuracy"], "train.monitor: 'val_accuracy' needs class labels; use val_loss"),
    (["data.sampler={type: class_balanced}"], "data.sampler.type: 'class_balanced' balances classes"),
    (["data.num_classes=3"], "data.num_classes: only for class labels"),
    (["data.long_tail={ratio: 10}"], "data.long_tail: only for class labels"),
    (["distill={teacher: runs/x}"], "distill: distillation matches class probabilities"),
])
def test_regression_refuses_classification_settings(tmp_path, tiny_recipe_dict, overrides, expected):
    msg = error_of(_regression(tmp_path, tiny_recipe_dict), overrides)
    assert expected in msg and msg.endswith("(data.task is regression)")


def test_regression_needs_a_target_source(tmp_path, tiny_recipe_dict):
    tiny_recipe_dict["data"] = {"task": "regression", "source": {"type": "digits"}}
    msg = error_of(write_recipe(tmp_path / "d.yaml", tiny_recipe_dict))
    assert "data.source.type: 'digits' has class labels only" in msg and "npz or csv" in msg


def test_unknown_task(tmp_path, tiny_recipe_dict):
    tiny_recipe_dict["data"]["task"] = "ranking"
    msg = error_of(write_recipe(tmp_path / "t.yaml", tiny_recipe_dict))
    assert "data.task" in msg and "classification" in msg and "regression" in msg
