"""Distribution strategies from a recipe's ``distribute`` section, and mixed precision.

``data_parallel`` (JAX, ``keras.distribution``) lives in :mod:`kcnn.engine.data_parallel`;
the ``tf.distribute`` strategies (``mirrored``, ``multi_worker``, ``tpu``) live here.

Model building, compiling and checkpoint loading happen inside the strategy's
scope; the training data come from ``distribute_datasets_from_function`` with
each input pipeline feeding its own per-replica chunks of every global batch
(see :class:`kcnn.data.pipeline.EpochFeeder`).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from kcnn.choices import Strategy, values
from kcnn.errors import KcnnError

STRATEGIES = values(Strategy)


def read_tf_config() -> dict[str, Any]:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise KcnnError("distribute.strategy multi_worker needs the TF_CONFIG environment variable "
                        '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                        '"task": {"type": "worker", "index": 0}})')
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise KcnnError(f"TF_CONFIG is not valid JSON ({err})") from None
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster or not isinstance(task, dict):
        raise KcnnError("TF_CONFIG must have a 'cluster' mapping and a 'task' with 'type' and 'index'")
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise KcnnError(f"TF_CONFIG task {task} does not name a member of the cluster {cluster}")
    return config


# What the multi_worker workarounds below reach into, as this Keras release has it. A Keras
# release that changes any of it fails tests/engine/test_distribute.py loudly, and
# ``multi_worker`` refuses to start with one line instead of patching blindly.
PATCH_TARGETS = {
    "keras.src.backend.tensorflow.trainer.reduce_per_replica": ("values", "strategy", "reduction"),
    "keras.src.backend.tensorflow.trainer.TensorFlowTrainer._maybe_symbolic_build": (
        "self", "iterator", "data_batch"),
    "keras.src.trainers.trainer.Trainer._symbolic_build": ("self", "iterator", "data_batch"),
}
# The upstream bug (tensorflow/tensorflow#72388, keras#20585): scalars reduced along axis 0.
BUGGY_LINE = 'strategy.reduce("MEAN", v, axis=0)'


def patch_target_problems() -> list[str]:
    """Why the multi_worker patches may no longer fit this Keras (empty: they fit)."""
    import inspect
    import pkgutil

    problems = []
    for dotted, params in PATCH_TARGETS.items():
        try:
            obj = pkgutil.resolve_name(dotted)
        except (ImportError, AttributeError):
            problems.append(f"{dotted} is gone")
            continue
        found = tuple(inspect.signature(obj).parameters)
        if found != params:
            problems.append(f"{dotted} now takes {found}, kcnn expects {params}")
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if BUGGY_LINE not in inspect.getsource(tf_trainer.reduce_per_replica):
        problems.append("reduce_per_replica no longer reduces scalars along axis 0 (fixed "
                        "upstream?), so the patch may be unnecessary")
    return problems


def patch_keras_multi_worker_reduce() -> None:
    """Work around Keras 3's ``fit`` under MultiWorkerMirroredStrategy.

    Keras averages each step's logs across workers with ``strategy.reduce("MEAN",
    v, axis=0)``, which fails on the scalar loss and metric values ("Invalid
    reduction dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388).
    Scalars are reduced with ``axis=None`` instead; everything else is unchanged.
    Applied only when a multi_worker strategy is created.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer.reduce_per_replica, "_kcnn_patched", False):
        return
    problems = patch_target_problems()
    moved = [p for p in problems if not p.startswith("reduce_per_replica no longer")]
    if moved:
        raise KcnnError(f"distribute.strategy multi_worker: kcnn's workaround does not fit Keras "
                        f"{keras_version()} ({moved[0]}); use data_parallel on the JAX backend, "
                        f"or a Keras version kcnn was tested with")
    if problems:  # fixed upstream: nothing to patch
        import sys

        print(f"multi_worker: Keras {keras_version()} reduces scalar logs itself; kcnn's "
              f"workaround is not applied", file=sys.stderr)
        return
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and reduction in ("auto", "mean"):
            def mean(v):
                if isinstance(v, tf.distribute.DistributedValues) or tf.is_tensor(v):
                    rank = len(strategy.experimental_local_results(v)[0].shape) if isinstance(
                        v, tf.distribute.DistributedValues) else len(v.shape)
                    return strategy.reduce("MEAN", v, axis=0 if rank else None)
                return v

            return tf.nest.map_structure(mean, values)
        return original(values, strategy, reduction)

    reduce_per_replica._kcnn_patched = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def keras_version() -> str:
    import keras

    return keras.__version__


def is_chief(config: dict[str, Any] | None) -> bool:
    """The chief writes the run dir: task 'chief', else worker 0."""
    if not config:
        return True
    kind, index = config["task"]["type"], config["task"]["index"]
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in config["cluster"])


