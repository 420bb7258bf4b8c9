"""Training throughput of a two-process ``data_parallel`` job against two independent runs.

Target (issue 17): the two-process job trains at least 0.9x the images/s of two independent
single-process runs together, on a model large enough that communication is not the whole
step. Everything runs on this machine: each process is pinned to its own core (``taskset``)
in both scenarios, so the job pays only for its gradient all-reduce (gloo over loopback).

    python benchmarks/data_parallel.py [--model resnet20] [--batch 128] [--epochs 3]

Writes ``benchmarks/results/data_parallel.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402

# Run inside each process: train through kcnn and time every step after the first epoch.
DRIVER = r"""
import json, sys, time
import keras
from kcnn.engine.train import train
from kcnn.recipes import load

class Timer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.stamps = []
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch >= 1:  # epoch 0 compiles
            self.stamps.append(time.perf_counter())

timer = Timer()
train(load(sys.argv[1]), run_dir=sys.argv[2], callbacks=[timer])
steps = len(timer.stamps) - 1
json.dump({"steps": steps, "seconds": timer.stamps[-1] - timer.stamps[0]}, open(sys.argv[3], "w"))
"""

RECIPE = """
name: dp_bench
seed: 0
data:
  source: {{type: npz, path: {data}}}
  split: {{val: 0.0, test: 0.02, seed: 0}}
model: {{name: {model}}}
train:
  epochs: {epochs}
  batch_size: {batch}
  optimizer: {{type: sgd, lr: 0.05, momentum: 0.9}}
  verbose: 0
  callbacks: {{tensorboard: false}}
evaluate: {{plots: false}}
distribute: {{strategy: {strategy}, timeout: 120}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PIN = {"on": True}


def launch(work: Path, tag: str, recipe: Path, core: int, env: dict[str, str]):
    cmd = [sys.executable, "-c", DRIVER, str(recipe), str(work / f"run-{tag}"), str(work / f"{tag}.json")]
    if PIN["on"] and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(core), *cmd]
    log = open(work / f"{tag}.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def images_per_s(work: Path, tag: str, batch: int) -> float:
    result = json.loads((work / f"{tag}.json").read_text())
    return result["steps"] * batch / result["seconds"]


def wait(procs, work):
    for tag, p in procs:
        if p.wait() != 0:
            sys.exit(f"{tag} failed:\n" + (work / f"{tag}.log").read_text()[-3000:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 512],
                        help="the job's global batch (several: one row each)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=3072)
    parser.add_argument("--no-pin", action="store_true",
                        help="let the OS place the processes instead of one core each")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_parallel.md"))
    args = parser.parse_args()
    PIN["on"] = not args.no_pin

    work = Path(tempfile.mkdtemp(prefix="kcnn-dp-bench-"))
    rng = np.random.default_rng(0)
    np.savez(work / "data.npz", x=rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8),
             y=rng.integers(0, 10, args.images))
    base = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    for key in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                "KERAS_DISTRIBUTION_PROCESS_ID"):
        base.pop(key, None)

    def recipe(name, batch, strategy):
        path = work / f"{name}.yaml"
        path.write_text(RECIPE.format(data=work / "data.npz", model=args.model, epochs=args.epochs,
                                      batch=batch, strategy=strategy))
        return path

    load_before = os.getloadavg()
    started = time.time()
    rows = []
    for batch in args.batch:
        half = batch // 2
        # Two independent runs, one per core, each with half the global batch.
        solo = recipe(f"solo{batch}", half, "none")
        procs = [(f"solo{i}", launch(work, f"solo{i}", solo, i, base)) for i in (0, 1)]
        wait(procs, work)
        independent = [images_per_s(work, f"solo{i}", half) for i in (0, 1)]
        # The two-process job, one process per core, global batch = both halves.
        job = recipe(f"job{batch}", batch, "data_parallel")
        env = {**base, "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{free_port()}",
               "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
        procs = [(f"job{i}", launch(work, f"job{i}", job, i,
                                    {**env, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)}))
                 for i in (0, 1)]
        wait(procs, work)
        joint = images_per_s(work, "job0", batch)
        for tag in ("solo0", "solo1", "job0", "job1"):
            shutil.rmtree(work / f"run-{tag}", ignore_errors=True)
        ratio = joint / sum(independent)
        rows.append(f"| {batch} | {half} | {sum(independent):.1f} ({independent[0]:.1f} + "
                    f"{independent[1]:.1f}) | {joint:.1f} | **{ratio:.3f}** | "
                    f"{'met' if ratio >= 0.9 else 'missed'} |")
    load_after = os.getloadavg()

    import jax
    import keras

    lines = [
        "# Two-process `data_parallel` throughput (JAX, CPU, gloo over loopback)",
        "",
        f"`python benchmarks/data_parallel.py --model {args.model} --batch "
        f"{' '.join(map(str, args.batch))} --epochs {args.epochs}{' --no-pin' if args.no_pin else ''}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {time.time() - started:.0f} s.",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores; Python {sys.version.split()[0]}, "
        f"Keras {keras.__version__}, JAX {jax.__version__}; load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after.",
        "",
        f"Synthetic CIFAR-shaped data ({args.images} images of 32×32×3), `{args.model}`, SGD with "
        f"momentum; images/s over every step after the first epoch (which compiles). Two setups, "
        f"each process {'pinned to its own core' if PIN['on'] else 'placed by the OS (not pinned)'}: "
        f"two independent single-process runs (each with half the global batch, summed) and one "
        f"two-process `data_parallel` job.",
        "",
        "| global batch | batch per process | two independent runs (img/s) | `data_parallel` job "
        "(img/s) | job / independent | target ≥ 0.9 |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    out = Path(args.out)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
