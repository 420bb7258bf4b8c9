"""``kcnn`` command-line interface.

Only typer, the standard library and light kcnn modules (:mod:`kcnn.errors`,
:mod:`kcnn.choices`, :mod:`kcnn.quiet`) are imported at module level: ``kcnn --help``
must not pay for TensorFlow. Each command imports its engine inside the function body.

User errors (:class:`~kcnn.errors.KcnnError`) and usage errors (an unknown option, a
missing argument) print one ``error: …`` line to stderr and exit with code 2; set
``KCNN_DEBUG=1`` to see tracebacks. The libraries' own log lines are kept off the
terminal (:mod:`kcnn.quiet`) unless ``--verbose`` or ``KCNN_DEBUG=1``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from kcnn import quiet
from kcnn.choices import (
    ExportFormat,
    LowrankMode,
    PruneCriterion,
    PruneMethod,
    QuantizeMode,
    listing,
)
from kcnn.choices import Split as SplitName
from kcnn.errors import Interrupted, JobFailed, KcnnError

# Plain (click-style) help for every app and sub-app: Typer's rich panels show each flag
# with a "<bool>" value it does not take (typer 0.29's rich_utils prints
# display_type_rich() without checking is_flag), and loading rich costs --help time.
# Argument names are upper-case metavars throughout ({RUN_DIR}, [RECIPE]).
HELP = {"rich_markup_mode": None, "no_args_is_help": True,
        "context_settings": {"help_option_names": ["-h", "--help"]}}

app = typer.Typer(
    name="kcnn",
    help="Build, train, compress and ship convolutional networks from YAML recipes.",
    add_completion=False,
    pretty_exceptions_enable=False,
    **HELP,
)
recipe_app = typer.Typer(help="Validate, show and list recipes; print the JSON Schema.", **HELP)
app.add_typer(recipe_app, name="recipe")


def _print_version(value: bool) -> None:
    if value:
        from kcnn import __version__

        typer.echo(f"kcnn {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print kcnn's version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show TensorFlow's, absl's and LiteRT's own log lines and warnings (KCNN_DEBUG=1 also shows tracebacks).")] = False,
):
    """Build, train, compress and ship convolutional networks from YAML recipes."""
    if isinstance(ctx.obj, dict) and ctx.obj.get("silence"):  # the real command line (run())
        quiet.install(verbose)

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="KEY=VALUE",
                 help="Override a recipe key, e.g. --set train.optimizer.lr=0.01 (value is YAML)."),
]


def _exit(code: int):
    """Exit with ``code``; inside a multi-process data_parallel job at once (the other
    processes must see this one go, not wait for it in a collective)."""
    from kcnn.engine.data_parallel import in_multi_process_job, leave_job

    if in_multi_process_job():
        leave_job(code)
    raise typer.Exit(code) from None


def user_errors(fn):
    """Turn KcnnError into one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Interrupted as err:
            if os.environ.get("KCNN_DEBUG") == "1":
                raise
            if err.run_path:  # stdout's last line stays the run dir, as scripts expect
                typer.echo(err.run_path)
            typer.echo(err.message, err=True)
            _exit(err.exit_code)
        except KcnnError as err:
            if os.environ.get("KCNN_DEBUG") == "1":
                raise
            typer.echo(f"error: {err}", err=True)
            _exit(2)
        except JobFailed as err:
            typer.echo(f"error: {err}", err=True)
            _exit(err.exit_code)

    return wrapper


