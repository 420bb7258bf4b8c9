"""Training throughput: kcnn's input pipeline vs plain ``model.fit`` on NumPy arrays.

For resnet20 and nin_cifar at the CIFAR shape (synthetic images, so no download),
measures training images/s with the ``shuffle`` and ``class_balanced`` samplers
and with plain ``fit``, all in one process, and writes
``benchmarks/results/throughput.md``. Augmentation is off so both sides do the
same work. Usage: ``python benchmarks/throughput.py [--steps 40] [--batch-size 128]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--models", default="resnet20,nin_cifar")
    args = parser.parse_args()

    import keras

    from kcnn.bench import bench_train
    from kcnn.recipes import loads

    rows = []
    for model in args.models.split(","):
        for sampler in ("shuffle", "class_balanced"):
            recipe = loads(
                f"name: bench_{model}\ndata: {{source: {{type: keras, name: cifar10}}, "
                f"sampler: {{type: {sampler}}}}}\nmodel: {{name: {model}}}\n"
                f"train: {{batch_size: {args.batch_size}, optimizer: {{type: sgd, lr: 0.1, momentum: 0.9}}}}\n"
            )
            r = bench_train(recipe, steps=args.steps, warmup=args.warmup, synthetic=True,
                            compare_plain=True)
            rows.append((model, sampler, r["kcnn"]["images_per_s"], r["plain"]["images_per_s"], r["ratio"]))
            print(rows[-1], file=sys.stderr, flush=True)

    lines = [
        "# Training throughput: kcnn pipeline vs plain `model.fit`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs; TensorFlow backend, Keras {keras.__version__}; "
        f"batch {args.batch_size}, {args.steps - args.warmup - 1} timed steps after {args.warmup} warm-up "
        "steps, CIFAR shape 32×32×3 (synthetic images), no augmentation, float32.",
        "Both columns of a row were measured in the same process, one after the other.",
        "",
        "| model | sampler | kcnn pipeline (img/s) | plain fit (img/s) | ratio |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {m} | {s} | {k:.1f} | {p:.1f} | {r:.3f} |" for m, s, k, p, r in rows]
    lines += ["", "Target: ratio ≥ 0.95. GPU: no device machine was lent to this task, so no GPU rows."]
    text = "\n".join(lines) + "\n"
    out = Path(__file__).parent / "results" / "throughput.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
