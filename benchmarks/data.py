"""Streaming image-folder training: kcnn's ``directory`` source against plain Keras.

    .venv/bin/python benchmarks/data.py [--sizes 2000 8000 32000] [--image-size 128]
        [--extra 224:8000] [--work-dir /tmp/kcnn-bench-data] [--skip-generate]
        [--only keras,none,disk] [--no-data-pass] [--standardize] [--nondeterministic]
        [--smoke] [--out FILE]

Full benchmark (estimated 20–40 min on 2 cores; under the work dir the JPEG folders take
about 0.6 GB and the decoded disk caches about 3.3 GB): ``.venv/bin/python benchmarks/data.py``.

What it does:

1. Generates JPEG folders (``root/class_<k>/img_<i>.jpg``, 10 classes) of each
   ``--sizes`` count at ``--image-size`` pixels, plus every ``--extra SIZE:N``
   folder, under ``--work-dir``. Each class has its own hue, stripe orientation
   and stripe frequency; phase, saturation, blobs and noise are random (seeded
   per image), so the task is learnable but not trivial. A folder that already
   holds the right number of images is reused.
2. For every folder, trains ONE EPOCH of the same small CNN (Rescaling(1/255),
   2 × [Conv2D 3×3 same + ReLU, MaxPool 2×2], global average pooling,
   Dense(10); Adam, sparse cross-entropy on logits, batch 64), each run in a
   fresh process, in this order:

   * ``keras``: ``keras.utils.image_dataset_from_directory(..., shuffle=True,
     seed=0).prefetch(AUTOTUNE)`` and ``model.fit(ds, epochs=1)``;
   * ``none``: ``kcnn.engine.train.train(recipe)`` with ``data.cache: none``
     (TensorFlow decodes JPEG/PNG/BMP/GIF in the graph, Pillow the rest, every batch);
   * ``disk-build``: ``data.cache: disk`` after deleting the cache folder, so
     the decoded cache is built before the epoch;
   * ``disk``: ``data.cache: disk`` again, reading the cache the last run built.

   The kcnn model is the recipe's ``layers`` builder with exactly the layers
   above (``simple_cnn`` has no pooling after its last stage). kcnn trains on
   99% of the images (``split: {val: 0, test: 0.01}``: the run's final
   evaluation needs a non-empty test split); images/s use each run's own count.
3. Unless ``--no-data-pass``: one pure data pass per pipeline in a fresh
   process (iterate one epoch of the training tf.data pipeline, no model):
   ``keras``, kcnn ``none`` and kcnn ``disk`` (cache present). With a
   compute-heavy model the training step hides the reading cost; the data pass
   shows it.

Per run it records the child's peak RSS (``/usr/bin/time -v``, else
``getrusage(RUSAGE_CHILDREN)`` in a small wrapper process), the process's wall
time, the epoch time (``on_epoch_begin`` to the last ``on_train_batch_end``;
includes tracing the train step), images/s over that epoch, steady images/s
(after the first batch) and the time to the first training step (process
start to ``on_train_batch_begin`` of batch 0: imports, listing, statistics,
cache build and dataset set-up). Every file is read once before the runs, so
every run finds the JPEGs in the OS page cache.

Writes the markdown report to ``benchmarks/results/data.md`` (``--smoke``:
``<work-dir>/data_smoke.md``; ``--out`` overrides both) and prints it.
``--smoke`` is a quick check of the script itself: N = 200 at 64×64.
"""

from __future__ import annotations

import argparse
import colorsys
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BATCH = 64
CLASSES = 10
TEST_FRACTION = 0.01  # kcnn's run ends with an evaluation, which needs a test split
RESULT_PREFIX = "KCNN_BENCH_RESULT "
TIME = Path("/usr/bin/time")
TARGETS = {
    "rss_ratio": 1.2,  # peak RSS (cache none / disk) ≤ 1.2 × plain Keras at every N
    "rss_growth": 0.10,  # ... and grows ≤ 10% from the smallest to the largest N
    "epoch_ratio": 1.1,  # epoch time with cache none ≤ 1.1 × plain Keras
    "disk_speedup": 3.0,  # an epoch of reading the disk cache ≥ 3 × faster than decoding
}
MODES = ("keras", "none", "disk-build", "disk")
PASSES = ("pass-keras", "pass-none", "pass-disk")
# The rss wrapper used when /usr/bin/time is missing: runs the command, then writes the
# largest peak RSS (KiB) among its children, which is the one command it ran.
RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(rc)\n"
)