@app.command(short_help="Train a model from a recipe; prints the run dir last.")
@user_errors
def train(
    recipe: Annotated[Optional[str], typer.Argument(metavar="RECIPE", help="Recipe file (or a bundled recipe's name).")] = None,
    set_: SetOption = None,
    run_dir: Annotated[Optional[str], typer.Option("--run-dir", metavar="DIR", help="Write the run here instead of runs/<name>/<time>.")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", metavar="RUN_DIR", help="Continue an interrupted run (or, with --epochs, a finished one).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", metavar="N", help="With --resume: train the run on to N epochs in all.")] = None,
):
    """Train a model from a recipe; prints the run dir on its last line."""
    if resume is None and recipe is None:
        raise KcnnError("give a RECIPE to train, or --resume RUN_DIR")
    if resume is not None and (recipe is not None or set_):
        raise KcnnError("--resume continues a run with its own recipe.yaml; drop RECIPE and --set")
    if epochs is not None and resume is None:
        raise KcnnError("--epochs goes with --resume; for a new run use --set train.epochs=N")
    from kcnn.recipes import load

    parsed = load(recipe, set_) if recipe is not None else None
    if resume is not None:  # check the folder before paying for the TensorFlow import
        from kcnn.engine.rundir import RunDir

        RunDir.open(resume).resume_state()
    from kcnn.engine.train import train as run_training

    path = run_training(parsed, run_dir=run_dir, resume=resume, epochs=epochs)
    typer.echo(str(path))


@app.command(short_help="Evaluate a model; writes metrics.json and a plot.")
@user_errors
def evaluate(
    target: Annotated[str, typer.Argument(metavar="RUN_DIR|MODEL", help="A training run directory, a .keras or a .tflite file.")],
    recipe: Annotated[Optional[str], typer.Option("--recipe", metavar="RECIPE", help="Recipe giving the data (default: the run's).")] = None,
    split: Annotated[Optional[str], typer.Option("--split", metavar="SPLIT", help=f"{listing(SplitName)} (default: the recipe's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
):
    """Evaluate a trained model; writes metrics.json and a confusion-matrix plot."""
    from kcnn.engine.evaluate import evaluate as run_evaluation
    from kcnn.engine.evaluate import format_report

    started = time.time()
    metrics = run_evaluation(target, recipe_path=recipe, split=split)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        typer.echo(format_report(metrics))
        if "written_to" in metrics:
            for plot in _plots_written(Path(metrics["written_to"]).parent / "plots", started):
                typer.echo(f"plot written to {plot}")
            typer.echo(f"metrics written to {metrics['written_to']}")


def _plots_written(folder: Path, since: float) -> list[Path]:
    """The PNGs in ``folder`` that this command wrote (modified after ``since``)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.png") if p.stat().st_mtime >= since)


@app.command(short_help="Convert a run's model for deployment and verify it.")
@user_errors
def export(
    run_dir: Annotated[str, typer.Argument(metavar="RUN_DIR", help="A training run directory.")],
    format_: Annotated[str, typer.Option("--format", metavar="FORMAT", help=f"{listing(ExportFormat)}.")] = "tflite",
    quantize: Annotated[Optional[str], typer.Option("--quantize", metavar="MODE", help=f"{listing(QuantizeMode)} (default: the recipe's export.quantize).")] = None,
    int8_io: Annotated[bool, typer.Option("--int8-io", help="int8 mode: int8 input and output tensors too.")] = False,
    calibration: Annotated[Optional[int], typer.Option("--calibration", metavar="N", help="int8/int16x8: class-balanced training samples for calibration (default: the recipe's, 200).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="int8: fail instead of keeping float-only layers in float.")] = False,
    all_modes: Annotated[bool, typer.Option("--all", help="Export every TFLite mode and write one comparison table.")] = False,
    out: Annotated[Optional[str], typer.Option("--out", metavar="FILE", help="Output path (default: RUN_DIR/exports/<mode>/model.tflite; int8 with --int8-io: exports/int8_io/).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing export.")] = False,
    quant_report: Annotated[bool, typer.Option("--report", help="int8/int16x8: per-layer error against the float model (SNR, cosine; int8: accuracy if a layer stays float) in quant_report.json beside the export; prints the worst layers.")] = False,
    float_layers: Annotated[Optional[str], typer.Option("--float-layers", metavar="REGEX", help="int8: keep the layers whose names match in full in float (e.g. 'conv2_1' or 'logits|conv1_.*').")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", metavar="N", help="Threads for the latency measurement (default 1; LiteRT interpreter, XNNPACK delegate on, as a phone app runs it).")] = None,
):
    """Convert a run's best model and verify the export (accuracy, size, latency, ops)."""
    from kcnn import backend

    if not backend.is_tensorflow():  # only TensorFlow converts; the run itself is portable
        raise typer.Exit(backend.rerun_on_tensorflow(sys.argv[1:]))
    from kcnn.export import api

    reports = api.export_run(run_dir, fmt=format_, quantize=quantize, int8_io=int8_io,
                             calibration=calibration, strict=strict, all_modes=all_modes, out=out,
                             force=force, quant_report=quant_report, float_layers=float_layers,
                             latency_threads=threads)
    if all_modes:
        typer.echo(api.comparison_table(reports))
        typer.echo(f"comparison written to {api.comparison_file(reports[0]['run'])} (and .json)")
        return
    report = reports[0]
    if report["format"] != "tflite":
        typer.echo(f"{report['format']}: {report['file']} ({report['size_bytes'] / 1024:.1f} KiB)")
        return
    baseline = api.float_baseline(report)
    typer.echo(api.comparison_table([report], baseline=baseline))
    typer.echo(f"ops: {', '.join(report['ops'])}")
    if report.get("float_layers"):
        typer.echo(f"kept in float (--float-layers): {', '.join(report['float_layers'])}")
    if "quant_report" in report:
        from kcnn.export.report import format_report

        typer.echo(format_report(report["quant_report"]))
    if baseline is not None:
        typer.echo(f"size and latency compared with the float export {baseline['file']}")
    typer.echo(report["file"])


@recipe_app.command("validate")
@user_errors
def recipe_validate(
    files: Annotated[list[str], typer.Argument(metavar="FILE...", help="Recipe files.")],
    set_: SetOption = None,
    data: Annotated[bool, typer.Option("--data", help="Also check the data: paths exist and every class has at least one image (nothing is decoded).")] = False,
):
    """Check recipes against the schema; one line per problem."""
    from kcnn.errors import DataError, RecipeError
    from kcnn.recipes import load

    failed = False
    for f in files:
        try:
            recipe = load(f, set_)
            note = ""
            if data:
                from kcnn.data.sources import make_source

                try:
                    note = f" (data: {make_source(recipe.data).check()})"
                except DataError as err:
                    raise RecipeError(str(err), file=f) from None
            typer.echo(f"ok: {f}{note}")
        except RecipeError as err:
            failed = True
            typer.echo(f"error: {err}", err=True)
    if failed:
        raise typer.Exit(2)


@recipe_app.command("show", short_help="Print the fully resolved recipe.")
@user_errors
def recipe_show(
    file: Annotated[str, typer.Argument(metavar="FILE", help="Recipe file (or a bundled recipe's name).")],
    set_: SetOption = None,
):
    """Print the fully resolved recipe (extends merged, overrides applied, defaults filled)."""
    from kcnn.recipes import dump, load

    typer.echo(dump(load(file, set_)), nl=False)


@recipe_app.command("schema", short_help="Print the recipe JSON Schema.")
@user_errors
def recipe_schema():
    """Print the recipe JSON Schema (for editor validation and completion)."""
    from kcnn.recipes.schema import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@recipe_app.command("list")
@user_errors
def recipe_list():
    """List the bundled recipes with their one-line descriptions."""
    from kcnn.recipes.load import RECIPES_DIR, describe

    files = sorted(RECIPES_DIR.glob("*.yaml"))
    if not files:
        typer.echo(f"no bundled recipes found in {RECIPES_DIR}")
    width = max((len(f.stem) for f in files), default=0)
    for f in files:
        typer.echo(f"{f.stem:<{width}}  {describe(f)}")


@app.command(short_help="Per-layer shapes, parameters, MACs and receptive field.")
@user_errors
def info(
    target: Annotated[str, typer.Argument(metavar="RECIPE|RUN_DIR|MODEL", help="A recipe (path or bundled name), a run directory, a .keras file or a registered model name.")],
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the analysis as JSON.")] = False,
):
    """Per-layer output shape, parameters, multiply-accumulates and receptive field."""
    from kcnn.models.info import analyze, format_table, load_target

    result = analyze(load_target(target, set_))
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        typer.echo(format_table(result))


@app.command(short_help="Rewrite a trained model (dense head → convolutions).")
@user_errors
def convert(
    target: Annotated[str, typer.Argument(metavar="RUN_DIR", help="A training run directory (or a .keras file).")],
    fully_convolutional: Annotated[bool, typer.Option("--fully-convolutional", help="Rewrite the Flatten → Dense head as an h×w convolution and 1×1 convolutions.")] = False,
    out: Annotated[Optional[str], typer.Option("--out", metavar="FILE", help="Output .keras file (default: RUN_DIR/model_fcn.keras).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
):
    """Convert a trained model; prints the written file on its last line."""
    if not fully_convolutional:
        raise KcnnError("say which conversion: --fully-convolutional")
    from kcnn.models.convert import convert_run

    typer.echo(str(convert_run(target, out, force=force)))


@app.command(short_help="PNGs of filters, feature maps, saliency or top patches.")
@user_errors
def visualize(
    target: Annotated[str, typer.Argument(metavar="RUN_DIR", help="A training run directory (or a .keras file).")],
    filters: Annotated[Optional[list[str]], typer.Option("--filters", metavar="LAYER", help="Draw a convolution's kernels ('first' = the first convolution). Repeatable.")] = None,
    feature_maps: Annotated[Optional[str], typer.Option("--feature-maps", metavar="IMAGE", help="Draw the activation maps of --layer for this image.")] = None,
    layer: Annotated[Optional[list[str]], typer.Option("--layer", metavar="LAYER", help="Layer for --feature-maps. Repeatable.")] = None,
    saliency: Annotated[Optional[str], typer.Option("--saliency", metavar="IMAGE", help="Draw input gradients for the predicted class of this image.")] = None,
    patches: Annotated[Optional[list[str]], typer.Option("--patches", metavar="LAYER", help="Draw the test-image patches that excite each channel of LAYER most. Repeatable.")] = None,
    deconv: Annotated[Optional[list[str]], typer.Option("--deconv", metavar="LAYER", help="Project the strongest activations of LAYER's most active channels back to pixels with a deconvnet (Zeiler & Fergus 2014), beside their image patches. Repeatable.")] = None,
    channels: Annotated[int, typer.Option("--channels", metavar="K", help="--deconv: how many of the layer's most active channels.")] = 9,
    top: Annotated[int, typer.Option("--top", metavar="N", help="--deconv: how many test images per channel (those where it fires most).")] = 9,
    guided: Annotated[bool, typer.Option("--guided", help="--deconv: guided backprop (Springenberg et al. 2015) instead of the deconvnet.")] = False,
    out: Annotated[Optional[str], typer.Option("--out", metavar="DIR", help="Output folder (default: RUN_DIR/plots).")] = None,
):
    """Write PNGs of filters, feature maps, saliency, top patches or deconvnet projections; prints their paths."""
    from kcnn.viz.visualize import visualize as run_visualize

    for path in run_visualize(target, filters=filters or (), feature_maps=feature_maps,
                              layers=layer or (), saliency_image=saliency,
                              patches=patches or (), deconv=deconv or (), channels=channels,
                              top=top, guided=guided, out=out):
        typer.echo(str(path))


compress_app = typer.Typer(
    help="Compress a trained run into a new run dir (pruning, low-rank factorization).",
    short_help="Prune or factorize a trained run into a new run dir.", **HELP)
app.add_typer(compress_app, name="compress")

CompressOut = Annotated[Optional[str], typer.Option(
    "--run-dir", metavar="DIR", help="Write the new run here (default: runs/<name>/<time>-<method>).")]
NoTflite = Annotated[bool, typer.Option(
    "--no-tflite", help="Skip the TFLite size/latency measurements (faster).")]
FinetuneLr = Annotated[Optional[float], typer.Option(
    "--lr", metavar="LR", help="Fine-tuning peak learning rate (default: a third of the recipe's), cosine to 0.")]


@compress_app.command("prune", short_help="Prune: score, remove, fine-tune, repeat.")
@user_errors
def compress_prune(
    run_dir: Annotated[str, typer.Argument(metavar="RUN_DIR", help="A training run directory.")],
    method: Annotated[str, typer.Option("--method", metavar="METHOD", help=f"{listing(PruneMethod)}. filter: remove the filters with the smallest L1 norm and rebuild a thinner model; magnitude: zero the smallest weights.")] = "filter",
    sparsity: Annotated[float, typer.Option("--sparsity", metavar="FRACTION", help="Share of filters (filter) or of each kernel's weights (magnitude) to remove, in (0, 1).")] = 0.5,
    rounds: Annotated[int, typer.Option("--rounds", metavar="N", help="Prune / fine-tune rounds; each removes the same share of what is left.")] = 3,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", metavar="N", help="Fine-tuning epochs after each round.")] = 3,
    criterion: Annotated[str, typer.Option("--criterion", metavar="CRITERION", help=f"{listing(PruneCriterion)}. filter pruning: l1_bn scores the filter with the following BatchNorm folded in, l1 the kernel's own filters.")] = "l1_bn",
    lr: FinetuneLr = None,
    out: CompressOut = None,
    no_tflite: NoTflite = False,
):
    """Prune a trained run: score, remove, fine-tune, repeat; prints before → after."""
    from kcnn.compress.common import comparison_table
    from kcnn.compress.prune import prune_run

    path, report = prune_run(run_dir, method=method, sparsity=sparsity, rounds=rounds,
                             finetune_epochs=finetune_epochs, lr=lr, criterion=criterion,
                             out=out, tflite=not no_tflite)
    typer.echo(comparison_table(report["before"], report["after"]))
    typer.echo(str(path))


@compress_app.command("lowrank", short_help="Factorize Dense and Conv2D layers by truncated SVD.")
@user_errors
def compress_lowrank(
    run_dir: Annotated[str, typer.Argument(metavar="RUN_DIR", help="A training run directory.")],
    energy: Annotated[Optional[float], typer.Option("--energy", metavar="FRACTION", help="Keep the smallest rank whose singular values hold this share of the energy, in (0, 1].")] = None,
    rank: Annotated[Optional[int], typer.Option("--rank", metavar="N", help="A fixed rank for every factorized layer.")] = None,
    mode: Annotated[str, typer.Option("--mode", metavar="MODE", help=f"{listing(LowrankMode)}. How a Conv2D splits: spatial (k×1 then 1×k) or channel (k×k into fewer channels, then 1×1).")] = "spatial",
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", metavar="N", help="Fine-tuning epochs after the factorization.")] = 0,
    lr: FinetuneLr = None,
    out: CompressOut = None,
    no_tflite: NoTflite = False,
):
    """Factorize Dense and Conv2D layers by truncated SVD; prints before → after."""
    from kcnn.compress.common import comparison_table
    from kcnn.compress.lowrank import lowrank_run

    path, report = lowrank_run(run_dir, energy=energy, rank=rank, mode=mode,
                               finetune_epochs=finetune_epochs, lr=lr, out=out,
                               tflite=not no_tflite)
    typer.echo(comparison_table(report["before"], report["after"]))
    typer.echo(str(path))


@compress_app.command("cluster", short_help="Share weights by k-means: scalar or product quantization.")
@user_errors
def compress_cluster(
    run_dir: Annotated[str, typer.Argument(metavar="RUN_DIR", help="A training run directory.")],
    bits: Annotated[int, typer.Option("--bits", metavar="B", help="Index bits, 1 to 8: 2^B shared values (scalar) or sub-vectors (product) per codebook.")] = 4,
    method: Annotated[str, typer.Option("--method", metavar="METHOD", help="scalar or product. scalar: k-means over each kernel's values, linear initialisation (Deep Compression); product: k-means over sub-vectors of D weights (Gong et al. 2014).")] = "scalar",
    subvector: Annotated[Optional[int], typer.Option("--subvector", metavar="D", help="--method product: sub-vector length (default 4); a layer whose input size D does not divide is clustered scalar instead.")] = None,
    layers: Annotated[Optional[str], typer.Option("--layers", metavar="REGEX", help="Cluster the Conv2D, Dense and DepthwiseConv2D layers whose names match in full (default: all).")] = None,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", metavar="N", help="Fine-tuning epochs; a centroid gets the sum of its weights' gradients, so the sharing stays.")] = 3,
    lr: FinetuneLr = None,
    out: CompressOut = None,
    no_tflite: NoTflite = False,
):
    """Share weights by k-means (scalar or product quantization), fine-tune the codebooks, pack them; prints before → after."""
    from kcnn.compress.cluster import cluster_run, cluster_table

    path, report = cluster_run(run_dir, bits=bits, method=method, subvector=subvector,
                               layers=layers, finetune_epochs=finetune_epochs, lr=lr, out=out,
                               tflite=not no_tflite)
    typer.echo(cluster_table(report))
    typer.echo(str(path))


@compress_app.command("qat", short_help="Quantization-aware training for int8 TFLite.")
@user_errors
def compress_qat(
    run_dir: Annotated[str, typer.Argument(metavar="RUN_DIR", help="A training run directory.")],
    epochs: Annotated[int, typer.Option("--epochs", metavar="E", help="Fine-tuning epochs with fake-quantized weights and activations (undone if they cost more than a point of validation accuracy).")] = 3,
    lr: Annotated[Optional[float], typer.Option("--lr", metavar="LR", help="Fine-tuning peak learning rate (default: a tenth of the recipe's), cosine to 0.")] = None,
    out: CompressOut = None,
    no_tflite: NoTflite = False,
):
    """Fold batch norm, fine-tune with int8 fake quantization, keep weights on the int8 grid; prints before → after and the float / fake-quant / int8 TFLite accuracies."""
    from kcnn.compress.common import comparison_table
    from kcnn.compress.qat import format_accuracies, qat_run

    path, report = qat_run(run_dir, epochs=epochs, lr=lr, out=out, tflite=not no_tflite)
    typer.echo(comparison_table(report["before"], report["after"]))
    typer.echo(format_accuracies(report))
    typer.echo(str(path))


bench_app = typer.Typer(help="Measure training throughput.", **HELP)
app.add_typer(bench_app, name="bench")


@bench_app.command("train")
@user_errors
def bench_train(
    recipe: Annotated[str, typer.Argument(metavar="RECIPE", help="Recipe file (or a bundled recipe's name).")],
    steps: Annotated[int, typer.Option("--steps", metavar="N", help="Training steps in all: the warm-up, then the timed steps.")] = 60,
    warmup: Annotated[int, typer.Option("--warmup", metavar="N", help="Steps left out of the timing.")] = 10,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", metavar="N", help="Default: the recipe's.")] = None,
    synthetic: Annotated[bool, typer.Option("--synthetic", help="Random images of the recipe's shape; no data set needed.")] = False,
    compare_plain: Annotated[bool, typer.Option("--compare-plain", help="Also time plain model.fit on NumPy arrays, same process.")] = False,
    set_: SetOption = None,
    out: Annotated[Optional[str], typer.Option("--out", metavar="FILE", help="Write the result as JSON here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
):
    """Training images/s and steps/s of a recipe's model after a warm-up."""
    from kcnn.recipes import load

    parsed = load(recipe, set_)
    from kcnn.bench import bench_train as run_bench
    from kcnn.bench import format_result

    result = run_bench(parsed, steps=steps, warmup=warmup, batch_size=batch_size,
                       synthetic=synthetic, compare_plain=compare_plain)
    if out:
        from kcnn.io import write_json

        write_json(out, result)
    typer.echo(json.dumps(result, indent=2) if as_json else format_result(result))


# Click's exception classes, reached through typer's public BadParameter (typer 0.2x
# vendors its own click, so `import click` would find another copy, or none).
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _usage_message(err) -> str:
    """Click's message in kcnn's style: lower-case start, and where to find the help."""
    text = err.format_message().strip().rstrip(".")
    text = text[:1].lower() + text[1:]
    ctx = getattr(err, "ctx", None)
    if ctx is not None and ctx.help_option_names:
        text += f" (see '{ctx.command_path} {ctx.help_option_names[0]}')"
    return text


def run(args: list[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Usage errors (an unknown option, a missing argument) print one ``error: …`` line,
    like kcnn's own errors, and exit with code 2.
    """
    try:
        # obj: silence the libraries' own log lines (kcnn.quiet) in this process; tests
        # that call `app` in process leave their process as it is.
        code = app(args=args, prog_name="kcnn", standalone_mode=False, obj={"silence": True})
    except _CLICK_ERROR as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # `kcnn`, `kcnn recipe`: the help
            err.show()
        else:
            typer.echo(f"error: {_usage_message(err)}", err=True)
        return err.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    return code if isinstance(code, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
