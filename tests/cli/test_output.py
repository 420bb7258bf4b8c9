"""What a user sees from the real ``kcnn``: no library chatter on stderr (one line for an
error, none for a run), one error prefix, clean help, --version, and outputs that say
where they went."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from typer.main import get_command

from kcnn import __version__, quiet
from kcnn.cli import main as cli
from tests.conftest import noise_lines

# As a user runs it: no TF_CPP_MIN_LOG_LEVEL of our own, no KCNN_DEBUG.
ENV = {k: v for k, v in os.environ.items()
       if k not in ("TF_CPP_MIN_LOG_LEVEL", "KCNN_DEBUG", "TF_CPP_MAX_VLOG_LEVEL")}


def kcnn(*args, cwd=None, env=ENV):
    return subprocess.run([sys.executable, "-m", "kcnn.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the shared tiny run, with evaluation plots on."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    recipe = run / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("plots: false", "plots: true"))
    return run


# ----------------------------------------------------------------------------- fast: no TensorFlow
def test_version():
    res = kcnn("--version")
    assert res.returncode == 0 and res.stdout == f"kcnn {__version__}\n" and res.stderr == ""


@pytest.mark.parametrize("args,expected", [
    (["evaluate"], "error: missing argument 'RUN_DIR|MODEL' (see 'kcnn evaluate -h')"),
    (["export", "run", "--quantise", "int8"], "error: no such option: --quantise"),
    (["bench", "train", "r.yaml", "--steps", "many"], "error: invalid value for '--steps'"),
    (["trian"], "error: no such command 'trian'"),
    (["train", "missing.yaml"], "error: missing.yaml: file not found"),  # kcnn's own
])
def test_every_error_is_one_line_with_one_prefix(args, expected, tmp_path):
    res = kcnn(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith(expected), res.stderr
    assert res.stdout == ""


def _commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name)


def test_help_shows_flags_without_values_and_upper_case_names(monkeypatch, capsys):
    monkeypatch.setattr(quiet, "install", lambda verbose_flag=False: None)  # in process
    commands = list(_commands(get_command(cli.app)))
    assert ("export",) in commands and ("compress", "prune") in commands
    for path in [(), *commands]:
        assert cli.run([*path, "--help"]) == 0
        text = capsys.readouterr().out
        usage = text.splitlines()[0]
        assert usage.startswith(f"Usage: kcnn {' '.join(path)}".rstrip()), usage
        names = re.findall(r"[{\[]([^\]}]+)[}\]]", usage)
        assert all(n == n.upper() for n in names), usage  # {RUN_DIR}, [RECIPE], not {run_dir}
        options = text.split("Options:")[1]
        # No type placeholders: not "--all <bool>" for a flag, nor "--format <str>".
        assert not re.search(r"<(bool|str|int|float|list|path)\b", options), text
        assert re.search(r"^  -h, --help +Show this message and exit\.$", options, re.M), text


def test_verbose_and_debug_leave_the_libraries_alone(monkeypatch):
    monkeypatch.setattr(quiet, "_state", {"installed": False, "verbose": False, "depth": 0})
    monkeypatch.delenv("KCNN_DEBUG", raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    quiet.install(verbose_flag=True)
    assert not quiet.active() and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    assert not any(type(f).__name__ == "_MuteFirstImport" for f in sys.meta_path)


# ----------------------------------------------------------------------------- real runs
def test_user_error_after_tensorflow_loads_is_one_line(trained_run, tmp_path):
    res = kcnn("visualize", trained_run, "--filters", "conv9", "--out", tmp_path, cwd=tmp_path)
    assert res.returncode == 2
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: no layer 'conv9' in model")


def test_evaluate_is_quiet_and_names_its_plot(run_copy):
    res = kcnn("evaluate", run_copy)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", noise_lines(res.stderr) or res.stderr
    lines = res.stdout.strip().splitlines()
    assert f"plot written to {run_copy / 'plots' / 'confusion_matrix.png'}" in lines
    assert lines[-1] == f"metrics written to {run_copy / 'metrics.json'}"


def test_export_is_quiet_and_compares_with_the_float_export(run_copy):
    from kcnn.export import api

    float_report = api.export_tflite(run_copy, mode="none", latency_runs=3)
    res = kcnn("export", run_copy, "--quantize", "dynamic")
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", noise_lines(res.stderr) or res.stderr
    lines = res.stdout.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["mode", "size (KiB)", "size vs float"] and "latency vs float" in header
    assert len(set(header)) == len(header)
    row = dict(zip(header, (c.strip() for c in lines[2].strip("|").split("|"))))
    report = json.loads((run_copy / "exports" / "dynamic" / "export_report.json").read_text())
    assert row["size vs float"] == f"{report['size_bytes'] / float_report['size_bytes']:.2f}×"
    assert "nan" not in res.stdout and "–" not in row["latency vs float"]
    assert f"size and latency compared with the float export {float_report['file']}" in lines
    assert lines[-1] == report["file"]


def test_export_all_says_where_the_comparison_went(monkeypatch, capsys, tmp_path):
    from kcnn.export import api

    report = {"quantize": "none", "size_bytes": 2048, "accuracy": 0.9, "keras_accuracy": 0.9,
              "agreement": 1.0, "max_abs_logit_diff": 0.0, "latency_ms_median": 0.1,
              "run": str(tmp_path)}
    monkeypatch.setattr(quiet, "install", lambda verbose_flag=False: None)  # in process
    monkeypatch.setattr(api, "export_run", lambda *a, **k: [report])
    assert cli.run(["export", str(tmp_path), "--all"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"comparison written to {tmp_path / 'exports' / 'comparison.md'} (and .json)"