# ----------------------------------------------------------------------------- data generation
def folder_name(n: int, size: int) -> str:
    return f"n{n}_{size}px"


def count_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for d in folder.iterdir() if d.is_dir()
               for f in d.iterdir() if f.suffix == ".jpg")


def _make_image(job: tuple[str, int, int, int]) -> None:
    """One JPEG: the class's hue and stripes, random phase, blobs and noise."""
    import numpy as np
    from PIL import Image

    path, label, size, index = job
    rng = np.random.default_rng([20240, size, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    hue = (label / CLASSES + rng.normal(0, 0.015)) % 1.0
    base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 0.9), rng.uniform(0.5, 0.95))) * 255
    angle = np.pi * label / CLASSES + rng.normal(0, 0.08)
    freq = 2 + 1.5 * (label % 5)
    stripes = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle))
                     + rng.uniform(0, 2 * np.pi))
    img = base[None, None, :] * (0.7 + 0.3 * stripes[..., None])
    for _ in range(int(rng.integers(1, 4))):  # distractor blobs of any colour
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.18)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 10, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def generate(folder: Path, n: int, size: int) -> str:
    """Make ``folder`` with ``n`` images (atomically: built beside it, then renamed)."""
    from multiprocessing import Pool

    if count_images(folder) == n:
        return "reused"
    shutil.rmtree(folder, ignore_errors=True)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for c in range(CLASSES):
        (tmp / f"class_{c}").mkdir(parents=True)
    jobs = [(str(tmp / f"class_{i % CLASSES}" / f"img_{i:06d}.jpg"), i % CLASSES, size, i)
            for i in range(n)]
    start = time.perf_counter()
    with Pool(os.cpu_count() or 2) as pool:
        for _ in pool.imap_unordered(_make_image, jobs, chunksize=64):
            pass
    os.replace(tmp, folder)
    return f"generated in {time.perf_counter() - start:.0f} s"


def warm_page_cache(folder: Path) -> None:
    """Read every file once, so that no run pays for a cold disk the others do not."""
    for d in sorted(folder.iterdir()):
        for f in sorted(d.iterdir()):
            f.read_bytes()


def recipe_text(folder: Path, size: int, cache: str, cache_dir: Path,
                standardize: bool, deterministic: bool) -> str:
    cache_line = f"  cache: {cache}\n" + (f"  cache_dir: {cache_dir}\n" if cache == "disk" else "")
    return (
        f"name: bench_data\n"
        f"seed: 0\n"
        f"data:\n"
        f"  source: {{type: directory, path: {folder}, image_size: [{size}, {size}]}}\n"
        f"  split: {{val: 0.0, test: {TEST_FRACTION}}}\n"
        f"{cache_line}"
        f"  preprocess: {{rescale: 1/255, standardize: {str(standardize).lower()}}}\n"
        f"model:\n"
        f"  layers:\n"
        f"    - {{type: conv, filters: 16}}\n"
        f"    - pool\n"
        f"    - {{type: conv, filters: 32}}\n"
        f"    - pool\n"
        f"    - GlobalAveragePooling2D\n"
        f"  batch_norm: false\n"
        f"train:\n"
        f"  epochs: 1\n"
        f"  batch_size: {BATCH}\n"
        f"  optimizer: {{type: adam, lr: 0.001}}\n"
        f"  verbose: 0\n"
        f"  deterministic: {str(deterministic).lower()}\n"
        f"  callbacks: {{tensorboard: false}}\n"
        f"evaluate: {{plots: false}}\n"
    )


# ----------------------------------------------------------------------------- child processes
def _step_timer():
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Wall-clock times of the first epoch's start, batch 0 and the last batch."""

        def __init__(self):
            super().__init__()
            self.epoch_begin = self.first_begin = self.first_end = self.last_end = None
            self.batches = 0

        def on_epoch_begin(self, epoch, logs=None):
            if self.epoch_begin is None:
                self.epoch_begin = time.time()

        def on_train_batch_begin(self, batch, logs=None):
            if self.first_begin is None:
                self.first_begin = time.time()

        def on_train_batch_end(self, batch, logs=None):
            now = time.time()
            if self.first_end is None:
                self.first_end = now
            self.last_end = now
            self.batches += 1

        def result(self, t0: float, n_train: int) -> dict:
            epoch = self.last_end - self.epoch_begin
            steady = self.last_end - self.first_end
            steady_images = n_train - min(BATCH, n_train)
            return {
                "n_train": n_train, "batches": self.batches,
                "first_step_s": self.first_begin - t0, "epoch_s": epoch,
                "images_per_s": n_train / epoch,
                "steady_images_per_s": steady_images / steady if steady > 0 else float("nan"),
            }

    return StepTimer()


