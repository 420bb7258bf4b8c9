"""``kcnn export``: convert a run's best model, verify the result, write file + report."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from kcnn.choices import ExportFormat, QuantizeMode, values
from kcnn.errors import KcnnError
from kcnn.io import atomic_path, write_json, write_text

FORMATS = values(ExportFormat)
DEFAULT_LATENCY_THREADS = 1  # kcnn.export.runtime.LATENCY_THREADS, without importing LiteRT


def _open_run(run_dir: str | Path):
    from kcnn.saving import resolve

    return resolve(run_dir, kinds=("run",)).run


def _quiet_tensorflow() -> None:
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # retracing notices from repeated predict() calls


def check_options(fmt: str, quantize: str | None, calibration: int | None,
                  threads: int | None = None) -> None:
    """One line for a bad ``--format``, ``--quantize``, ``--calibration`` or ``--threads``;
    no heavy import."""
    if fmt not in FORMATS:
        raise KcnnError(f"--format: unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if quantize is not None and quantize not in quantize_modes():
        raise KcnnError(f"--quantize: unknown mode {quantize!r}; valid: "
                        f"{', '.join(quantize_modes())}")
    if calibration is not None and calibration < 1:
        raise KcnnError(f"--calibration: must be >= 1 (got {calibration})")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise KcnnError(f"--threads: must be an integer >= 1 (got {threads!r})")


def export_run(run_dir: str | Path, *, fmt: str = "tflite", quantize: str | None = None,
               int8_io: bool = False, calibration: int | None = None, strict: bool = False,
               all_modes: bool = False, out: str | Path | None = None,
               force: bool = False, quant_report: bool = False,
               float_layers: str | None = None,
               latency_threads: int | None = None) -> list[dict[str, Any]]:
    """``kcnn export``: check the options, then export one mode (``quantize``; default the
    recipe's ``export.quantize``), every TFLite mode (``all_modes``) or another format.
    An existing export is replaced only with ``force``. Returns the reports.
    ``quant_report``/``float_layers``: see :func:`export_tflite`; ``latency_threads``:
    the thread count latency is measured with (default 1, see :func:`verify`)."""
    from kcnn.export.report import check_report_options

    check_options(fmt, quantize, calibration, latency_threads)
    check_report_options(quantize, int8_io, quant_report, float_layers, all_modes)
    run = _open_run(run_dir)
    threads = DEFAULT_LATENCY_THREADS if latency_threads is None else latency_threads
    if all_modes:
        return export_all(run_dir, calibration=calibration, force=force, latency_threads=threads)
    if fmt != "tflite":
        return [export_other(run_dir, fmt, out, force=force)]
    if quantize is None:
        from kcnn.recipes import load

        quantize = load(run.recipe).export.quantize
    return [export_tflite(run_dir, mode=quantize, out=out, calibration=calibration,
                          int8_io=int8_io, strict=strict, force=force,
                          quant_report=quant_report, float_layers=float_layers,
                          latency_threads=threads)]


def refuse_overwrite(path: Path, force: bool) -> None:
    """A one-line error for an existing output unless ``force``."""
    if path.exists() and not force:
        raise KcnnError(f"{path}: already exists; pass --force to replace it")


def quantize_modes() -> tuple[str, ...]:
    """The TFLite modes in the schema's order (``export.quantize``: none first)."""
    return values(QuantizeMode)


def default_out(run, fmt: str, mode: str, int8_io: bool = False) -> Path:
    """``exports/<mode>/model.tflite`` (``exports/int8_io/`` for int8 with int8 input and
    output tensors), ``exports/saved_model``, ``exports/model.keras``."""
    if fmt == "tflite":
        folder = f"{mode}_io" if int8_io and mode == "int8" else mode
        return run.path / "exports" / folder / "model.tflite"
    if fmt == "saved_model":
        return run.path / "exports" / "saved_model"
    return run.path / "exports" / "model.keras"


def verify(content: bytes, keras_model, data, split: str, mode: str, batch_size: int = 64,
           latency_runs: int = 100, latency_threads: int = DEFAULT_LATENCY_THREADS
           ) -> dict[str, Any]:
    """Accuracy and agreement against the Keras model, logit error, latency and op list.

    Latency is taken as a phone app runs the model on the CPU: LiteRT's interpreter with
    the XNNPACK delegate on, ``latency_threads`` threads, one image per ``invoke()``; the
    report records those settings and how many ops XNNPACK took (``xnnpack_ops`` of
    ``total_ops``; ``non_xnnpack_ops`` run on LiteRT's own kernels).

    For a regression run: mse and mae of the TFLite and the Keras outputs against the
    targets, and the largest absolute difference between the two."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from kcnn.engine.evaluate import predict_logits
    from kcnn.export.runtime import TFLiteModel
    from kcnn.export.tflite import FLOAT_MODES, float_fallback

    part = data.split(split)
    tfl = TFLiteModel(content, num_threads=latency_threads)
    lite_logits = tfl.predict(part, batch_size)
    keras_logits = predict_logits(keras_model, part, batch_size)
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
        "gzip_bytes": len(gzip.compress(content, 9)),  # weight sharing shows here
        **scores,
        **tfl.latency(part.images([0])[0], runs=latency_runs),
        "input_dtype": np.dtype(tfl.input_dtype).name,
        "ops": op_types,
        "flex_ops": [o for o in op_types if o.startswith("Flex")],
        "float_fallback_ops": fallback_ops,
        "float_fallback_layers": fallback_layers,
    }


def export_tflite(run_dir: str | Path, *, mode: str = "none", out: str | Path | None = None,
                  calibration: int | None = None, int8_io: bool = False, strict: bool = False,
                  split: str = "test", latency_runs: int = 100, force: bool = False,
                  quant_report: bool = False, float_layers: str | None = None,
                  latency_threads: int = DEFAULT_LATENCY_THREADS) -> dict[str, Any]:
    """One TFLite mode. ``quant_report`` (int8, int16x8): per-layer error against the float
    model in ``quant_report.json`` beside the export (:mod:`kcnn.export.report`);
    ``float_layers`` (int8): a regular expression of layer names kept in float;
    ``latency_threads``: see :func:`verify`."""
    from kcnn.data.sources import load_dataset
    from kcnn.export.report import check_report_options
    from kcnn.recipes import load
    from kcnn.saving import load_keras_model

    check_options("tflite", mode, calibration, latency_threads)  # bad options fail before any work
    check_report_options(mode, int8_io, quant_report, float_layers)
    run = _open_run(run_dir)
    out = Path(out) if out else default_out(run, "tflite", mode, int8_io)
    refuse_overwrite(out, force)
    from kcnn.export.tflite import (
        balanced_calibration,
        convert_with_float_layers,
        exclude_requested_float,
    )

    _quiet_tensorflow()
    recipe = load(run.recipe)
    n_cal = recipe.export.calibration if calibration is None else calibration
    data = load_dataset(recipe.data)
    model = load_keras_model(run.model)
    samples = balanced_calibration(data.train, data.sampler_labels, n_cal, recipe.seed)
    content, quantizer, kept_float = convert_with_float_layers(
        model, mode, samples, int8_io=int8_io, float_layers=float_layers, quantizer=quant_report)
    report = verify(content, model, data, split, mode, recipe.train.batch_size, latency_runs,
                    latency_threads)
    exclude_requested_float(report, kept_float)
    if report["float_fallback_layers"] or report["float_fallback_ops"]:
        names = ", ".join(report["float_fallback_layers"]) or ", ".join(report["float_fallback_ops"])
        if strict:
            raise KcnnError(
                f"--strict: these layers have no integer kernels and would run in float in {mode} "
                f"mode: {names}"
            )
        print(f"warning: {mode}: layers without integer kernels run in float between "
              f"QUANTIZE/DEQUANTIZE: {names}", file=sys.stderr)
    with atomic_path(out) as tmp:
        tmp.write_bytes(content)
    if quant_report:
        from kcnn.export.report import write_quant_report

        report["quant_report"] = write_quant_report(
            out.parent / "quant_report.json", model, content, data.split(split), mode=mode,
            seed=recipe.seed, quantizer=quantizer, float_layers=kept_float)
    report.update({"format": "tflite", "quantize": mode, "int8_io": int8_io, "file": str(out),
                   "calibration_samples": int(len(samples)) if mode in ("int8", "int16x8") else 0,
                   "run": str(run.path)})
    write_json(out.parent / "export_report.json", report)
    return report


def export_other(run_dir: str | Path, fmt: str, out: str | Path | None = None,
                 force: bool = False) -> dict[str, Any]:
    """SavedModel (a folder, swapped in atomically) or a copy of the best ``.keras``."""
    from kcnn.export.tflite import require_tensorflow_backend
    from kcnn.saving import load_keras_model

    run = _open_run(run_dir)
    out = Path(out) if out else default_out(run, fmt, "none")
    refuse_overwrite(out, force)
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
               latency_runs: int = 100, force: bool = False,
               latency_threads: int = DEFAULT_LATENCY_THREADS) -> list[dict[str, Any]]:
    """Every TFLite mode, plus a comparison table in ``exports/comparison.md``."""
    check_options("tflite", None, calibration, latency_threads)
    run = _open_run(run_dir)
    for mode in quantize_modes():  # refuse before converting anything
        refuse_overwrite(default_out(run, "tflite", mode), force)
    reports = [export_tflite(run_dir, mode=m, calibration=calibration, latency_runs=latency_runs,
                             force=True, latency_threads=latency_threads)
               for m in quantize_modes()]
    table = comparison_file(run.path)
    write_text(table, comparison_table(reports) + "\n")
    write_json(table.with_suffix(".json"), reports)
    return reports


def comparison_file(run_path: str | Path) -> Path:
    """Where ``kcnn export --all`` writes its table (``comparison.json`` beside it)."""
    return Path(run_path) / "exports" / "comparison.md"


def float_baseline(report: dict[str, Any]) -> dict[str, Any] | None:
    """The run's float export report (``exports/none/export_report.json``) to compare a
    quantized export with; ``None`` for a float export or when there is none."""
    if report.get("quantize") in (None, "none") or not report.get("run"):
        return None
    path = Path(report["run"]) / "exports" / "none" / "export_report.json"
    try:
        base = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(base, dict) or not base.get("size_bytes") or not base.get("latency_ms_median"):
        return None
    return {**base, "file": base.get("file", str(path.parent / "model.tflite"))}


def latency_setup(report: dict[str, Any]) -> tuple | None:
    """What a report's latency depends on besides the model (runtime, delegate, threads,
    batch); ``None`` for a report from a kcnn that did not record it."""
    if "latency_delegate" not in report:
        return None
    return (report.get("latency_runtime"), report["latency_delegate"],
            report.get("latency_threads"), report.get("latency_batch", 1))


def latency_settings(report: dict[str, Any]) -> str:
    """One line saying how a report's latency was measured."""
    if latency_setup(report) is None:
        return "latency settings not recorded (exported by an earlier kcnn)"
    threads = report.get("latency_threads")
    delegate = ("XNNPACK delegate on" if report["latency_delegate"] == "XNNPACK"
                else "no delegate")
    return (f"latency: median of {report.get('latency_runs')} single-image invoke() calls after "
            f"{report.get('latency_warmup')} warm-up, {report.get('latency_runtime')}, "
            f"{delegate}, {threads} thread{'' if threads == 1 else 's'}")


