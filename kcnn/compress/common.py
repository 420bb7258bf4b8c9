"""What the compress commands share: the source run, fine-tuning, measuring, the new run dir."""

from __future__ import annotations

import datetime as _dt
import gzip
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcnn import __version__
from kcnn.errors import KcnnError, RunDirError
from kcnn.io import atomic_path, public_mode, write_json


# ----------------------------------------------------------------------------- source run
@dataclass
class Source:
    """A trained run opened for compression: its run dir, recipe, data and best model."""

    run: Any  # RunDir
    recipe: Any  # Recipe
    data: Any  # Dataset
    model: Any  # keras.Model


def open_source_run(run_dir: str | Path):
    """The run (``RunDir``) with a trained ``model.keras``; a :class:`KcnnError` otherwise.

    Imports nothing heavy, so a bad argument fails before TensorFlow loads.
    """
    from kcnn.saving import resolve

    return resolve(run_dir, kinds=("run",)).run


def load_source(run_dir: str | Path) -> Source:
    from kcnn.data.sources import load_dataset
    from kcnn.engine.prepare import setup_determinism
    from kcnn.recipes import load
    from kcnn.saving import load_keras_model

    run = open_source_run(run_dir)
    recipe = load(run.recipe)
    setup_determinism(recipe.seed, recipe.train.deterministic)
    if recipe.data.task == "regression":
        raise KcnnError(f"{run.path}: kcnn compress measures class accuracy; regression runs "
                        f"(data.task: regression) are not supported")
    data = load_dataset(recipe.data)
    model = load_keras_model(run.model)
    if not hasattr(model, "_nodes_by_depth"):
        raise KcnnError(f"{run.model}: compression needs a functional model "
                        f"(got a subclassed {type(model).__name__})")
    return Source(run, recipe, data, model)


def check_finetune(finetune_epochs: int, lr: float | None) -> None:
    if not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise KcnnError(f"--finetune-epochs: must be >= 0 (got {finetune_epochs})")
    if lr is not None and not lr > 0:
        raise KcnnError(f"--lr: must be > 0 (got {lr})")


def plain_copy(model):
    """The same functional model with fresh layers and the same weights, uncompiled
    (no masks, constraints' state or optimizer): what a compressed run keeps."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def open_and_measure(run_dir: str | Path, out: str | Path | None, *, tflite: bool,
                     latency_runs: int, log) -> tuple[Source, dict[str, Any]]:
    """Open the source run (refusing a taken ``out`` first) and measure its model: the
    "before" column of every compress command."""
    run = open_source_run(run_dir)
    if out is not None:
        check_out(out)
    source = load_source(run.path)
    log(f"measuring the source model {source.run.model} (accuracy on the "
        f"{source.recipe.evaluate.split} split)")
    before = measure(source.model, source, tflite=tflite, latency_runs=latency_runs)
    before["accuracy_bn_recalibrated"] = source_accuracy_recalibrated(source)
    return source, before


def check_fraction(value: float, option: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
        raise KcnnError(f"{option}: must be in (0, 1) (got {value})")
    return float(value)


# ----------------------------------------------------------------------------- output run dir
def default_out(recipe_name: str, kind: str, runs_root: str | Path = "runs") -> Path:
    """``runs/<name>/<timestamp>-<kind>`` (with ``-1``, ``-2``… if taken)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(runs_root) / recipe_name / f"{stamp}-{kind}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(f"{out}: run dir already exists and is not empty")
    return out


