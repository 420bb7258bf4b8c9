"""Compression benchmark on the digits quickstart model, plus export latency on ResNet-20
and MobileNetV2.

    .venv/bin/python benchmarks/compression.py [--run RUN_DIR] [--work DIR] [--skip-binary]
        [--threads 1] [--latency-runs 200] [--skip-latency]

Trains ``recipes/quickstart.yaml`` (or reuses ``--run``), then measures, in this
process:

* every TFLite export mode (``kcnn.export.api.export_all``): size, accuracy,
  agreement with Keras, latency;
* the latency of every export mode on ResNet-20 at 32×32×3 and MobileNetV2 at 96×96×3
  (``benchmarks/latency.py``: untrained weights, interleaved timing, with and without
  XNNPACK), unless ``--skip-latency``;
* 50% filter pruning (3 rounds of prune + fine-tune): params, MACs, accuracy,
  TFLite size and latency against the source measured back to back;
* 50% magnitude pruning (2 rounds × 2 epochs): non-zero params, gzipped TFLite size;
* low-rank factorization (spatial and channel, 90% energy, 2 epochs of fine-tuning);
* weight clustering (``kcnn compress cluster``): scalar k-means at 4 and 2 bits and
  product quantization (sub-vectors of 4) at 4 and 2 bits, ``--cluster-epochs`` of
  fine-tuning: packed size of the clustered kernels, accuracy, gzipped TFLite size;
* the ``digits_distill`` student trained with and without distillation (same
  recipe and seed), the quickstart model as the teacher;
* the ``digits_binary`` model (``--binary-epochs``, default 20): accuracy and packed
  weight storage.

Rerun with the same ``--work`` to reuse the steps that finished (their runs hold
``compress.json`` / ``metrics.json``). Prints a markdown report and writes it to
``benchmarks/results/compression.md``
with the machine description. Latencies are medians of single-image runs on LiteRT's
interpreter with the XNNPACK delegate and ``--threads`` threads (default 1), the settings
``kcnn export`` reports; ratios compare numbers taken in this process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {
    "int8_size": 0.30,  # int8 TFLite size ≤ 0.30 × float32
    "int8_latency": 0.60,  # int8 latency ≤ 0.6 × float32
    "int8_drop": 0.5,  # int8 accuracy drop ≤ 0.5 points
    "filter_macs": 0.35,  # 50% filter pruning: MACs ≤ 0.35 ×
    "filter_drop": 1.0,  # ... with an accuracy drop ≤ 1 point after fine-tuning
    "cluster4_drop": 0.3,  # scalar 4-bit clustering: accuracy drop ≤ 0.3 points after fine-tuning
    "cluster4_packed": 0.15,  # ... and packed kernels ≤ 0.15 × float32
}

# (label, run dir name, method, bits, sub-vector length)
CLUSTER_SETTINGS = [
    ("scalar 4-bit", "cluster_scalar4", "scalar", 4, None),
    ("scalar 2-bit", "cluster_scalar2", "scalar", 2, None),
    ("product 4-bit, D=4", "cluster_product4_d4", "product", 4, 4),
    ("product 2-bit, D=4", "cluster_product2_d4", "product", 2, 4),
]


def machine() -> str:
    from benchmarks.common import cpu_name, software
    from benchmarks.latency import cpu_flags
    from kcnn.export.runtime import litert_version

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu_name()}, {os.cpu_count()} logical cores ({', '.join(cpu_flags())}), "
        f"{platform.system()} {platform.release()}; {software()}, ai-edge-litert "
        f"{litert_version()}; load average {load:.1f} at start"
    )


def train_recipe(recipe_name: str, run_dir: Path, overrides=()) -> Path:
    from kcnn.engine.train import train
    from kcnn.recipes import load

    if (run_dir / "metrics.json").is_file():
        REUSED.append(run_dir.name)
        return run_dir
    return train(
        load(
            recipe_name,
            [
                "train.verbose=0",
                "evaluate.plots=false",
                "train.callbacks.tensorboard=false",
                *overrides,
            ],
        ),
        run_dir=run_dir,
    )


REUSED: list[str] = []  # runs taken from a previous benchmark with the same --work


def reuse_or(out: Path, fn, **kwargs) -> dict:
    """``fn(..., out=out)``'s report, or the one a previous run with the same --work left."""
    if (out / "compress.json").is_file():
        REUSED.append(out.name)
        return json.loads((out / "compress.json").read_text())
    return fn(out=out, **kwargs)[1]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def ok(flag: bool) -> str:
    return "met" if flag else "**missed**"