def child_keras(a) -> dict:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    ds = keras.utils.image_dataset_from_directory(
        a.folder, image_size=(a.image_size, a.image_size), batch_size=BATCH, label_mode="int",
        shuffle=True, seed=0)
    n = len(ds.file_paths)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    if a.child == "pass-keras":
        return data_pass(ds, a.t0, n)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((a.image_size, a.image_size, 3)),
        layers.Rescaling(1 / 255),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2, padding="same"),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2, padding="same"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(CLASSES),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    timer = _step_timer()
    history = model.fit(ds, epochs=1, verbose=0, callbacks=[timer])
    return {**timer.result(a.t0, n), "params": model.count_params(),
            "train_accuracy": float(history.history["accuracy"][-1])}


def child_kcnn(a) -> dict:
    from kcnn.recipes import load

    recipe = load(a.recipe)
    if a.child.startswith("pass-"):
        from kcnn.data.pipeline import EpochFeeder, train_dataset
        from kcnn.data.samplers import make_sampler
        from kcnn.data.sources import load_dataset
        from kcnn.engine.prepare import setup_determinism

        setup_determinism(recipe.seed, recipe.train.deterministic)
        data = load_dataset(recipe.data)
        sampler = make_sampler(recipe.data.sampler, data.sampler_labels, data.num_classes,
                               recipe.seed, epochs=1, class_names=data.class_names)
        ds = train_dataset(data.train, EpochFeeder(sampler, BATCH, 0, 1), recipe.data.augment,
                           recipe.seed)
        return data_pass(ds, a.t0, len(data.train))
    from kcnn.engine.train import train

    timer = _step_timer()
    run = train(recipe, run_dir=a.run_dir, callbacks=[timer])
    metrics = json.loads((Path(run) / "metrics.json").read_text())
    n_train = a.n_images - int(metrics["num_samples"])  # val is empty: the rest trained
    history = (Path(run) / "history.csv").read_text().splitlines()
    return {**timer.result(a.t0, n_train), "history": history[-1] if history else "",
            "test_accuracy": metrics.get("accuracy")}


def data_pass(ds, t0: float, n: int) -> dict:
    """Iterate one epoch of ``ds`` (no model): images/s of reading alone."""
    start = time.time()
    first = None
    seen = 0
    for batch in ds:
        if first is None:
            first = time.time()
        seen += int(batch[0].shape[0])
    end = time.time()
    first_size = min(BATCH, seen)
    steady = (seen - first_size) / (end - first) if end > first and seen > first_size else None
    return {"n_train": seen, "n_listed": n, "first_step_s": start - t0, "epoch_s": end - start,
            "images_per_s": seen / (end - start), "first_batch_s": first - start,
            "steady_images_per_s": steady}


def child_main(a) -> None:
    result = child_keras(a) if a.child in ("keras", "pass-keras") else child_kcnn(a)
    Path(a.result).write_text(json.dumps(result))


def run_child(label: str, child_args: list[str], logs: Path) -> dict:
    """Run this script in a fresh process as a measurement; its result, peak RSS and wall."""
    logs.mkdir(parents=True, exist_ok=True)
    result_file, rss_file, log_file = (logs / f"{label}.{ext}" for ext in ("json", "rss", "log"))
    for f in (result_file, rss_file):
        f.unlink(missing_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KCNN_NO_PROGRESS": "1",
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), *child_args,
           "--result", str(result_file), "--t0", repr(time.time())]
    full = (["/usr/bin/time", "-v", "-o", str(rss_file), *cmd] if TIME.is_file()
            else [sys.executable, "-c", RSS_WRAPPER, str(rss_file), *cmd])
    start = time.perf_counter()
    with open(log_file, "w") as log:
        rc = subprocess.call(full, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if rc != 0 or not result_file.is_file():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{label}: the child process failed (exit {rc}); {log_file}:\n{tail}")
    result = json.loads(result_file.read_text())
    result["wall_s"] = wall
    result["rss_mib"] = read_rss_kib(rss_file) / 1024
    return result


def read_rss_kib(path: Path) -> float:
    text = path.read_text()
    for line in text.splitlines():
        if "Maximum resident set size" in line:
            return float(line.rsplit(":", 1)[1])
    return float(text.strip())


# ----------------------------------------------------------------------------- report
def machine() -> str:
    from benchmarks.common import cpu_name, software

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu_name()}, {os.cpu_count()} logical cores, {platform.system()} "
            f"{platform.release()}; {software()}; load average {load:.1f} at start")


