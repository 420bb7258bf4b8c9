"""Exact resume with a real recipe (batch norm, dropout, stochastic pooling, augmentation):
a run killed with SIGKILL at any point and resumed gives the uninterrupted run's history and
weights. Plus: the last two checkpoints, a damaged latest checkpoint, finished and extended
runs, signals, write failures, file permissions and refusals to overwrite."""

from __future__ import annotations

import csv
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from kcnn.engine.rundir import RunDir
from kcnn.engine.train import train
from kcnn.errors import Interrupted, KcnnError
from kcnn.recipes import load, loads

ROOT = Path(__file__).resolve().parents[2]
REAL = """
name: real
seed: 0
data:
  source: {type: digits}
  samples_per_class: 24
  preprocess: {rescale: 1/16, standardize: true}
  augment: {crop_padding: 1, translate: 0.1, rotate: 5}
  sampler: {type: class_balanced}
model: {name: simple_cnn, filters: [6, 8], batch_norm: true, dropout: 0.3, pooling: stochastic}
train:
  epochs: 3
  batch_size: 32
  optimizer: {type: adam, lr: 0.01}
  schedule: {type: cosine}
  verbose: 0
  callbacks: {tensorboard: false}
evaluate: {plots: false}
"""

# Run in a child process: train the recipe and SIGKILL itself at the named point.
DRIVER = """
import os, signal, sys
import keras
from kcnn.engine import rundir
from kcnn.engine.train import train
from kcnn.recipes import load

recipe, run, point = sys.argv[1], sys.argv[2], sys.argv[3]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class Kill(keras.callbacks.Callback):
    epoch = 0
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if point == "mid-epoch" and (self.epoch, batch) == (1, 2):
            die()
    def on_epoch_end(self, epoch, logs=None):  # runs after the run checkpoint's commit
        if point == "between-epochs" and epoch == 0:
            die()

if point == "checkpoint-write":  # weights of epoch 2 written, state.json not yet
    original = rundir.RunDir.write_state
    def write_state(self, state):
        if state.get("epoch") == 2:
            die()
        original(self, state)
    rundir.RunDir.write_state = write_state

train(load(recipe), run_dir=run, callbacks=[Kill()])
"""


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv") as fh:
        return list(csv.DictReader(fh))


def weights(run: Path) -> list[np.ndarray]:
    return keras.saving.load_model(run / "model.keras", compile=False).get_weights()


@pytest.fixture(scope="module")
def real_recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "real.yaml"
    path.write_text(REAL)
    return path


@pytest.fixture(scope="module")
def uninterrupted(real_recipe, tmp_path_factory):
    return train(load(real_recipe), run_dir=tmp_path_factory.mktemp("full") / "run")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["mid-epoch", "between-epochs", "checkpoint-write"])
