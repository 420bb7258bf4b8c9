"""tf.distribute from the recipe: sharded input, mirrored on 2 logical CPUs, two local workers."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from kcnn.data.pipeline import EpochFeeder
from kcnn.data.samplers import ShuffleSampler
from kcnn.engine.distribute import check_global_batch, read_tf_config, set_precision
from kcnn.errors import KcnnError
from kcnn.recipes import load
from tests.conftest import write_recipe

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}


def test_sharded_feeders_cover_every_index_once_per_epoch():
    sampler = ShuffleSampler(np.arange(103) % 4, 4, seed=3)
    seen = {0: [], 1: []}
    for pipeline in range(2):  # 2 workers x 2 replicas each
        for epoch, _, idx, *_ in EpochFeeder(sampler, 20, 0, 2, shard=(pipeline, 2, 2))():
            assert len(idx) == 5
            seen[int(epoch)].extend(idx.tolist())
    for epoch in (0, 1):
        full = sampler.epoch_indices(epoch)[:100]  # 5 full global batches; the remainder is dropped
        assert sorted(seen[epoch]) == sorted(full.tolist())
        assert len(seen[epoch]) == len(set(seen[epoch])) == 100


def test_global_batch_must_divide():
    assert check_global_batch(64, 2) == 32
    with pytest.raises(KcnnError, match="batch_size 30 does not divide by the 4 replicas"):
        check_global_batch(30, 4)


@pytest.mark.parametrize("value,match", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', "must have a 'cluster' mapping and a 'task'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "does not name a member"),
])
def test_tf_config_errors(monkeypatch, value, match):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if value is not None:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(KcnnError, match=match):
        read_tf_config()


def test_mixed_float16_refused_without_gpu():
    with pytest.raises(KcnnError, match="mixed_float16 needs a GPU"):
        set_precision("mixed_float16")
    import keras

    set_precision("mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    set_precision("float32")


def test_unknown_strategy_is_a_recipe_error(tiny_recipe):
    from kcnn.errors import RecipeError

    with pytest.raises(RecipeError, match=r"distribute.strategy: must be one of 'none', 'data_parallel', 'mirrored'"):
        load(tiny_recipe, ["distribute.strategy=horovod"])


def test_multi_worker_without_tf_config_exits_2(tiny_recipe, tmp_path):
    env = {k: v for k, v in ENV.items() if k != "TF_CONFIG"}
    res = subprocess.run([sys.executable, "-m", "kcnn.cli.main", "train", str(tiny_recipe),
                          "--set", "distribute.strategy=multi_worker", "--run-dir", str(tmp_path / "r")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "TF_CONFIG" in res.stderr
    assert not (tmp_path / "r").exists()


MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from kcnn.engine.train import train
from kcnn.recipes import load
out = {}
for name, sets in (("single", []), ("mirrored", ["distribute={strategy: mirrored, devices: ['/cpu:0', '/cpu:1']}"])):
    run = train(load(sys.argv[1], sets), run_dir=sys.argv[2] + "/" + name)
    out[name] = json.loads((run / "checkpoints" / "state.json").read_text())["history"]
print("RESULT", json.dumps(out))
"""


def tiny_distributed_recipe(tmp_path, tiny_recipe_dict, epochs=2):
    tiny_recipe_dict["data"]["samples_per_class"] = 20  # 200 training images
    tiny_recipe_dict["train"].update(batch_size=20, epochs=epochs)
    return write_recipe(tmp_path / "dist.yaml", tiny_recipe_dict)


def test_mirrored_on_two_logical_cpus_matches_single_device(tmp_path, tiny_recipe_dict):
    recipe = tiny_distributed_recipe(tmp_path, tiny_recipe_dict)
    res = subprocess.run([sys.executable, "-c", MIRRORED, str(recipe), str(tmp_path)],
                         capture_output=True, text=True, env=ENV, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "mirrored: global batch 20 = 2 replicas x 10" in res.stderr
    out = json.loads(res.stdout.split("RESULT", 1)[1])
    single, mirrored = out["single"], out["mirrored"]
    assert len(single) == len(mirrored) == 2
    for a, b in zip(single, mirrored):
        # Same global batches in the same order, gradients averaged over replicas.
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=2e-3)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_local_workers_train_and_chief_writes_the_run(tmp_path, tiny_recipe_dict):
    recipe = tiny_distributed_recipe(tmp_path, tiny_recipe_dict, epochs=1)
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    try:
        for index in range(2):
            env = {**ENV, "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                                   "task": {"type": "worker", "index": index}})}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "kcnn.cli.main", "train", str(recipe), "--set",
                 "distribute.strategy=multi_worker", "--run-dir", str(tmp_path / "run")],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outputs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "multi_worker: global batch 20 = 2 replicas x 10" in outputs[0][1]
    run = tmp_path / "run"
    assert outputs[0][0].strip().splitlines()[-1] == str(run)
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1 and (run / "model.keras").is_file() and (run / "metrics.json").is_file()
    assert outputs[1][0].strip().splitlines()[-1] != str(run)  # the other worker used a scratch dir


def test_mixed_bfloat16_training_keeps_float32_logits_and_restores_policy(tiny_recipe, tmp_path):
    import keras

    from kcnn.engine.train import train

    run = train(load(tiny_recipe, ["train.precision=mixed_bfloat16", "train.epochs=1"]),
                run_dir=tmp_path / "bf16")
    assert keras.mixed_precision.global_policy().name == "float32"
    model = keras.saving.load_model(run / "model.keras", compile=False)
    conv = model.get_layer("conv1_1")
    assert conv.dtype_policy.name == "mixed_bfloat16" and conv.kernel.dtype == "float32"
    assert model.get_layer("logits").dtype_policy.name == "float32"
    out = model(np.zeros((2, 8, 8, 1), "float32"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.3


def test_keras_still_has_what_the_multi_worker_patch_replaces():
    """Fails loudly when a Keras release moves, re-signs or fixes the private functions that
    kcnn patches for multi_worker (engine/distribute.py): re-check the patch, then update
    PATCH_TARGETS / BUGGY_LINE, or drop the patch if Keras fixed tensorflow#72388."""
    from kcnn.engine.distribute import patch_target_problems

    assert patch_target_problems() == []


def test_a_patch_target_that_moved_is_one_line(monkeypatch):
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from kcnn.engine import distribute

    monkeypatch.setattr(tf_trainer, "reduce_per_replica", lambda values, strategy: values)
    problems = distribute.patch_target_problems()
    assert any("reduce_per_replica now takes ('values', 'strategy')" in p for p in problems)
    with pytest.raises(KcnnError, match="multi_worker: kcnn's workaround does not fit Keras"):
        distribute.patch_keras_multi_worker_reduce()


def test_an_upstream_fix_skips_the_patch(monkeypatch, capsys):
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from kcnn.engine import distribute

    def reduce_per_replica(values, strategy, reduction):  # a Keras that reduces scalars itself
        return values

    monkeypatch.setattr(tf_trainer, "reduce_per_replica", reduce_per_replica)
    distribute.patch_keras_multi_worker_reduce()
    assert tf_trainer.reduce_per_replica is reduce_per_replica  # left alone
    assert "workaround is not applied" in capsys.readouterr().err
