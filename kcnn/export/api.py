"""``kcnn export``: convert a run's best model, verify the result, write file + report."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from kcnn.errors import KcnnError, RunDirError
from kcnn.io import atomic_path, write_json, write_text

FORMATS = ("tflite", "saved_model", "keras")


def _open_run(run_dir: str | Path):
    from kcnn.engine.rundir import RunDir

    run = RunDir.open(run_dir)
    if not run.model.is_file():
        raise RunDirError(f"{run_dir}: run has no model.keras yet (train it first)")
    return run


def _quiet_tensorflow() -> None:
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # retracing notices from repeated predict() calls


def default_out(run, fmt: str, mode: str) -> Path:
    if fmt == "tflite":
        return run.path / "exports" / mode / "model.tflite"
    if fmt == "saved_model":
        return run.path / "exports" / "saved_model"
    return run.path / "exports" / "model.keras"


def verify(content: bytes, keras_model, data, split: str, mode: str, batch_size: int = 64,
           latency_runs: int = 100) -> dict[str, Any]:
    """Accuracy and agreement against the Keras model, logit error, latency and op list.

    For a regression run: mse and mae of the TFLite and the Keras outputs against the
    targets, and the largest absolute difference between the two."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from kcnn.engine.evaluate import predict_logits
    from kcnn.export.runtime import TFLiteModel
    from kcnn.export.tflite import FLOAT_MODES, float_fallback

    part = data.split(split)
    tfl = TFLiteModel(content)
    lite_logits = tfl.predict(part.x, batch_size)
    keras_logits = predict_logits(keras_model, part.x, batch_size)
    ops = tfl.ops()
    op_types = sorted({o["op"] for o in ops})
    integer = mode in ("int8", "int16x8")
    fallback_ops, fallback_layers = (
        float_fallback(ops, [layer.name for layer in keras_model.layers]) if integer else ([], [])
    )
    if data.is_regression:
        y = np.asarray(part.y, dtype="float64").reshape(lite_logits.shape)
        scores = {
            "mse": float(np.mean((lite_logits - y) ** 2)),
            "mae": float(np.mean(np.abs(lite_logits - y))),
            "keras_mse": float(np.mean((keras_logits - y) ** 2)),
            "keras_mae": float(np.mean(np.abs(keras_logits - y))),
            "max_abs_output_diff": float(np.max(np.abs(lite_logits - keras_logits))),
        }
    else:
        lite_pred, keras_pred = lite_logits.argmax(-1), keras_logits.argmax(-1)
        scores = {
            "accuracy": float(accuracy_score(part.y, lite_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(part.y, lite_pred)),
            "keras_accuracy": float(accuracy_score(part.y, keras_pred)),
            "keras_balanced_accuracy": float(balanced_accuracy_score(part.y, keras_pred)),
            "agreement": float(np.mean(lite_pred == keras_pred)),
            "max_abs_logit_diff": float(np.max(np.abs(lite_logits - keras_logits)))
            if mode in FLOAT_MODES else None,
        }
    return {
        "split": split,
        "num_samples": int(len(part)),
        "size_bytes": len(content),
        **scores,
        "latency_ms_median": tfl.latency_ms(part.x[0], runs=latency_runs),
        "latency_runs": latency_runs,
        "latency_threads": 1,
        "input_dtype": np.dtype(tfl.input_dtype).name,
        "ops": op_types,
        "flex_ops": [o for o in op_types if o.startswith("Flex")],
        "float_fallback_ops": fallback_ops,
        "float_fallback_layers": fallback_layers,
    }


def export_tflite(run_dir: str | Path, *, mode: str = "none", out: str | Path | None = None,
                  calibration: int | None = None, int8_io: bool = False, strict: bool = False,
                  split: str = "test", latency_runs: int = 100) -> dict[str, Any]:
    from kcnn.data.sources import load_dataset
    from kcnn.engine.evaluate import load_keras_model
    from kcnn.export.tflite import QUANTIZE_MODES, balanced_calibration, convert
    from kcnn.recipes import load

    QUANTIZE_MODES.get(mode)  # unknown modes fail before any work
    run = _open_run(run_dir)
    _quiet_tensorflow()
    recipe = load(run.recipe)
    n_cal = recipe.export.calibration if calibration is None else calibration
    if n_cal < 1:
        raise KcnnError(f"--calibration: must be >= 1 (got {n_cal})")
    data = load_dataset(recipe.data)
    model = load_keras_model(run.model)
    samples = balanced_calibration(data.train.x, data.sampler_labels, n_cal, recipe.seed)
    content = convert(model, mode, samples, int8_io=int8_io)
    report = verify(content, model, data, split, mode, recipe.train.batch_size, latency_runs)
    if report["float_fallback_layers"] or report["float_fallback_ops"]:
        names = ", ".join(report["float_fallback_layers"]) or ", ".join(report["float_fallback_ops"])
        if strict:
            raise KcnnError(
                f"--strict: these layers have no integer kernels and would run in float in {mode} "
                f"mode: {names}"
            )
        print(f"warning: {mode}: layers without integer kernels run in float between "
              f"QUANTIZE/DEQUANTIZE: {names}", file=sys.stderr)
    out = Path(out) if out else default_out(run, "tflite", mode)
    with atomic_path(out) as tmp:
        tmp.write_bytes(content)
    report.update({"format": "tflite", "quantize": mode, "int8_io": int8_io, "file": str(out),
                   "calibration_samples": int(len(samples)) if mode in ("int8", "int16x8") else 0,
                   "run": str(run.path)})
    write_json(out.parent / "export_report.json", report)
    return report


def export_other(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> dict[str, Any]:
    """SavedModel (a folder, swapped in atomically) or a copy of the best ``.keras``."""
    from kcnn.engine.evaluate import load_keras_model
    from kcnn.export.tflite import require_tensorflow_backend

    run = _open_run(run_dir)
    out = Path(out) if out else default_out(run, fmt, "none")
    if fmt == "keras":
        with atomic_path(out) as tmp:
            shutil.copyfile(run.model, tmp)
    elif fmt == "saved_model":
        require_tensorflow_backend()
        model = load_keras_model(run.model)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            model.export(str(tmp / "sm"), format="tf_saved_model", verbose=False)
            old = None
            if out.exists():
                old = out.with_name(f".{out.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out, old)
            os.replace(tmp / "sm", out)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        raise KcnnError(f"--format: unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    size = sum(f.stat().st_size for f in out.rglob("*")) if out.is_dir() else out.stat().st_size
    return {"format": fmt, "file": str(out), "size_bytes": size}


def export_all(run_dir: str | Path, *, calibration: int | None = None,
               latency_runs: int = 100) -> list[dict[str, Any]]:
    """Every TFLite mode, plus a comparison table in ``exports/comparison.md``."""
    from kcnn.export.tflite import QUANTIZE_MODES

    reports = [export_tflite(run_dir, mode=m, calibration=calibration, latency_runs=latency_runs)
               for m in QUANTIZE_MODES.names()]
    order = ["none", "dynamic", "float16", "int8", "int16x8"]
    reports.sort(key=lambda r: order.index(r["quantize"]) if r["quantize"] in order else 99)
    run = _open_run(run_dir)
    write_text(run.path / "exports" / "comparison.md", comparison_table(reports) + "\n")
    write_json(run.path / "exports" / "comparison.json", reports)
    return reports


def comparison_table(reports: list[dict[str, Any]]) -> str:
    if reports and "mse" in reports[0]:
        return _regression_table(reports)
    base = next((r["size_bytes"] for r in reports if r.get("quantize") == "none"), None)
    base_lat = next((r["latency_ms_median"] for r in reports if r.get("quantize") == "none"), None)
    lines = [
        "| mode | size (KiB) | × float | accuracy | Keras accuracy | agreement | max abs logit diff | latency (ms) | × float | float fallback |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        diff = r.get("max_abs_logit_diff")
        lines.append(
            f"| {r['quantize']} | {r['size_bytes'] / 1024:.1f} | "
            f"{r['size_bytes'] / base:.2f} | " if base else f"| {r['quantize']} | {r['size_bytes'] / 1024:.1f} | – | "
        )
        lines[-1] += (
            f"{r['accuracy']:.4f} | {r['keras_accuracy']:.4f} | {r['agreement']:.4f} | "
            f"{'–' if diff is None else f'{diff:.2e}'} | {r['latency_ms_median']:.3f} | "
            f"{(r['latency_ms_median'] / base_lat) if base_lat else float('nan'):.2f} | "
            f"{', '.join(r.get('float_fallback_layers') or r.get('float_fallback_ops') or []) or 'none'} |"
        )
    return "\n".join(lines)


def _regression_table(reports: list[dict[str, Any]]) -> str:
    base = next((r for r in reports if r.get("quantize") == "none"), None)
    lines = [
        "| mode | size (KiB) | × float | mse | Keras mse | mae | max abs output diff | latency (ms) | × float |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        size = f"{r['size_bytes'] / base['size_bytes']:.2f}" if base else "–"
        lat = f"{r['latency_ms_median'] / base['latency_ms_median']:.2f}" if base else "–"
        lines.append(
            f"| {r['quantize']} | {r['size_bytes'] / 1024:.1f} | {size} | {r['mse']:.4g} | "
            f"{r['keras_mse']:.4g} | {r['mae']:.4g} | {r['max_abs_output_diff']:.2e} | "
            f"{r['latency_ms_median']:.3f} | {lat} |"
        )
    return "\n".join(lines)