def test_sigkill_then_resume_is_exact(point, real_recipe, uninterrupted, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.run([sys.executable, "-c", DRIVER, str(real_recipe), str(run), point],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    done = RunDir(run).read_state()["epoch"]
    assert done == {"mid-epoch": 1, "between-epochs": 1, "checkpoint-write": 1}[point]
    resumed = train(resume=run)
    assert rows(resumed) == rows(uninterrupted)  # every column of every epoch, exactly
    for a, b in zip(weights(resumed), weights(uninterrupted)):
        np.testing.assert_array_equal(a, b)


def test_two_checkpoints_kept_and_a_damaged_latest_falls_back(real_recipe, uninterrupted,
                                                               tmp_path, capsys):
    ckpts = sorted(p.name for p in (uninterrupted / "checkpoints").glob("epoch-*"))
    assert ckpts == ["epoch-0002.state.json", "epoch-0002.weights.h5",
                     "epoch-0003.state.json", "epoch-0003.weights.h5"]
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    latest = run / "checkpoints" / "epoch-0003.weights.h5"
    latest.write_bytes(latest.read_bytes()[:200])  # truncated by a crash or a full disk
    (run / "metrics.json").unlink()
    state, note = RunDir(run).resume_state()
    assert state["epoch"] == 2
    assert "epoch-0003.weights.h5 is damaged" in note and "previous checkpoint (epoch 2)" in note
    resumed = train(resume=run)
    err = capsys.readouterr().err
    assert "resuming from the previous checkpoint (epoch 2)" in err
    assert rows(resumed) == rows(uninterrupted)


def test_finished_run_says_so_and_extends(real_recipe, tmp_path, capsys):
    constant = REAL.replace("schedule: {type: cosine}", "schedule: {type: constant}")
    recipe = loads(constant.replace("epochs: 3", "epochs: 2"))
    run = train(recipe, run_dir=tmp_path / "two")
    capsys.readouterr()
    assert train(resume=run) == run
    err = capsys.readouterr().err
    assert "already finished after 2 of 2 epochs; nothing to resume" in err
    assert "epoch 3/2" not in err
    with pytest.raises(KcnnError, match="--epochs: must be more than the 2 epochs"):
        train(resume=run, epochs=2)
    train(resume=run, epochs=3)
    assert "epochs: 3" in (run / "recipe.yaml").read_text()
    straight = train(loads(constant), run_dir=tmp_path / "three")
    assert rows(run) == rows(straight)  # a constant schedule: extending == training longer


def test_sigint_and_sigterm_leave_a_resumable_run(real_recipe, tmp_path):
    long = tmp_path / "long.yaml"
    long.write_text(REAL.replace("epochs: 3", "epochs: 200"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KCNN_NO_PROGRESS": "1"}
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        run = tmp_path / f"run-{sig.name}"
        proc = subprocess.Popen([sys.executable, "-m", "kcnn.cli.main", "train", str(long),
                                 "--run-dir", str(run)], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while time.time() < deadline and not (run / "history.csv").is_file():
            time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == code, err[-2000:]
        last = [line for line in err.splitlines() if line.strip()][-1]
        assert last.startswith(f"interrupted by {sig.name} during epoch ")
        assert last.endswith(f"Resume with: kcnn train --resume {run}")
        assert out.strip().splitlines()[-1] == str(run)  # scripts still find the run dir
        state = RunDir(run).read_state()
        assert state["epoch"] >= 1 and (run / "checkpoints" / state["checkpoint"]).is_file()


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous(real_recipe, tmp_path,
                                                                      monkeypatch):
    original = keras.Model.save_weights

    def full_disk(self, path, *args, **kwargs):
        if "epoch-0002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    with pytest.raises(KcnnError, match=r"epoch-0002.weights.h5: cannot write \(No space left on "
                                        r"device\); any previous version of the file is left"):
        train(load(real_recipe), run_dir=tmp_path / "run")
    state = RunDir(tmp_path / "run").read_state()
    assert state["epoch"] == 1 and state["checkpoint"] == "epoch-0001.weights.h5"
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp*"))
    monkeypatch.setattr(keras.Model, "save_weights", original)
    assert RunDir(tmp_path / "run").resume_state()[1] is None  # the previous one is intact


def test_files_follow_the_umask_and_exports_are_not_overwritten(real_recipe, uninterrupted,
                                                                tmp_path):
    from kcnn.export import api

    old = os.umask(0o022)
    try:
        run = train(loads(REAL.replace("epochs: 3", "epochs: 1")), run_dir=tmp_path / "run")
        for name in ("model.keras", "metrics.json", "history.csv", "recipe.yaml",
                     "checkpoints/state.json", "checkpoints/epoch-0001.weights.h5"):
            assert (run / name).stat().st_mode & 0o777 == 0o644, name
        report = api.export_run(run, fmt="keras")[0]
        assert Path(report["file"]).stat().st_mode & 0o777 == 0o644
        with pytest.raises(KcnnError, match=r"model.keras: already exists; pass --force"):
            api.export_run(run, fmt="keras")
        api.export_run(run, fmt="keras", force=True)
    finally:
        os.umask(old)
    assert api.default_out(RunDir(run), "tflite", "int8", int8_io=True).parent.name == "int8_io"
    assert api.default_out(RunDir(run), "tflite", "int8").parent.name == "int8"


class RaiseAt(keras.callbacks.Callback):
    """Ctrl-C in the middle of ``epoch`` (0-based), after ``batch`` batches."""

    def __init__(self, epoch: int, batch: int = 1):
        super().__init__()
        self.at, self.epoch = (epoch, batch), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt


SMALL = REAL.replace("samples_per_class: 24", "samples_per_class: 12").replace(
    "filters: [6, 8]", "filters: [4, 6]")
VARIANTS = {
    "shuffle": "  sampler: {type: shuffle}\n",
    "batch_downsample": "  sampler: {type: batch_downsample}\n",
    "label_shuffling": "  sampler: {type: label_shuffling}\n",
    "freeze_phases": "train_unfreeze",
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_interrupt_then_resume_is_exact_for_samplers_and_freeze_phases(variant, tmp_path):
    text = SMALL
    if VARIANTS[variant] == "train_unfreeze":
        text = text.replace("  epochs: 3\n", "  epochs: 3\n  unfreeze: {start_top: 1, every: 1}\n")
    else:
        text = text.replace("  sampler: {type: class_balanced}\n", VARIANTS[variant])
    assert_interrupted_resume_is_exact(loads(text), tmp_path, epoch=1)


@pytest.mark.slow
def test_interrupt_then_resume_is_exact_with_distillation(trained_run, tmp_path):
    recipe = loads(SMALL + f"distill: {{teacher: {trained_run}, temperature: 3, alpha: 0.7}}\n")
    assert_interrupted_resume_is_exact(recipe, tmp_path, epoch=2)


def assert_interrupted_resume_is_exact(recipe, tmp_path, epoch: int) -> None:
    """Ctrl-C in the middle of ``epoch`` (0-based), resume: the same history and weights as an
    uninterrupted run."""
    full = train(recipe, run_dir=tmp_path / "full")
    with pytest.raises(Interrupted):
        train(recipe, run_dir=tmp_path / "cut", callbacks=[RaiseAt(epoch=epoch)])
    resumed = train(resume=tmp_path / "cut")
    assert rows(resumed) == rows(full)
    for a, b in zip(weights(resumed), weights(full)):
        np.testing.assert_array_equal(a, b)
