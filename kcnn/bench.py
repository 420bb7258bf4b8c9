"""``kcnn bench train``: training throughput of a recipe's model, optionally against plain Keras.

The kcnn row trains the recipe's model through kcnn's own input pipeline
(sampler → tf.data → augmentation), the plain row the same architecture fed from
in-memory NumPy arrays with ``model.fit``. Both are timed in the same process,
after a warm-up, with a callback that stamps batch ends.

``--synthetic`` uses random images of the recipe's input shape (no data set
needed). Without TensorFlow installed (e.g. a JAX-only GPU machine) the
synthetic run feeds NumPy arrays to ``fit`` for both rows, since tf.data is
unavailable there.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from kcnn.errors import KcnnError

KNOWN_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3),
                "cifar100": (32, 32, 3)}
KNOWN_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}


def synthetic_spec(recipe) -> tuple[tuple[int, ...], int]:
    """(input shape, classes) of a recipe without loading its data, where possible."""
    kwargs = recipe.model.kwargs
    src = recipe.data.source
    shape = kwargs.get("input_shape")
    classes = kwargs.get("num_classes") or recipe.data.num_classes
    if src.type == "keras":
        shape = shape or KNOWN_SHAPES[src.name]
        classes = classes or KNOWN_CLASSES[src.name]
    elif src.type == "digits":
        size = src.resize or 8
        shape, classes = shape or (size, size, 1), classes or 10
    elif src.type == "directory":
        shape = shape or (*src.image_size, 3 if src.color_mode == "rgb" else 1)
    if shape is None or classes is None:
        raise KcnnError("--synthetic: set model.input_shape and model.num_classes (or data.num_classes) "
                        "for this source")
    if recipe.data.classes:
        classes = len(recipe.data.classes)
    return tuple(int(d) for d in shape), int(classes)


class StepTimer:
    """A Keras callback recording the wall-clock time at the end of every training batch."""

    def __new__(cls, *args, **kwargs):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.stamps: list[float] = []

            def on_train_begin(self, logs=None):
                self.stamps = [time.perf_counter()]

            def on_train_batch_end(self, batch, logs=None):
                self.stamps.append(time.perf_counter())

        return _Timer()


def _rate(stamps: list[float], warmup: int, batch: int) -> dict[str, float]:
    """Throughput of the steps after the warm-up. ``stamps[0]`` is the start of training and
    ``stamps[i]`` the end of step ``i``, so ``steps`` steps with ``warmup`` left out time
    ``steps - warmup`` of them, from the end of the last warm-up step (or the start)."""
    steps = len(stamps) - 1 - warmup
    if steps < 1:
        raise KcnnError(f"--steps must exceed --warmup ({warmup} steps)")
    span = stamps[-1] - stamps[warmup]
    return {"steps_per_s": steps / span, "images_per_s": steps * batch / span, "timed_steps": steps}


def _compile(model, recipe, num_classes: int, steps_per_epoch: int, class_counts=None):
    from kcnn.engine.optim import make_optimizer
    from kcnn.losses import make_loss

    model.compile(optimizer=make_optimizer(recipe.train, steps_per_epoch),
                  loss=make_loss(recipe.train.loss, num_classes, class_counts), metrics=["accuracy"])
    return model


def bench_train(recipe, *, steps: int = 60, warmup: int = 10, batch_size: int | None = None,
                synthetic: bool = False, compare_plain: bool = False) -> dict[str, Any]:
    if steps <= warmup or warmup < 0:
        raise KcnnError(f"--steps must exceed --warmup (got steps={steps}, warmup={warmup})")
    if batch_size is not None and batch_size < 1:
        raise KcnnError(f"--batch-size: must be >= 1 (got {batch_size})")
    if recipe.data.task == "regression":
        raise KcnnError("kcnn bench train: classification recipes only (data.task is regression)")
    import keras

    from kcnn import backend
    from kcnn.engine.distribute import set_precision
    from kcnn.models import create_model

    batch = batch_size or recipe.train.batch_size
    try:
        import tensorflow  # noqa: F401  (the kcnn pipeline is tf.data)

        has_tf = True
    except ImportError:
        has_tf = False
    set_precision(recipe.train.precision)
    keras.utils.set_random_seed(recipe.seed)
    if synthetic:
        shape, classes = synthetic_spec(recipe)
        n = batch * 8
        rng = np.random.default_rng(recipe.seed)
        x = rng.uniform(0, 255, size=(n, *shape)).astype("float32")
        y = rng.integers(0, classes, size=n).astype("int64")
        class_counts = np.bincount(y, minlength=classes)
    else:
        from kcnn.data.sources import load_dataset

        data = load_dataset(recipe.data)
        x, y, shape, classes = data.train.images(), data.train.y, data.input_shape, data.num_classes
        class_counts = data.class_counts
    model_kwargs = {k: v for k, v in recipe.model.kwargs.items() if k not in ("input_shape", "num_classes")}

    def build():
        return create_model(recipe.model.name, num_classes=classes, input_shape=shape, **model_kwargs)

    result: dict[str, Any] = {
        "recipe": recipe.name, "model": recipe.model.name, "backend": backend.name(),
        "precision": recipe.train.precision, "batch_size": batch, "input_shape": list(shape),
        "synthetic": synthetic, "steps": steps, "warmup": warmup, "sampler": recipe.data.sampler.type,
        "device": backend.device_description(),
    }
    timer = StepTimer()
    if has_tf:
        from kcnn.data.pipeline import EpochFeeder, train_dataset
        from kcnn.data.samplers import make_sampler
        from kcnn.data.sources import Split

        sampler = make_sampler(recipe.data.sampler, y, classes, recipe.seed, epochs=1)
        per_epoch = max(sampler.num_batches(batch), 1)
        epochs = -(-steps // per_epoch)
        feeder = EpochFeeder(sampler, batch, 0, epochs)
        ds = train_dataset(Split(x, y), feeder, recipe.data.augment, recipe.seed).take(steps)
        model = _compile(build(), recipe, classes, per_epoch, class_counts)
        model.fit(ds, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0, shuffle=False)
        result["pipeline"] = "kcnn (sampler + tf.data)"
    else:
        reps = -(-steps * batch // len(x))
        xs, ys = np.concatenate([x] * reps)[: steps * batch], np.concatenate([y] * reps)[: steps * batch]
        model = _compile(build(), recipe, classes, steps, class_counts)
        model.fit(xs, ys, batch_size=batch, epochs=1, callbacks=[timer], verbose=0, shuffle=False)
        result["pipeline"] = "kcnn model, NumPy arrays (no TensorFlow installed)"
    result["kcnn"] = _rate(timer.stamps, warmup, batch)

    if compare_plain:
        reps = -(-steps * batch // len(x))
        xs = np.concatenate([x] * reps)[: steps * batch].astype("float32")
        ys = np.concatenate([y] * reps)[: steps * batch]
        keras.utils.set_random_seed(recipe.seed)
        plain = _compile(build(), recipe, classes, steps, class_counts)  # same optimizer and loss
        timer = StepTimer()
        plain.fit(xs, ys, batch_size=batch, epochs=1, callbacks=[timer], verbose=0, shuffle=False)
        result["plain"] = _rate(timer.stamps, warmup, batch)
        result["ratio"] = result["kcnn"]["images_per_s"] / result["plain"]["images_per_s"]
    return result


def format_result(r: dict[str, Any]) -> str:
    lines = [f"{r['recipe']} ({r['model']}, {r['backend']}, {r['precision']}, batch {r['batch_size']}, "
             f"{r['device']})",
             f"kcnn:  {r['kcnn']['images_per_s']:.1f} img/s, {r['kcnn']['steps_per_s']:.2f} steps/s "
             f"[{r['pipeline']}]"]
    if "plain" in r:
        lines.append(f"plain: {r['plain']['images_per_s']:.1f} img/s, {r['plain']['steps_per_s']:.2f} steps/s "
                     "[model.fit on NumPy arrays]")
        lines.append(f"ratio kcnn/plain: {r['ratio']:.3f}")
    return "\n".join(lines)
