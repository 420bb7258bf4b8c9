"""``kcnn bench train``: numbers come out, JSON is written, and --synthetic runs without TensorFlow."""

import json
import os
import subprocess
import sys

import pytest

from kcnn.errors import KcnnError

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def test_bench_synthetic_compare_plain_writes_json(tiny_recipe, tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "kcnn.cli.main", "bench", "train", str(tiny_recipe),
                          "--synthetic", "--steps", "12", "--warmup", "3", "--batch-size", "16",
                          "--compare-plain", "--out", str(out)],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["batch_size"] == 16 and result["input_shape"] == [8, 8, 1]
    assert result["kcnn"]["timed_steps"] == 9 and result["plain"]["timed_steps"] == 9  # 12 - 3
    assert result["kcnn"]["images_per_s"] > 0
    assert abs(result["ratio"] - result["kcnn"]["images_per_s"] / result["plain"]["images_per_s"]) < 1e-9
    assert "ratio kcnn/plain" in res.stdout


NO_TF = """
import sys
sys.modules["tensorflow"] = None  # as on a machine without TensorFlow
from kcnn.bench import bench_train
from kcnn.recipes import load
recipe = load(sys.argv[1], ["train.precision=mixed_bfloat16"])  # what a GPU run would use
r = bench_train(recipe, steps=6, warmup=2, batch_size=8, synthetic=True, compare_plain=True)
assert "tensorflow" not in [m for m in sys.modules if sys.modules[m] is not None]
assert r["precision"] == "mixed_bfloat16" and r["plain"]["timed_steps"] == 4 and r["ratio"] > 0
print("BACKEND", r["backend"], r["pipeline"], r["kcnn"]["timed_steps"])
"""


def test_synthetic_bench_compares_plain_on_jax_in_bfloat16_without_tensorflow(tiny_recipe):
    env = {**ENV, "KERAS_BACKEND": "jax"}
    res = subprocess.run([sys.executable, "-c", NO_TF, str(tiny_recipe)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "BACKEND jax kcnn model, NumPy arrays (no TensorFlow installed) 4" in res.stdout


def test_timed_steps_are_steps_minus_warmup():
    from kcnn.bench import _rate

    stamps = [0.0] + [float(i) for i in range(1, 21)]  # start, then 20 steps of 1 s each
    rate = _rate(stamps, warmup=5, batch=4)
    assert rate["timed_steps"] == 15 and rate["steps_per_s"] == 1.0 and rate["images_per_s"] == 4.0
    assert _rate(stamps, warmup=0, batch=1)["timed_steps"] == 20
    with pytest.raises(KcnnError, match="--steps must exceed --warmup"):
        _rate(stamps, warmup=20, batch=1)


def test_bench_bad_steps_exit_2(tiny_recipe):
    res = subprocess.run([sys.executable, "-m", "kcnn.cli.main", "bench", "train", str(tiny_recipe),
                          "--steps", "3", "--warmup", "5"], capture_output=True, text=True, env=ENV)
    assert res.returncode == 2 and "--steps must exceed --warmup" in res.stderr
