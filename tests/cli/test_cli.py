"""End-to-end CLI checks in subprocesses: lazy imports, exit codes, one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import write_recipe

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
ENV.pop("KCNN_DEBUG", None)


def kcnn(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "kcnn.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout)


HELP_PROBE = """
import sys, time
t = time.perf_counter()
from kcnn.cli.main import app
try:
    app({args!r}, prog_name="kcnn", standalone_mode=False)
except SystemExit:
    pass
print("ELAPSED", time.perf_counter() - t)
print("HEAVY", sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["evaluate", "--help"],
                                  ["recipe", "--help"], ["recipe", "validate", "--help"],
                                  ["recipe", "show", "--help"]])
def test_help_imports_neither_tensorflow_nor_keras(args):
    out = subprocess.run([sys.executable, "-c", HELP_PROBE.format(args=args)],
                         capture_output=True, text=True, env=ENV, check=True).stdout
    assert "HEAVY []" in out
    assert "Usage" in out


@pytest.mark.serial
def test_help_is_fast():
    # Whole process, interpreter start-up included; best of five against a busy machine.
    times = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kcnn.cli.main", "--help"], capture_output=True,
                       env=ENV, check=True)
        times.append(time.perf_counter() - t)
    assert min(times) < 0.5, times


def test_recipe_validate_ok_and_errors(tiny_recipe, tmp_path):
    ok = kcnn("recipe", "validate", tiny_recipe)
    assert ok.returncode == 0 and "ok:" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {source: {type: digits}}\nmodel: {name: simple_cnn}\n"
                   "train: {optimizer: {type: sgd, lr: -1}}\n")
    res = kcnn("recipe", "validate", tiny_recipe, bad)
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: {bad}: train.optimizer.lr: must be > 0 (got -1)"
    assert "Traceback" not in res.stderr


def test_recipe_show_applies_set(tiny_recipe):
    res = kcnn("recipe", "show", tiny_recipe, "--set", "train.optimizer.lr=0.5")
    assert res.returncode == 0
    import yaml

    shown = yaml.safe_load(res.stdout)
    assert shown["train"]["optimizer"]["lr"] == 0.5
    assert shown["train"]["schedule"] == {"warmup_epochs": 0.0, "type": "constant"}


def test_recipe_schema_and_list():
    schema = json.loads(kcnn("recipe", "schema").stdout)
    assert schema["title"] == "kcnn recipe" and "train" in schema["properties"]
    listing = kcnn("recipe", "list").stdout
    assert "quickstart" in listing and "Digits" in listing


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "missing.yaml"], "missing.yaml: file not found"),
        (["train", "{tiny}", "--set", "train.optimizer.lrr=1"], "--set train.optimizer.lrr=1: train.optimizer.lrr: unknown key"),
        (["train", "--resume", "{tmp}"], "not a kcnn run"),
        (["evaluate", "{tmp}/nothing.keras"], "model file not found"),
        (["evaluate", "{tiny}"], "expected a run directory"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, expected, tiny_recipe, tmp_path):
    args = [a.format(tiny=tiny_recipe, tmp=tmp_path) for a in args]
    res = kcnn(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()


def test_debug_env_shows_traceback(tmp_path):
    env = {**ENV, "KCNN_DEBUG": "1"}
    res = subprocess.run([sys.executable, "-m", "kcnn.cli.main", "train", "missing.yaml"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_train_evaluate_cli_and_kill_9_resume(tiny_recipe_dict, tmp_path):
    tiny_recipe_dict["train"]["epochs"] = 4
    tiny_recipe_dict["data"]["samples_per_class"] = 40  # 400 images: short epochs
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "kcnn.cli.main", "train", str(recipe),
                             "--run-dir", str(run)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    state = run / "checkpoints" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text() or "{}").get("epoch", 0) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["epoch"]
    assert 1 <= done < 4
    res = kcnn("train", "--resume", run)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == str(run)
    assert json.loads(state.read_text())["epoch"] == 4
    rows = (run / "history.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(e) for e in range(1, 5)]  # 1-based
    assert not list(run.rglob("*.tmp*")), "no temp files left behind"

    ev = kcnn("evaluate", run, "--json")
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads(ev.stdout)
    assert metrics["split"] == "test" and len(metrics["per_class"]) == 10
    from kcnn.engine.evaluate import format_report

    text = format_report(metrics)
    assert "precision" in text and "balanced_accuracy" in text