def write_run(out: Path, source: Source, model, *, info: dict[str, Any],
              history: Sequence[dict[str, Any]] = (), extra: dict[str, Any] | None = None,
              metrics: dict[str, Any] | None = None) -> Path:
    """Write the compressed run: everything goes into a hidden temp folder that is
    renamed to ``out`` at the end, so an interrupted command leaves no run behind.

    ``extra`` maps file names to bytes or to a callable ``fn(path)`` that writes them.
    """
    from kcnn.engine.callbacks import write_history_csv
    from kcnn.engine.evaluate import evaluate_keras_model, write_metrics
    from kcnn.engine.rundir import RunDir

    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, public_mode(directory=True))  # mkdtemp makes it private; a run dir is not
        run = RunDir(tmp)
        for sub in ("checkpoints", "plots"):
            (tmp / sub).mkdir()
        shutil.copyfile(source.run.recipe, run.recipe)
        if source.run.preprocess.is_file():
            shutil.copyfile(source.run.preprocess, run.preprocess)
        with atomic_path(run.model) as path:
            model.save(path)
        if history:
            write_history_csv(run, list(history))
        for name, content in (extra or {}).items():
            with atomic_path(tmp / name) as path:
                content(path) if callable(content) else path.write_bytes(content)
        recipe, data = source.recipe, source.data
        split = recipe.evaluate.split
        if metrics is None:
            metrics = evaluate_keras_model(model, recipe, data, split)
        metrics = {**metrics, "model": str(out / "model.keras"), "compressed_from": str(source.run.path)}
        write_metrics(metrics, run.metrics_for(split), run.plots if recipe.evaluate.plots else None,
                      data.class_names, f"{recipe.name} — {info.get('method', 'compressed')} — {split}")
        write_json(tmp / "compress.json", info)
        # A finished run as far as `kcnn train --resume` is concerned: the epoch count is
        # at least the recipe's, so a resume re-evaluates model.keras instead of training
        # the source architecture from scratch.
        state = _source_state(source.run)
        epochs = max(int(state.get("epoch", 0)), recipe.train.epochs)
        run.write_state({"epoch": epochs, "checkpoint": None, "history": [],
                         "stopped_early": bool(state.get("stopped_early", False)),
                         "compressed": info.get("method")})
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _source_state(run) -> dict[str, Any]:
    try:
        return run.read_state()
    except KcnnError:
        return {}


# ----------------------------------------------------------------------------- fine-tuning
def default_lr(recipe) -> float:
    """Fine-tuning peak learning rate: a third of the recipe's."""
    return recipe.train.optimizer.lr / 3.0


def source_accuracy_recalibrated(source: Source) -> float:
    """The source model's accuracy after the same BN re-estimation the compressed models
    get (a fair reference: the re-estimation alone can move accuracy a little)."""
    import keras

    copy = keras.models.clone_model(source.model)
    copy.set_weights(source.model.get_weights())
    recalibrate_batchnorm(copy, source, seed_offset=99)
    return measure(copy, source, tflite=False)["accuracy"]


def finetune(model, source: Source, epochs: int, *, lr: float | None = None, seed_offset: int = 0,
             first_epoch: int = 0, tag: dict[str, Any] | None = None, callbacks: Sequence[Any] = (),
             verbose: int | None = None) -> list[dict[str, Any]]:
    """Train ``model`` for ``epochs`` on the source recipe's data, augmentation, sampler,
    optimizer and loss, with a cosine schedule from ``lr`` (default: :func:`default_lr`,
    a third of the recipe's) down to zero. Returns one history row per epoch, numbered
    from ``first_epoch``."""
    if epochs <= 0:
        return []
    import keras

    from kcnn.data.pipeline import eval_dataset, train_dataset
    from kcnn.data.samplers import make_sampler
    from kcnn.engine.fit import fit_epochs
    from kcnn.engine.optim import make_optimizer
    from kcnn.losses import make_loss
    from kcnn.recipes.schema import CosineSchedule

    recipe, data = source.recipe, source.data
    cfg = recipe.train
    lr = default_lr(recipe) if lr is None else lr
    if not lr > 0:
        raise KcnnError(f"--lr: must be > 0 (got {lr})")
    ft = cfg.model_copy(update={
        "epochs": epochs,
        "optimizer": cfg.optimizer.model_copy(update={"lr": lr}),
        "schedule": CosineSchedule(type="cosine"),
    })
    seed = recipe.seed + 7919 * (seed_offset + 1)
    sampler = make_sampler(recipe.data.sampler, data.train.y, data.num_classes, seed,
                           epochs=epochs, class_names=data.class_names)
    model.compile(optimizer=make_optimizer(ft, sampler.num_batches(ft.batch_size)),
                  loss=make_loss(ft.loss, data.num_classes, data.class_counts, data.class_names),
                  metrics=["accuracy"])
    if verbose is None:
        verbose = 2 if sys.stderr.isatty() else 0
    hist = keras.callbacks.History()
    fit_epochs(model, lambda feeder: train_dataset(data.train, feeder, recipe.data.augment, seed),
               sampler, ft.batch_size, 0, epochs,
               validation_data=eval_dataset(data.val, ft.batch_size) if len(data.val) else None,
               callbacks=[hist, *callbacks], verbose=verbose)
    rows = []
    for e in range(len(hist.epoch)):
        row = {"epoch": first_epoch + e + 1, **(tag or {})}  # 1-based
        row.update({k: float(v[e]) for k, v in hist.history.items()})
        rows.append(row)
    return rows