def mark(ok: bool | None) -> str:
    return "–" if ok is None else ("✓" if ok else "✗")


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or not b else a / b


def fmt(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if x is None else f"{x:{spec}}{suffix}"


def report(folders: list[tuple[int, int]], results: dict, args, command: str, elapsed: float,
           header: str) -> str:
    lines = [
        "# Streaming image-folder training: kcnn `directory` source vs plain Keras",
        "",
        f"`benchmarks/data.py`, {dt.date.today().isoformat()}. Machine: {header}.",
        "",
        f"Command: `{command}` (total {elapsed / 60:.1f} min).",
        "",
        "One epoch of the same CNN (Rescaling(1/255) → Conv2D 16 3×3 + ReLU → MaxPool 2 → "
        "Conv2D 32 3×3 + ReLU → MaxPool 2 → GAP → Dense 10; Adam 1e-3, sparse CE on logits, "
        f"batch {BATCH}), every row a fresh process. kcnn builds it with the recipe's `layers` "
        "builder (the same layers; kernels initialised he_normal instead of Keras' "
        "glorot_uniform, ReLU as a separate layer): `simple_cnn` would leave out the pooling "
        "after the last conv stage. kcnn trains on 99% of the images (`split: {val: 0, test: "
        f"{TEST_FRACTION}}}`, the final evaluation needs a test split); Keras on all of them. "
        f"kcnn: `preprocess.standardize: {str(args.standardize).lower()}`, "
        f"`train.deterministic: {str(args.deterministic).lower()}`.",
        "",
        "* **keras**: `image_dataset_from_directory(..., shuffle=True, seed=0).prefetch(AUTOTUNE)` "
        "+ `model.fit(ds, epochs=1)`.",
        "* **none**: kcnn, `data.cache: none` (every batch decoded in tf.data: TensorFlow for JPEG here).",
        "* **disk-build**: kcnn, `data.cache: disk` after deleting the cache: builds the decoded "
        "cache, then trains from it.",
        "* **disk**: kcnn, `data.cache: disk` with the cache the previous run built.",
        "",
        "Columns: peak RSS of the child process (`/usr/bin/time -v`); wall = the whole process; "
        "epoch = `on_epoch_begin` → last `on_train_batch_end` (includes tracing the train step); "
        "img/s = training images / epoch; steady img/s = after the first batch; first step = "
        "process start → batch 0 (imports, listing, statistics, cache build, set-up). "
        "Ratios are against the Keras row of the same folder in this run.",
        "",
        "| images | size | mode | train images | peak RSS (MiB) | × Keras | wall (s) | × Keras "
        "| epoch (s) | × Keras | img/s | × Keras | steady img/s | first step (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, size in folders:
        ref = results.get((n, size, "keras"))
        for mode in MODES:
            r = results.get((n, size, mode))
            if r is None:
                continue
            lines.append(
                f"| {n:,} | {size} | {mode} | {r['n_train']:,} | {r['rss_mib']:.0f} | "
                f"{fmt(ratio(r['rss_mib'], ref and ref['rss_mib']))} | {r['wall_s']:.1f} | "
                f"{fmt(ratio(r['wall_s'], ref and ref['wall_s']))} | {r['epoch_s']:.1f} | "
                f"{fmt(ratio(r['epoch_s'], ref and ref['epoch_s']))} | "
                f"{r['images_per_s']:.0f} | "
                f"{fmt(ratio(r['images_per_s'], ref and ref['images_per_s']))} | "
                f"{r['steady_images_per_s']:.0f} | {r['first_step_s']:.1f} |")
    if any(k[2] in PASSES for k in results):
        lines += [
            "",
            "## Pure data pass (one epoch of the training tf.data pipeline, no model)",
            "",
            "keras: the `image_dataset_from_directory` pipeline above; none / disk: kcnn's "
            "training pipeline (`kcnn.data.pipeline.train_dataset`, sampler order) with "
            "`data.cache: none` / `disk` (cache present). Set-up = process start → iteration "
            "start (listing, header check, cache lookup); img/s = images read / pass, "
            "steady = after the first batch; disk vs none = whole-pass img/s ratio.",
            "",
            "| images | size | pipeline | images read | peak RSS (MiB) | set-up (s) | pass (s) "
            "| first batch (s) | img/s | × Keras | steady img/s | disk vs none |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n, size in folders:
            ref = results.get((n, size, "pass-keras"))
            none = results.get((n, size, "pass-none"))
            for mode in PASSES:
                r = results.get((n, size, mode))
                if r is None:
                    continue
                speed = (fmt(ratio(r["images_per_s"], none["images_per_s"]), ".2f", "×")
                         if mode == "pass-disk" and none else "")
                lines.append(
                    f"| {n:,} | {size} | {mode[5:]} | {r['n_train']:,} | {r['rss_mib']:.0f} | "
                    f"{r['first_step_s']:.1f} | {r['epoch_s']:.2f} | {r['first_batch_s']:.2f} | "
                    f"{r['images_per_s']:.0f} | "
                    f"{fmt(ratio(r['images_per_s'], ref and ref['images_per_s']))} | "
                    f"{fmt(r['steady_images_per_s'], '.0f')} | {speed} |")
    lines += ["", "## Targets", ""] + targets(folders, results, args)
    return "\n".join(lines) + "\n"


def targets(folders: list[tuple[int, int]], results: dict, args) -> list[str]:
    out = ["| target | measured | met |", "|---|---|---|"]
    kcnn_modes = [m for m in ("none", "disk") if any(k[2] == m for k in results)]
    for mode in kcnn_modes:
        worst, ok = None, None
        for n, size in folders:
            r, ref = results.get((n, size, mode)), results.get((n, size, "keras"))
            q = ratio(r and r["rss_mib"], ref and ref["rss_mib"])
            if q is not None:
                worst = q if worst is None else max(worst, q)
                ok = (ok is not False) and q <= TARGETS["rss_ratio"]
        out.append(f"| peak RSS, cache {mode} ≤ {TARGETS['rss_ratio']}× Keras at every folder "
                   f"| worst {fmt(worst, '.2f', '×')} | {mark(ok)} |")
    main = sorted(n for n, s in folders if s == args.image_size)
    for mode in ("keras", *kcnn_modes, "disk-build"):
        if len(main) < 2:
            break
        lo = results.get((main[0], args.image_size, mode))
        hi = results.get((main[-1], args.image_size, mode))
        if lo is None or hi is None:
            continue
        growth = hi["rss_mib"] / lo["rss_mib"] - 1
        target = mode in ("none", "disk")
        out.append(
            f"| RSS growth from {main[0]:,} to {main[-1]:,} images ({args.image_size}px), "
            f"{mode}{' ≤ ' + format(TARGETS['rss_growth'], '.0%') if target else ''} "
            f"| {lo['rss_mib']:.0f} → {hi['rss_mib']:.0f} MiB ({growth:+.1%}) "
            f"| {mark(growth <= TARGETS['rss_growth']) if target else 'info'} |")
    for n, size in folders:
        r, ref = results.get((n, size, "none")), results.get((n, size, "keras"))
        q = ratio(r and r["epoch_s"], ref and ref["epoch_s"])
        if q is not None:
            out.append(f"| epoch time, cache none ≤ {TARGETS['epoch_ratio']}× Keras "
                       f"({n:,} × {size}px) | {q:.2f}× | {mark(q <= TARGETS['epoch_ratio'])} |")
    for n, size in folders:
        none, disk = results.get((n, size, "pass-none")), results.get((n, size, "pass-disk"))
        q = ratio(disk and disk["images_per_s"], none and none["images_per_s"])
        if q is not None:
            out.append(f"| data pass from the disk cache ≥ {TARGETS['disk_speedup']:g}× faster "
                       f"than decoding ({n:,} × {size}px) | {q:.2f}× "
                       f"| {mark(q >= TARGETS['disk_speedup'])} |")
        none, disk = results.get((n, size, "none")), results.get((n, size, "disk"))
        q = ratio(none and none["epoch_s"], disk and disk["epoch_s"])
        if q is not None:
            out.append(f"| training epoch time, cache none / disk cache (second run) "
                       f"({n:,} × {size}px) | {q:.2f}× | info |")
    return out


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000],
                   help="image counts of the main folders")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--extra", nargs="*", default=["224:8000"],
                   help="more folders as SIZE:N (e.g. 224:8000); give --extra alone for none")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/kcnn-bench-data"))
    p.add_argument("--skip-generate", action="store_true",
                   help="use the folders as they are (they must exist)")
    p.add_argument("--only", default="keras,none,disk",
                   help="comma list of keras, none, disk (disk = disk-build + disk)")
    p.add_argument("--no-data-pass", action="store_true", help="skip the pure data passes")
    p.add_argument("--standardize", action="store_true",
                   help="kcnn: preprocess.standardize true (a statistics pass before training)")
    p.add_argument("--nondeterministic", dest="deterministic", action="store_false",
                   help="kcnn: train.deterministic false (default: kcnn's default, true)")
    p.add_argument("--smoke", action="store_true", help="N = 200 at 64×64, a quick check")
    p.add_argument("--out", type=Path, default=None, help="results file")
    # child mode (internal)
    p.add_argument("--child", choices=(*MODES, *PASSES), help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--n-images", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return
    if args.smoke:
        args.sizes, args.image_size, args.extra = [200], 64, []
    only = {m.strip() for m in args.only.split(",") if m.strip()}
    if not only <= {"keras", "none", "disk"}:
        raise SystemExit(f"--only: choose from keras, none, disk (got {args.only})")
    folders = [(n, args.image_size) for n in args.sizes]
    for item in args.extra:
        size, _, n = item.partition(":")
        folders.append((int(n), int(size)))
    work = args.work_dir.resolve()
    out = args.out or (work / "data_smoke.md" if args.smoke
                       else Path(__file__).parent / "results" / "data.md")
    command = "python benchmarks/data.py " + " ".join(a for a in (argv or sys.argv[1:]))
    header = machine()
    print(f"Machine: {header}", file=sys.stderr)
    start = time.perf_counter()

    for n, size in folders:
        folder = work / folder_name(n, size)
        if args.skip_generate:
            if count_images(folder) != n:
                raise SystemExit(f"{folder}: expected {n} images (--skip-generate)")
            continue
        print(f"{folder}: {generate(folder, n, size)}", file=sys.stderr, flush=True)

    results: dict[tuple[int, int, str], dict] = {}
    logs = work / "logs"
    for n, size in folders:
        name = folder_name(n, size)
        folder, cache_dir, run_root = work / name, work / "cache" / name, work / "runs"
        warm_page_cache(folder)
        recipes = {}
        for cache in ("none", "disk"):
            path = work / "recipes" / f"{name}_{cache}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(recipe_text(folder, size, cache, cache_dir, args.standardize,
                                        args.deterministic))
            recipes[cache] = path
        plan = []
        if "keras" in only:
            plan.append(("keras", ["--folder", str(folder)]))
        if "none" in only:
            plan.append(("none", ["--recipe", str(recipes["none"])]))
        if "disk" in only:
            plan.append(("disk-build", ["--recipe", str(recipes["disk"])]))
            plan.append(("disk", ["--recipe", str(recipes["disk"])]))
        if not args.no_data_pass:
            if "keras" in only:
                plan.append(("pass-keras", ["--folder", str(folder)]))
            if "none" in only:
                plan.append(("pass-none", ["--recipe", str(recipes["none"])]))
            if "disk" in only:
                plan.append(("pass-disk", ["--recipe", str(recipes["disk"])]))
        for mode, extra in plan:
            if mode == "disk-build":
                shutil.rmtree(cache_dir, ignore_errors=True)
            run_dir = run_root / f"{name}_{mode}"
            shutil.rmtree(run_dir, ignore_errors=True)
            child = ["--child", mode, "--image-size", str(size), "--n-images", str(n),
                     "--run-dir", str(run_dir), *extra]
            r = run_child(f"{name}_{mode}", child, logs)
            results[(n, size, mode)] = r
            print(f"{name} {mode}: rss {r['rss_mib']:.0f} MiB, wall {r['wall_s']:.1f} s, "
                  f"epoch {r['epoch_s']:.2f} s, {r['images_per_s']:.0f} img/s, first step "
                  f"{r['first_step_s']:.1f} s", file=sys.stderr, flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)

    text = report(folders, results, args, command.strip(), time.perf_counter() - start, header)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