def _xnnpack_share(report: dict[str, Any]) -> str:
    if "xnnpack_ops" not in report:
        return "?"
    left = report.get("non_xnnpack_ops") or {}
    rest = f" (not: {', '.join(f'{op} ×{n}' for op, n in left.items())})" if left else ""
    if report["xnnpack_ops"] == 0:
        rest = ""  # nothing delegated (int16x8): listing every op says no more
    return f"{report['xnnpack_ops']}/{report['total_ops']}{rest}"


def comparison_table(reports: list[dict[str, Any]],
                     baseline: dict[str, Any] | None = None) -> str:
    """A markdown table of export reports, then a line with the latency settings. Size and
    latency are given as ratios to ``baseline`` (default: the float export among
    ``reports``); without one, those columns are left out. A latency ratio is only given
    between reports measured with the same runtime, delegate and threads."""
    base = baseline or next((r for r in reports if r.get("quantize") == "none"), None)
    if len(reports) == 1 and reports[0] is base:  # a float export alone: nothing to compare
        base = None

    def comparable(r: dict[str, Any]) -> bool:
        return latency_setup(r) is not None and latency_setup(r) == latency_setup(base)

    if reports and "mse" in reports[0]:
        columns = [("mse", lambda r: f"{r['mse']:.4g}"),
                   ("Keras mse", lambda r: f"{r['keras_mse']:.4g}"),
                   ("mae", lambda r: f"{r['mae']:.4g}"),
                   ("max abs output diff", lambda r: f"{r['max_abs_output_diff']:.2e}")]
    else:
        columns = [
            ("accuracy", lambda r: f"{r['accuracy']:.4f}"),
            ("Keras accuracy", lambda r: f"{r['keras_accuracy']:.4f}"),
            ("agreement", lambda r: f"{r['agreement']:.4f}"),
            ("max abs logit diff", lambda r: "–" if r.get("max_abs_logit_diff") is None
             else f"{r['max_abs_logit_diff']:.2e}"),
        ]
    columns = [("mode", lambda r: r["quantize"]),
               ("size (KiB)", lambda r: f"{r['size_bytes'] / 1024:.1f}"),
               *([("size vs float", lambda r: f"{r['size_bytes'] / base['size_bytes']:.2f}×")]
                 if base else []),
               *columns,
               ("latency (ms)", lambda r: f"{r['latency_ms_median']:.3f}"),
               *([("latency vs float",
                   lambda r: f"{r['latency_ms_median'] / base['latency_ms_median']:.2f}×"
                   if comparable(r) else "–")]
                 if base else []),
               *([("ops on XNNPACK", _xnnpack_share)]
                 if any("xnnpack_ops" in r for r in reports) else [])]
    if reports and "mse" not in reports[0]:
        columns.append(("float fallback", lambda r: ", ".join(
            r.get("float_fallback_layers") or r.get("float_fallback_ops") or []) or "none"))
    lines = ["| " + " | ".join(name for name, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in reports]
    settings = list(dict.fromkeys(latency_settings(r) for r in reports))
    lines += ["", *settings]
    if base is not None and not all(comparable(r) for r in reports):
        lines.append(f"latency vs float left out where the settings differ; the float "
                     f"export's {latency_settings(base)}")
    return "\n".join(lines)