def recalibrate_and_finetune(model, source: Source, epochs: int, *, lr: float | None, round_: int,
                             first_epoch: int, verbose: int | None, log, what: str = ""):
    """One compression round's recovery: re-estimate BN statistics, fine-tune, re-estimate
    again. Returns ``(history rows, accuracy before fine-tuning, accuracy after)``."""
    recalibrate_batchnorm(model, source, seed_offset=2 * round_)
    acc = measure(model, source, tflite=False)["accuracy"]
    log(f"{what}accuracy {acc:.4f} with BN statistics re-estimated")
    rows = finetune(model, source, epochs, lr=lr, seed_offset=round_, first_epoch=first_epoch,
                    tag={"round": round_}, verbose=verbose)
    after = acc
    if rows:
        recalibrate_batchnorm(model, source, seed_offset=2 * round_ + 1)
        after = measure(model, source, tflite=False)["accuracy"]
        epochs_word = "epoch" if len(rows) == 1 else "epochs"
        log(f"{what}accuracy after {len(rows)} fine-tuning {epochs_word} {after:.4f}")
    return rows, acc, after


def recalibrate_batchnorm(model, source: Source, seed_offset: int = 0) -> int:
    """Re-estimate every BatchNormalization layer's moving mean and variance over one
    epoch of training batches (the recipe's sampler and augmentation, as training saw
    them; no weight update). Returns the number of BN layers.

    Pruning, factorizing and a few fine-tuning epochs change what reaches a BN
    layer faster than its moving averages (momentum 0.99) follow, and inference
    uses those averages. Batch i runs in training mode with the momentum set to
    i/(i+1), so the moving statistics end as the plain average of the epoch's
    batch statistics.
    """
    import keras

    from kcnn.data.pipeline import EpochFeeder, train_dataset
    from kcnn.data.samplers import make_sampler

    layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
              if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not layers:
        return 0
    recipe, data = source.recipe, source.data
    seed = recipe.seed + 104729 * (seed_offset + 1)
    sampler = make_sampler(recipe.data.sampler, data.train.y, data.num_classes, seed,
                           epochs=1, class_names=data.class_names)
    feeder = EpochFeeder(sampler, recipe.train.batch_size, 0, 1)
    saved = [layer.momentum for layer in layers]
    try:
        for i, batch in enumerate(train_dataset(data.train, feeder, recipe.data.augment, seed)):
            for layer in layers:
                layer.momentum = i / (i + 1)
            model(batch[0], training=True)
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    return len(layers)


# ----------------------------------------------------------------------------- measuring
def count_macs(model) -> int:
    """Multiply-accumulates per image, from :mod:`kcnn.models.info` (``kcnn info``)."""
    from kcnn.models.info import analyze

    return int(analyze(model).macs)


