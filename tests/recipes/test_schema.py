"""The JSON Schema of `kcnn recipe schema` agrees with the loader; type-name helpers."""

import json
import os
import subprocess
import sys

import jsonschema
import pytest
import yaml

from kcnn.recipes import schema as S
from kcnn.recipes.load import RECIPES_DIR
from kcnn.recipes.schema import json_schema, literal_values, type_names

BUNDLED = sorted(RECIPES_DIR.glob("*.yaml"))
FULL = {"name": "x", "data": {"source": {"type": "digits"}}, "model": {"name": "simple_cnn"}}


@pytest.fixture(scope="module")
def validator():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, doc) -> list[str]:
    return [e.message for e in validator.iter_errors(doc)]


def test_there_are_full_and_partial_bundled_recipes():
    docs = [yaml.safe_load(p.read_text()) for p in BUNDLED]
    assert len(docs) >= 30
    assert any("extends" in d for d in docs) and any("extends" not in d for d in docs)


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_bundled_recipe_matches_json_schema(validator, path):
    assert errors(validator, yaml.safe_load(path.read_text())) == []


def test_cli_schema_is_the_same_schema():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-m", "kcnn.cli.main", "recipe", "schema"],
                         capture_output=True, text=True, env=env, check=True, timeout=120)
    assert json.loads(out.stdout) == json.loads(json.dumps(json_schema()))


@pytest.mark.parametrize("doc", [
    FULL,
    {**FULL, "data": {"source": {"type": "digits"}, "preprocess": {"rescale": "1/255"}}},
    {**FULL, "data": {"source": {"type": "digits"}, "preprocess": {"rescale": " 1 / 16 "}}},
    {**FULL, "model": {"layers": [{"Dense": {"units": 3}}]}},  # name implied by layers
    {**FULL, "versions": {"kcnn": "0.1.0"}},  # a run's recipe.yaml
    {"extends": "base.yaml", "model": {"filters": [8]}},
    {"extends": ["a.yaml", "b.yaml"], "train": {"optimizer": {"lr": 0.1}}},  # type from the base
    {"extends": "base.yaml", "data": {"sampler": {"type": "class_balanced", "progressive": True}}},
])
def test_schema_accepts(validator, doc):
    assert errors(validator, doc) == []


@pytest.mark.parametrize("doc,fragment", [
    ({k: v for k, v in FULL.items() if k != "name"}, "'name' is a required property"),
    ({**FULL, "data": {}}, "'source' is a required property"),
    ({**FULL, "model": {"filters": [8]}}, "not valid under any"),  # no name, no layers
    ({**FULL, "train": {"optimizer": {"lr": 0.1}}}, "not valid under any"),  # no type, no base
    ({**FULL, "data": {"source": {"type": "digits"}, "preprocess": {"rescale": "1/a"}}},
     "not valid under any"),
    ({**FULL, "trian": {}}, "'trian' was unexpected"),
    ({"extends": "b.yaml", "trian": {}}, "'trian' was unexpected"),
    ({"extends": "b.yaml", "train": {"optimizer": {"lr": -1}}}, "not valid under any"),
    ({"extends": "b.yaml", "train": {"optimizer": {"type": "adamm"}}}, "not valid under any"),
    ({"extends": "b.yaml", "train": {"epochs": 0}}, "less than or equal to the minimum of 0"),
    ({"extends": 3}, "not valid under any"),
])
def test_schema_refuses(validator, doc, fragment):
    found = errors(validator, doc)
    assert any(fragment in m for m in found), found


def test_schema_rescale_pattern_matches_the_loader():
    import re

    for text, ok in (("1/255", True), ("1.5/3", True), (".5/2", True), ("1/2/3", False),
                     ("a/b", False), ("1.2.3/4", False), ("1/", False)):
        assert bool(re.fullmatch(S.FRACTION_PATTERN, text)) is ok, text
    assert S.Preprocess(rescale="1/16").rescale == 1 / 16
    assert S.Preprocess(rescale=" 2 / 8 ").rescale == 0.25


# ----------------------------------------------------------------------------- type names
def test_type_names_of_each_section():
    assert type_names(S.Optimizer) == ("sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw")
    assert type_names(S.Schedule) == ("constant", "step", "exponential", "cosine")
    assert type_names(S.Sampler) == ("shuffle", "batch_downsample", "class_balanced", "label_shuffling")
    assert type_names(S.Loss) == ("cross_entropy", "mse", "l2", "cost_matrix", "focal", "logit_adjusted")
    assert type_names(S.Source) == ("digits", "npz", "directory", "keras", "csv")
    assert type_names(S.SquaredErrorLoss) == ("mse", "l2")


def test_type_names_agree_with_the_validator():
    for section, names in ((S.Train, type_names(S.Optimizer)),):
        for name in names:
            assert section.model_validate({"optimizer": {"type": name}}).optimizer.type == name
    with pytest.raises(TypeError):
        type_names(S.Export)


def test_literal_values():
    assert literal_values(S.Export, "quantize") == ("none", "dynamic", "float16", "int8", "int16x8")
    assert literal_values(S.Export, "format") == ("tflite", "saved_model", "keras")
    assert literal_values(S.Distribute, "strategy") == ("none", "data_parallel", "mirrored", "multi_worker", "tpu")
    assert literal_values(S.Train, "verbose") == (0, 1, 2)  # Optional[Literal[...]]
    with pytest.raises(KeyError):
        literal_values(S.Export, "nope")
    with pytest.raises(TypeError):
        literal_values(S.Export, "calibration")