def make_strategy(cfg, fingerprint: str = "") -> tuple[Any, dict[str, Any] | None]:
    """(strategy or None, TF_CONFIG dict for multi_worker).

    ``data_parallel`` gives a :class:`~kcnn.engine.data_parallel.DataParallelJob` (JAX);
    ``fingerprint`` identifies the recipe, which every process of a job must share."""
    if cfg.strategy == "none":
        return None, None
    if cfg.strategy == "data_parallel":
        from kcnn.engine.data_parallel import start

        return start(cfg, fingerprint), None
    import keras

    if keras.backend.backend() != "tensorflow":
        raise KcnnError(f"distribute.strategy {cfg.strategy!r} needs the TensorFlow backend "
                        f"(KERAS_BACKEND is {keras.backend.backend()!r})")
    import tensorflow as tf

    if cfg.strategy == "mirrored":
        if cfg.devices:
            known = {d.name.replace("/device:", "/").lower() for d in tf.config.list_logical_devices()}
            wanted = [d.lower().replace("/device:", "/") for d in cfg.devices]
            missing = [d for d, w in zip(cfg.devices, wanted)
                       if not any(k.endswith(w.lstrip("/")) for k in known)]
            if missing:
                raise KcnnError(f"distribute.devices: no device {missing[0]!r}; this machine has "
                                f"{', '.join(sorted(known))}")
        return tf.distribute.MirroredStrategy(devices=cfg.devices), None
    if cfg.strategy == "multi_worker":
        config = read_tf_config()
        patch_keras_multi_worker_reduce()
        return tf.distribute.MultiWorkerMirroredStrategy(), config
    if cfg.strategy == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=cfg.tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except Exception as err:  # no TPU here, or a wrong address
            raise KcnnError(f"distribute.strategy tpu: cannot reach a TPU ({type(err).__name__}: {err})") from None
        return tf.distribute.TPUStrategy(resolver), None
    raise KcnnError(f"distribute.strategy: unknown strategy {cfg.strategy!r}; valid: {', '.join(STRATEGIES)}")


def scope(strategy):
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def is_data_parallel(strategy) -> bool:
    from kcnn.engine.data_parallel import DataParallelJob

    return isinstance(strategy, DataParallelJob)


def guard(strategy):
    """Where a multi-process job turns a dead peer into one clear error."""
    return strategy.guard() if is_data_parallel(strategy) else contextlib.nullcontext()


def check_global_batch(batch_size: int, replicas: int) -> int:
    if batch_size % replicas:
        raise KcnnError(
            f"train.batch_size {batch_size} does not divide by the {replicas} replicas; use a multiple "
            f"of {replicas} (each epoch's last partial batch is dropped, but every full batch is split evenly)"
        )
    return batch_size // replicas


def distributed_train_dataset(strategy, make_dataset, sampler, batch_size: int, begin: int,
                              end: int):
    """(DistributedDataset, feeders) for epochs ``begin .. end-1``: every input pipeline
    feeds its own per-replica chunks of each global batch (``make_dataset(feeder)``)."""
    import tensorflow as tf

    from kcnn.data.pipeline import EpochFeeder

    feeders: list[EpochFeeder] = []

    def dataset_fn(ctx: tf.distribute.InputContext):
        replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        feeder = EpochFeeder(sampler, batch_size, begin, end,
                             shard=(ctx.input_pipeline_id, ctx.num_input_pipelines, replicas))
        feeders.append(feeder)
        return make_dataset(feeder)

    return strategy.distribute_datasets_from_function(dataset_fn), feeders


def set_precision(precision: str) -> None:
    """Set the Keras dtype policy; refuse float16 where it cannot run properly."""
    import keras

    if precision == "mixed_float16":
        from kcnn.backend import gpus

        if not gpus():
            raise KcnnError(
                "train.precision mixed_float16 needs a GPU (float16 math on this CPU is emulated and "
                "far slower than float32); use mixed_bfloat16 or float32 here"
            )
    keras.mixed_precision.set_global_policy(precision)


def prebuild_for_multi_worker(setup, sampler, batch_size: int, epoch: int) -> None:
    """Build metrics, loss and optimizer from one local batch before ``fit``.

    Keras' ``fit`` first averages a batch across replicas to build them
    symbolically (``_maybe_symbolic_build``); under MultiWorkerMirroredStrategy
    that reduce fails on nested (x, y) batches. Building from a local batch
    inside the strategy scope, then skipping that step, gives the same state.
    Like :func:`patch_keras_multi_worker_reduce`, this reaches into Keras
    internals, so it lives here, beside the other multi-worker workaround.
    """
    from kcnn.data.pipeline import EpochFeeder

    model = setup.fit_model
    local = EpochFeeder(sampler, batch_size, epoch, epoch + 1)
    batch = next(iter(setup.train_dataset(local)))
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
