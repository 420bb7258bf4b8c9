"""``kcnn train``'s header and footer: run dir, data per split and class, model size, best
epoch, test metrics, files and next commands; stdout's last line stays the run dir."""

from __future__ import annotations

import numpy as np

from kcnn.engine.summary import class_counts_text
from kcnn.engine.train import train
from kcnn.recipes import load


def test_class_counts_text():
    y = np.array([0] * 30 + [1] * 10 + [2] * 5)
    assert class_counts_text(y, ["a", "b", "c"]) == "a 30 · b 10 · c 5 (imbalance 6.0:1)"
    many = class_counts_text(np.arange(40) % 20, [str(i) for i in range(20)])
    assert many == "20 classes: min 2, median 2, max 2 (imbalance 1.0:1)"


def test_train_prints_a_header_and_a_footer(tiny_recipe, tmp_path, capsys):
    run = train(load(tiny_recipe, ["train.epochs=1"]), run_dir=tmp_path / "run")
    out = capsys.readouterr().out.splitlines()
    text = "\n".join(out)
    assert out[0] == f"run     {run}"
    assert "data    train 1,212 · val 135 · test 450 images of 8×8×1, 10 classes" in text
    assert "train per class: 0 120 · 1 122 · 2 120" in text and "(imbalance 1.0:1)" in text
    assert "model   simple_cnn: " in text and " parameters, " in text and "MACs per image" in text
    assert "best    epoch 1: val_accuracy 0." in text
    assert "test    accuracy 0." in text and "(450 images)" in text
    assert f"next    kcnn evaluate {run}" in text