def measure(model, source: Source, *, tflite: bool = True, latency_runs: int = 100,
            split: str | None = None) -> dict[str, Any]:
    """Parameters, MACs, Keras accuracy and (optionally) the float32 TFLite file's size,
    gzipped size, accuracy and median single-image latency (XNNPACK, one thread)."""
    import numpy as np

    from kcnn.engine.evaluate import predict_logits

    split = split or source.recipe.evaluate.split
    part = source.data.split(split)
    logits = predict_logits(model, part, source.recipe.train.batch_size)
    out: dict[str, Any] = {
        "params": int(model.count_params()),
        "nonzero_params": int(sum(int(np.count_nonzero(w)) for w in model.get_weights())),
        "macs": count_macs(model),
        "accuracy": float(np.mean(logits.argmax(-1) == part.y)),
        "split": split,
    }
    if tflite:
        out.update(tflite_stats(model, part, part.y, latency_runs))
    return out


def tflite_stats(model, x, y, latency_runs: int = 100) -> dict[str, Any]:
    import numpy as np

    from kcnn.export.runtime import TFLiteModel
    from kcnn.export.tflite import convert

    content = convert(model, "none")
    lite = TFLiteModel(content)
    pred = lite.predict(x, 64).argmax(-1)
    return {
        "tflite_bytes": len(content),
        "tflite_gzip_bytes": len(gzip.compress(content, 9)),
        "tflite_accuracy": float(np.mean(pred == y)),
        "latency_ms": lite.latency_ms(x.images([0])[0] if hasattr(x, "images") else x[0],
                                      runs=latency_runs),
    }


def ratios(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key in ("params", "nonzero_params", "macs", "tflite_bytes", "tflite_gzip_bytes",
                "latency_ms"):
        if before.get(key) and key in after:
            out[key] = after[key] / before[key]
    if "accuracy" in before and "accuracy" in after:
        out["accuracy_drop_points"] = 100.0 * (before["accuracy"] - after["accuracy"])
    return out


def comparison_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A markdown table: one row per measure, before → after and the ratio. The accuracy
    rows name the split they were measured on (``measure``'s ``split``)."""
    on = f" ({before['split']} split)" if before.get("split") else ""
    rows = [
        ("params", "params", "{:,}"),
        ("non-zero params", "nonzero_params", "{:,}"),
        ("MACs", "macs", "{:,}"),
        (f"accuracy{on}", "accuracy", "{:.4f}"),
        ("TFLite size (KiB)", "tflite_bytes", None),
        ("TFLite gzip (KiB)", "tflite_gzip_bytes", None),
        (f"TFLite accuracy{on}", "tflite_accuracy", "{:.4f}"),
        ("latency (ms)", "latency_ms", "{:.3f}"),
    ]
    lines = ["| measure | before | after | after / before |", "|---|---|---|---|"]
    for label, key, fmt in rows:
        if key not in before or key not in after:
            continue
        a, b = before[key], after[key]
        if fmt is None:
            sa, sb = f"{a / 1024:.1f}", f"{b / 1024:.1f}"
        else:
            sa, sb = fmt.format(a), fmt.format(b)
        ratio = f"{b / a:.3f}" if a and key != "accuracy" and key != "tflite_accuracy" else (
            f"{100 * (b - a):+.2f} points" if "accuracy" in key else "–")
        lines.append(f"| {label} | {sa} | {sb} | {ratio} |")
    return "\n".join(lines)


def base_info(method: str, source: Source, settings: dict[str, Any]) -> dict[str, Any]:
    from kcnn.engine.prepare import versions

    return {
        "method": method,
        "source_run": str(Path(source.run.path).resolve()),
        "source_model": str(Path(source.run.model).resolve()),
        "settings": settings,
        "versions": {**versions(), "kcnn": __version__},
    }

