"""The strict YAML reader: duplicate keys, binary files, alias bombs, syntax errors.

Error messages are checked through the real CLI (``kcnn recipe validate``): exit 2
and exactly one stderr line naming the file, no traceback.
"""

import os
import subprocess
import sys
import time

import pytest

from kcnn.errors import RecipeError
from kcnn.recipes import load, loads, yamlio

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
ENV.pop("KCNN_DEBUG", None)

VALID = "name: ok\ndata: {source: {type: digits}}\nmodel: {name: simple_cnn}\n"


def validate(path, *args, timeout=60):
    """``kcnn recipe validate PATH`` in a subprocess, run from the file's folder."""
    return subprocess.run(
        [sys.executable, "-m", "kcnn.cli.main", "recipe", "validate", path.name, *args],
        capture_output=True, text=True, cwd=path.parent, env=ENV, timeout=timeout,
    )


def one_error_line(res, file_name: str) -> str:
    """The single stderr line, with the CLI's prefix (``error:``, ``kcnn: error:``) cut off."""
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    text = lines[0]
    at = text.find(file_name + ":")
    assert at >= 0, text
    return text[at:]


def billion_laughs(levels: int = 9) -> str:
    lines = ["name: lol", "data: {source: {type: digits}}", "x0: &x0 [lol]"]
    for i in range(1, levels + 1):
        lines.append(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]")
    lines.append(f"model: {{name: simple_cnn, filters: *x{levels}}}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- duplicate keys
def test_duplicate_top_level_key_names_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("name: a\ndata: {source: {type: digits}}\nmodel: {name: simple_cnn}\nname: b\n")
    line = one_error_line(validate(p), "dup.yaml")
    assert line == "dup.yaml: line 4: duplicate key 'name' (first at line 1)"


def test_duplicate_nested_key_gives_dotted_path(tmp_path):
    p = tmp_path / "nested.yaml"
    p.write_text(VALID + "train:\n  optimizer:\n    type: sgd\n    lr: 0.1\n    lr: 0.2\n")
    line = one_error_line(validate(p), "nested.yaml")
    assert line == "nested.yaml: line 8: duplicate key 'train.optimizer.lr' (first at line 7)"


def test_duplicate_in_flow_mapping_and_list_item():
    with pytest.raises(RecipeError) as info:
        yamlio.parse("model:\n  layers:\n    - {Dense: 1, units: 2, units: 3}\n", "f.yaml")
    assert str(info.value) == (
        "f.yaml: line 3: duplicate key 'model.layers.0.units' (first at line 3)"
    )


def test_keys_equal_after_resolution_are_duplicates():
    # `true` and `yes` are the same boolean key in YAML 1.1; a dict would keep only one
    with pytest.raises(RecipeError, match=r"line 3: duplicate key 'a.yes' \(first at line 2\)"):
        yamlio.parse("a:\n  true: 1\n  yes: 2\n", "f.yaml")
    assert yamlio.parse("a: {1: x, '1': y}", "f.yaml") == {"a": {1: "x", "1": "y"}}


def test_merge_keys_may_be_overridden_but_own_keys_not_repeated():
    text = "base: &b {lr: 0.1, momentum: 0.9}\nuse:\n  <<: *b\n  lr: 0.5\n"
    assert yamlio.parse(text, "f.yaml")["use"] == {"lr": 0.5, "momentum": 0.9}
    with pytest.raises(RecipeError, match=r"line 5: duplicate key 'use.lr' \(first at line 4\)"):
        yamlio.parse(text + "  lr: 0.6\n", "f.yaml")


def test_anchors_aliases_and_merge_keys_work_in_recipes(tmp_path):
    p = tmp_path / "anchors.yaml"
    p.write_text(
        "name: anchors\n"
        "data:\n  source: &src {type: digits, resize: 16}\n  classes: &cls [0, 1, 2]\n"
        "model: {name: simple_cnn, filters: [8, 16]}\n"
        "finetune:\n  co_training:\n    source: {<<: *src, resize: 12}\n    classes: *cls\n"
        "    layer: conv1\n"
    )
    r = load(p)
    assert r.data.source.resize == 16 and r.finetune.co_training.source.resize == 12
    assert r.finetune.co_training.source.type == "digits"
    assert r.data.classes == r.finetune.co_training.classes == [0, 1, 2]
    # aliases are copies: --set on one place leaves the other alone
    r2 = load(p, ["data.classes=[3, 4]"])
    assert r2.data.classes == [3, 4] and r2.finetune.co_training.classes == [0, 1, 2]


# ----------------------------------------------------------------------------- binary / size
@pytest.mark.parametrize("content,expected", [
    (b"name: x\x00\x01\x02\n", "not a UTF-8 text file (it contains NUL bytes)"),
    (b"name: caf\xe9\n", "not a UTF-8 text file (byte 0xe9 at offset 9 is not valid UTF-8)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a UTF-8 text file"),
])
def test_binary_file_is_one_line(tmp_path, content, expected):
    p = tmp_path / "bin.yaml"
    p.write_bytes(content)
    line = one_error_line(validate(p), "bin.yaml")
    assert line.startswith("bin.yaml: ") and expected in line


def test_utf8_bom_and_non_ascii_text_are_fine(tmp_path):
    p = tmp_path / "bom.yaml"
    p.write_bytes(b"\xef\xbb\xbf" + (VALID + "description: caf\xc3\xa9 \xe7\xb1\xbb\n").encode("latin-1"))
    assert load(p).description == "café 类"


def test_control_character_is_one_line(tmp_path):
    p = tmp_path / "ctl.yaml"
    p.write_bytes(b"name: x\x07y\n")
    line = one_error_line(validate(p), "ctl.yaml")
    assert "character #x0007" in line and "not allowed" in line


def test_oversized_file_is_refused(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text(VALID + "#" * yamlio.MAX_BYTES + "\n")
    line = one_error_line(validate(p), "big.yaml")
    assert line == "big.yaml: file is larger than 1,048,576 bytes; refused"


# ----------------------------------------------------------------------------- alias bombs
def test_billion_laughs_is_refused_quickly(tmp_path):
    p = tmp_path / "lol.yaml"
    p.write_text(billion_laughs(9))
    start = time.perf_counter()
    res = validate(p, timeout=30)  # before the bound this never returned
    elapsed = time.perf_counter() - start
    line = one_error_line(res, "lol.yaml")
    assert elapsed < 10, elapsed
    assert "YAML aliases expand the document to" in line and "refused" in line


def test_alias_bound_in_process_is_fast():
    text = billion_laughs(9)
    start = time.perf_counter()
    with pytest.raises(RecipeError, match="expand the document to 1,749,445,668 nodes"):
        loads(text, "lol.yaml")
    assert time.perf_counter() - start < 0.5


def test_moderate_alias_use_is_allowed():
    # 4 levels of 9: 9**4 = 6561 leaves, under the 100,000-node bound
    data = yamlio.parse(billion_laughs(4).replace("model: {name: simple_cnn, filters: *x4}\n", ""),
                        "f.yaml")
    assert len(data["x4"]) == 9 and len(data["x4"][0][0][0]) == 9


def test_recursive_alias_is_refused():
    with pytest.raises(RecipeError, match=r"f.yaml: line 1: a node that contains itself"):
        yamlio.parse("a: &a [1, *a]\n", "f.yaml")


def test_deep_nesting_is_refused():
    with pytest.raises(RecipeError, match="f.yaml: .*(nested more than|nested too deeply)"):
        yamlio.parse("a: " + "[" * 400 + "]" * 400 + "\n", "f.yaml")


# ----------------------------------------------------------------------------- syntax / tags
def test_tab_indentation_gives_line_and_column(tmp_path):
    p = tmp_path / "tabs.yaml"
    p.write_text("name: x\ndata:\n\tsource: {type: digits}\n")
    line = one_error_line(validate(p), "tabs.yaml")
    assert line.startswith("tabs.yaml: line 3, column 1: YAML syntax error: ")
    assert "'\\t'" in line and "spaces" in line


def test_unclosed_flow_mapping_gives_line_and_column(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata:\n  source: {type: digits\nmodel: {name: simple_cnn}\n")
    line = one_error_line(validate(p), "bad.yaml")
    assert line.startswith("bad.yaml: line 4, column ") and "YAML syntax error" in line


def test_python_tag_refused_through_cli(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    res = validate(p)
    line = one_error_line(res, "evil.yaml")
    assert "line 1: unsafe or unknown YAML tag" in line and "python/object/apply:os.system" in line
    assert "pwned" not in res.stdout


def test_two_documents_are_refused():
    with pytest.raises(RecipeError, match="f.yaml: line 2, column 1: YAML syntax error: "
                                          "expected a single document in the stream, "
                                          "but found another document"):
        yamlio.parse("a: 1\n---\nb: 2\n", "f.yaml")


def test_set_value_goes_through_the_strict_reader(tiny_recipe):
    with pytest.raises(RecipeError) as info:
        load(tiny_recipe, ["train.optimizer={type: sgd, lr: 1, lr: 2}"])
    assert str(info.value) == (
        "--set train.optimizer={type: sgd, lr: 1, lr: 2}: line 1: duplicate key 'lr' (first at line 1)"
    )


# ----------------------------------------------------------------------------- cost-matrix CSV
@pytest.mark.parametrize("content,expected", [
    (b"0,1\n\xff\xfe,0\n", "not a UTF-8 text file"),
    (b"0,1\n1,0\x00\n", "contains NUL bytes"),
    (b"0,1\nx,0\n", "line 2: non-numeric cell 'x' in row 2"),
    (b'0,"1\n1,0\n', "non-numeric cell '1\\n1,0' in row 1"),
])
def test_cost_matrix_csv_errors_are_one_line(tmp_path, content, expected):
    (tmp_path / "m.csv").write_bytes(content)
    p = tmp_path / "cm.yaml"
    p.write_text(VALID + "train:\n  loss: {type: cost_matrix, matrix: m.csv}\n")
    line = one_error_line(validate(p), "cm.yaml")
    assert line.startswith("cm.yaml: train.loss.matrix: ") and "m.csv" in line and expected in line


def test_cost_matrix_csv_missing_or_folder(tmp_path):
    p = tmp_path / "cm.yaml"
    p.write_text(VALID + "train:\n  loss: {type: cost_matrix, matrix: m.csv}\n")
    with pytest.raises(RecipeError, match="train.loss.matrix: cost matrix file not found: .*m.csv"):
        load(p)
    (tmp_path / "m.csv").mkdir()
    with pytest.raises(RecipeError, match="train.loss.matrix: cost matrix file .*m.csv: not a file"):
        load(p)
