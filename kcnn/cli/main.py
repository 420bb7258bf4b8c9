"""``kcnn`` command-line interface.

Only typer, the standard library and :mod:`kcnn.errors` are imported at module
level: ``kcnn --help`` must not pay for TensorFlow. Each command imports its
engine inside the function body.

User errors (:class:`~kcnn.errors.KcnnError`) print one line to stderr and exit
with code 2; set ``KCNN_DEBUG=1`` to see their tracebacks.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Annotated, Optional

import typer

from kcnn.errors import KcnnError

app = typer.Typer(
    name="kcnn",
    help="Build, train, compress and ship convolutional networks from YAML recipes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
recipe_app = typer.Typer(help="Validate, show and list recipes; print the JSON Schema.",
                         no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="KEY=VALUE",
                 help="Override a recipe key, e.g. --set train.optimizer.lr=0.01 (value is YAML)."),
]


def user_errors(fn):
    """Turn KcnnError into one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            return fn(*args, **kwargs)
        except KcnnError as err:
            if os.environ.get("KCNN_DEBUG") == "1":
                raise
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def train(
    recipe: Annotated[Optional[str], typer.Argument(help="Recipe file (or a bundled recipe's name).")] = None,
    set_: SetOption = None,
    run_dir: Annotated[Optional[str], typer.Option("--run-dir", help="Write the run here instead of runs/<name>/<time>.")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", metavar="RUN_DIR", help="Continue an interrupted run.")] = None,
):
    """Train a model from a recipe; prints the run dir on its last line."""
    if resume is None and recipe is None:
        raise KcnnError("give a RECIPE to train, or --resume RUN_DIR")
    if resume is not None and (recipe is not None or set_):
        raise KcnnError("--resume continues a run with its own recipe.yaml; drop RECIPE and --set")
    from kcnn.recipes import load

    parsed = load(recipe, set_) if recipe is not None else None
    from kcnn.engine.train import train as run_training

    path = run_training(parsed, run_dir=run_dir, resume=resume)
    typer.echo(str(path))


@app.command()
@user_errors
def evaluate(
    target: Annotated[str, typer.Argument(help="RUN_DIR, MODEL.keras or MODEL.tflite.")],
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="Recipe giving the data (default: the run's).")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="train, val or test (default: the recipe's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
):
    """Evaluate a trained model; writes metrics.json and a confusion-matrix plot."""
    if split is not None and split not in ("train", "val", "test"):
        raise KcnnError(f"--split: must be train, val or test (got {split!r})")
    from kcnn.engine.evaluate import evaluate as run_evaluation
    from kcnn.engine.evaluate import format_report

    metrics = run_evaluation(target, recipe_path=recipe, split=split)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        typer.echo(format_report(metrics))
        if "written_to" in metrics:
            typer.echo(f"metrics written to {metrics['written_to']}")


@recipe_app.command("validate")
@user_errors
def recipe_validate(
    files: Annotated[list[str], typer.Argument(help="Recipe files.")],
    set_: SetOption = None,
):
    """Check recipes against the schema; one line per problem."""
    from kcnn.errors import RecipeError
    from kcnn.recipes import load

    failed = False
    for f in files:
        try:
            load(f, set_)
            typer.echo(f"ok: {f}")
        except RecipeError as err:
            failed = True
            typer.echo(f"error: {err}", err=True)
    if failed:
        raise typer.Exit(2)


@recipe_app.command("show")
@user_errors
def recipe_show(
    file: Annotated[str, typer.Argument(help="Recipe file.")],
    set_: SetOption = None,
):
    """Print the fully resolved recipe (extends merged, overrides applied, defaults filled)."""
    from kcnn.recipes import dump, load

    typer.echo(dump(load(file, set_)), nl=False)


@recipe_app.command("schema")
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


def main() -> None:
    """Console-script entry point."""
    app(prog_name="kcnn")


if __name__ == "__main__":
    sys.exit(main())