def cluster_section(clustered: dict, epochs: int) -> list[str]:
    """The weight-clustering table: storage of the clustered kernels and accuracy at each step."""
    lines = [
        f"## Weight clustering (`kcnn compress cluster`, {epochs} fine-tuning epochs)",
        "",
        "| setting | bits / weight | kernels packed × float32 | Huffman × | all weights × | "
        "accuracy clustered | BN re-estimated | fine-tuned | Δ points | TFLite gzip × |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, c in clustered.items():
        gzip_ratio = c["after"]["tflite_gzip_bytes"] / c["before"]["tflite_gzip_bytes"]
        lines.append(
            f"| {label} | {c['bits_per_weight']:.2f} | {c['ratio']:.3f} | "
            f"{c['huffman_ratio']:.3f} | {c['model_ratio']:.3f} | {c['accuracy_clustered']:.4f} | "
            f"{c['accuracy_clustered_bn_recalibrated']:.4f} | {c['accuracy_finetuned']:.4f} | "
            f"{100 * (c['accuracy_finetuned'] - c['accuracy_before']):+.2f} | {gzip_ratio:.3f} |"
        )
    fallbacks = sorted({f"{name} ({label})" for label, c in clustered.items()
                        for name, layer in c["layers"].items() if "fallback" in layer})
    lines += [
        "",
        "Packed = the float32 codebooks + every index at its bit width (`clustered.npz`); "
        "Huffman = the codebooks + canonical Huffman codes of the indices (Deep Compression). "
        "Bits per weight include the codebooks. Product quantization stores a codebook of "
        "rows × 2^bits floats per layer, so it pays only where a layer has many more output "
        "channels than centroids"
        + (f"; clustered scalar because D does not divide their input size: "
           f"{', '.join(fallbacks)}." if fallbacks else "."),
        "",
    ]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="Reuse a trained quickstart run dir.")
    parser.add_argument("--work", type=Path, help="Where to write the runs (default: a temp dir).")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/compression.md")
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=3,
        help="Fine-tuning epochs per pruning round (default 3).",
    )
    parser.add_argument(
        "--binary-epochs",
        type=int,
        default=20,
        help="Epochs for digits_binary (the recipe says 40; default 20 here).",
    )
    parser.add_argument("--skip-binary", action="store_true", help="Skip the binary model.")
    parser.add_argument(
        "--cluster-epochs",
        type=int,
        default=3,
        help="Fine-tuning epochs after weight clustering (default 3).",
    )
    parser.add_argument("--threads", type=int, default=1,
                        help="Interpreter threads for every latency (default 1).")
    parser.add_argument("--latency-runs", type=int, default=200,
                        help="Timed invocations per latency (default 200).")
    parser.add_argument("--skip-latency", action="store_true",
                        help="Skip the ResNet-20 / MobileNetV2 latency section.")
    args = parser.parse_args(argv)

    from benchmarks.latency import (
        TARGET_RESNET_INT8,
        latency_section,
        measure_all,
        notes,
        resnet_int8_ratio,
    )
    from kcnn.compress.binary import weight_storage
    from kcnn.compress.cluster import cluster_run
    from kcnn.compress.common import load_source, measure
    from kcnn.compress.lowrank import lowrank_run
    from kcnn.compress.prune import prune_run
    from kcnn.export.api import export_all, latency_settings
    from kcnn.io import write_text
    from kcnn.saving import load_keras_model

    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="kcnn-bench-compression-"))
    work.mkdir(parents=True, exist_ok=True)
    header = machine()
    timings: dict[str, float] = {}
    quiet = lambda msg: print(f"  {msg}", file=sys.stderr)  # noqa: E731

    def step(name):
        timings[name] = time.perf_counter()
        print(f"[{time.perf_counter() - started:6.0f} s] {name}", file=sys.stderr)

    step("quickstart")
    run = args.run or train_recipe("quickstart", work / "quickstart")
    keras_acc = metrics(run)["accuracy"]

    step("export modes")
    load_before = os.getloadavg()[0]
    reports = export_all(run, latency_runs=args.latency_runs, force=True,
                         latency_threads=args.threads)
    by_mode = {r["quantize"]: r for r in reports}
    f32 = by_mode["none"]
    lines = [
        "## Export modes (quickstart model)",
        "",
        "| mode | size (KiB) | × float32 | accuracy | agreement | latency (ms) | × float32 | "
        "ops on XNNPACK |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r['quantize']} | {r['size_bytes'] / 1024:.1f} | "
            f"{r['size_bytes'] / f32['size_bytes']:.2f} | {r['accuracy']:.4f} | "
            f"{r['agreement']:.4f} | {r['latency_ms_median']:.3f} | "
            f"{r['latency_ms_median'] / f32['latency_ms_median']:.2f} | "
            f"{r['xnnpack_ops']}/{r['total_ops']} |"
        )
    settings = latency_settings(f32)
    lines += ["", f"Keras float32 accuracy: {keras_acc:.4f}. {settings[0].upper()}{settings[1:]}; "
              f"measured mode after mode, load average {load_before:.2f} → "
              f"{os.getloadavg()[0]:.2f}.", ""]

    latency_results = None
    if not args.skip_latency:
        step("latency models")
        latency_results = measure_all(args.latency_runs, args.threads, log=quiet)
        lines += [
            "## Export latency on larger models (`benchmarks/latency.py`)",
            "",
            *latency_section(latency_results, args.latency_runs, args.threads, level="###"),
            *notes(latency_results),
        ]

    step("filter pruning")
    fp = reuse_or(
        work / "pruned_filter",
        prune_run,
        run_dir=run,
        method="filter",
        sparsity=0.5,
        rounds=3,
        finetune_epochs=args.finetune_epochs,
        latency_runs=200,
        verbose=0,
        log=quiet,
    )
    step("magnitude pruning")
    mp = reuse_or(
        work / "pruned_magnitude",
        prune_run,
        run_dir=run,
        method="magnitude",
        sparsity=0.5,
        rounds=2,
        finetune_epochs=2,
        latency_runs=200,
        verbose=0,
        log=quiet,
    )
    step("low-rank")
    lr = reuse_or(
        work / "lowrank",
        lowrank_run,
        run_dir=run,
        energy=0.9,
        mode="spatial",
        finetune_epochs=2,
        latency_runs=200,
        verbose=0,
        log=quiet,
    )
    lrc = reuse_or(
        work / "lowrank_channel",
        lowrank_run,
        run_dir=run,
        energy=0.9,
        mode="channel",
        finetune_epochs=2,
        latency_runs=200,
        verbose=0,
        log=quiet,
    )

    step("clustering")
    clustered = {
        label: reuse_or(
            work / dirname,
            cluster_run,
            run_dir=run,
            bits=bits,
            method=method,
            subvector=subvector,
            finetune_epochs=args.cluster_epochs,
            latency_runs=200,
            verbose=0,
            log=quiet,
        )
        for label, dirname, method, bits, subvector in CLUSTER_SETTINGS
    }

    step("distillation")
    student_kd = train_recipe(
        "digits_distill", work / "student_distilled", [f"distill.teacher={run}"]
    )
    student_plain = train_recipe("digits_distill", work / "student_plain", ["distill=null"])
    kd_source = load_source(student_kd)
    kd = measure(kd_source.model, kd_source, latency_runs=200)
    plain_acc = metrics(student_plain)["accuracy"]

    def row(name, m, base, note=""):
        return (
            f"| {name} | {m['params']:,} | {m['nonzero_params']:,} | {m['macs']:,} | "
            f"{m['macs'] / base['macs']:.3f} | {m['accuracy']:.4f} | "
            f"{100 * (m['accuracy'] - base['accuracy']):+.2f} | "
            f"{m['tflite_bytes'] / 1024:.1f} | {m['tflite_gzip_bytes'] / 1024:.1f} | "
            f"{m['latency_ms']:.3f} | {m['latency_ms'] / base['latency_ms']:.2f} | {note} |"
        )

    base = fp["before"]
    lines += [
        "## Compressed models (float32 TFLite; ratios against the source measured in the "
        "same command)",
        "",
        "| model | params | non-zero | MACs | × MACs | accuracy | Δ points | TFLite KiB | "
        "gzip KiB | latency (ms) | × latency | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        row(
            "quickstart (source)",
            base,
            base,
            f"{base['accuracy_bn_recalibrated']:.4f} after the same BN re-estimation",
        ),
        row(
            "filter pruning 50%",
            fp["after"],
            fp["before"],
            f"3 rounds × {args.finetune_epochs} fine-tuning epochs",
        ),
        row(
            "magnitude pruning 50%",
            mp["after"],
            mp["before"],
            "2 rounds × 2 epochs; zeros stored densely, see gzip",
        ),
        row(
            "low-rank (spatial, 90% energy)",
            lr["after"],
            lr["before"],
            f"{len(lr['layers'])} layers factorized; {lr['accuracy_factorized']:.4f} "
            f"before 2 epochs of fine-tuning",
        ),
        row(
            "low-rank (channel, 90% energy)",
            lrc["after"],
            lrc["before"],
            f"{len(lrc['layers'])} layers factorized; {lrc['accuracy_factorized']:.4f} "
            f"before 2 epochs of fine-tuning",
        ),
        *[
            row(
                f"clustering, {label}",
                c["after"],
                c["before"],
                f"{c['bits_per_weight']:.2f} bits/weight packed; shared values stored densely, "
                f"see gzip",
            )
            for label, c in clustered.items()
        ],
        row(
            "digits_distill student (distilled)", kd, base, f"without distillation: {plain_acc:.4f}"
        ),
        "",
    ]
    chans = ", ".join(f"{n} {a}→{b}" for n, (a, b) in fp["channels"].items())
    lines += [
        f"Filter pruning kept channels: {chans}.",
        "",
        "Filter pruning rounds: "
        + "; ".join(
            f"round {r['round']} (sparsity {r['sparsity']:.2f}): {r['accuracy_pruned']:.4f} "
            f"pruned → {r['accuracy_finetuned']:.4f} fine-tuned"
            for r in fp["rounds"]
        ),
        "",
    ]
    lines += cluster_section(clustered, args.cluster_epochs)
    lines += [
        "## Distillation (same student recipe, same seed)",
        "",
        "| student | accuracy |",
        "|---|---|",
        f"| without distillation (`--set distill=null`) | {plain_acc:.4f} |",
        f"| distilled from the quickstart model (T=4, α=0.9) | {kd['accuracy']:.4f} |",
        f"| teacher (quickstart) | {keras_acc:.4f} |",
        "",
    ]

    if not args.skip_binary:
        step("binary")
        binary_run = train_recipe(
            "digits_binary", work / "binary", [f"train.epochs={args.binary_epochs}"]
        )
        storage = weight_storage(load_keras_model(binary_run / "model.keras"))
        bin_layers = storage["layers"]
        b_float = sum(r["float32_bytes"] for r in bin_layers)
        b_packed = sum(r["packed_bytes"] for r in bin_layers)
        lines += [
            f"## Binary weights (`recipes/digits_binary.yaml`, {args.binary_epochs} epochs)",
            "",
            "| model | accuracy | weights float32 (KiB) | packed (KiB) | × |",
            "|---|---|---|---|---|",
            f"| digits_binary, whole model | {metrics(binary_run)['accuracy']:.4f} | "
            f"{storage['float32_bytes'] / 1024:.1f} | {storage['packed_bytes'] / 1024:.1f} | "
            f"{storage['ratio']:.3f} |",
            f"| its {len(bin_layers)} BinaryConv2D kernels | | {b_float / 1024:.1f} | "
            f"{b_packed / 1024:.1f} | {b_packed / b_float:.3f} |",
            "",
            "Packed = 1 bit per binary weight + one float32 α per output channel; every "
            "other weight (first convolution, BN, classifier) stays float32.",
            "",
        ]

    int8 = by_mode["int8"]
    size_ratio = int8["size_bytes"] / f32["size_bytes"]
    lat_ratio = int8["latency_ms_median"] / f32["latency_ms_median"]
    int8_drop = 100 * (int8["keras_accuracy"] - int8["accuracy"])
    macs_ratio = fp["ratios"]["macs"]
    drop = fp["ratios"]["accuracy_drop_points"]
    c4 = clustered["scalar 4-bit"]
    c4_drop = 100 * (c4["accuracy_before"] - c4["accuracy_finetuned"])
    lines += [
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| int8 size ≤ 0.30 × float32 | {size_ratio:.3f} | {ok(size_ratio <= TARGETS['int8_size'])} |",
        f"| int8 latency ≤ 0.6 × float32 | {lat_ratio:.3f} | {ok(lat_ratio <= TARGETS['int8_latency'])} |",
        f"| int8 accuracy drop ≤ 0.5 points | {int8_drop:+.2f} | {ok(int8_drop <= TARGETS['int8_drop'])} |",
        *([f"| ResNet-20 32×32: int8 latency ≤ {TARGET_RESNET_INT8} × float32 ({args.threads} "
           f"thread{'s' if args.threads > 1 else ''}) | {resnet_int8_ratio(latency_results):.3f} | "
           f"{ok(resnet_int8_ratio(latency_results) <= TARGET_RESNET_INT8)} |"]
          if latency_results else []),
        f"| 50% filter pruning: MACs ≤ 0.35 × | {macs_ratio:.3f} | {ok(macs_ratio <= TARGETS['filter_macs'])} |",
        f"| 50% filter pruning: accuracy drop ≤ 1 point | {drop:+.2f} | {ok(drop <= TARGETS['filter_drop'])} |",
        f"| scalar 4-bit clustering: accuracy drop ≤ 0.3 points | {c4_drop:+.2f} | {ok(c4_drop <= TARGETS['cluster4_drop'])} |",
        f"| scalar 4-bit clustering: packed kernels ≤ 0.15 × float32 | {c4['ratio']:.3f} | {ok(c4['ratio'] <= TARGETS['cluster4_packed'])} |",
        "",
    ]
    total = time.perf_counter() - started
    names = list(timings)
    spans = [
        f"{n} {((timings[names[i + 1]] if i + 1 < len(names) else time.perf_counter()) - timings[n]):.0f} s"
        for i, n in enumerate(names)
    ]
    footer = f"Wall time {total:.0f} s ({', '.join(spans)})."
    if REUSED:
        footer += (" Reused from an earlier run with the same --work (measured then): "
                   f"{', '.join(REUSED)}.")
    if args.run:
        footer += f" The quickstart run was given with --run ({run})."
    report = "\n".join(
        [
            "# Compression benchmark",
            "",
            f"`benchmarks/compression.py`, {dt.date.today().isoformat()}. Machine: {header}.",
            "",
            *lines,
            footer,
            "",
        ]
    )
    print(report)
    write_text(args.out, report)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
