"""The one place that turns a path into a model: ``RUN_DIR | MODEL.keras | MODEL.tflite``.

Every command that takes a trained model (``evaluate``, ``export``, ``info``,
``visualize``, ``convert``, ``compress``) and every recipe key that names one
(``model.init.from``, ``distill.teacher``) resolves it here, so the rules and
the error for a path that is none of these are the same everywhere.

:func:`resolve` only looks at the file system (no TensorFlow import), so a CLI
command can reject a bad argument before paying for the heavy import;
:meth:`ModelRef.load_model` and :meth:`ModelRef.load_recipe` do the loading.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kcnn.engine.rundir import RunDir
from kcnn.errors import KcnnError, RunDirError

KINDS = ("run", "keras", "tflite")
_NOUNS = {"run": "a run directory", "keras": "a .keras file", "tflite": "a .tflite file"}


def expected(kinds: tuple[str, ...]) -> str:
    """``a run directory, a .keras file or a .tflite file`` for the given kinds."""
    nouns = [_NOUNS[k] for k in kinds]
    return nouns[0] if len(nouns) == 1 else f"{', '.join(nouns[:-1])} or {nouns[-1]}"


@dataclasses.dataclass
class ModelRef:
    """A resolved model path: what kind it is, the model file and the run it belongs to."""

    kind: str  # "run", "keras" or "tflite"
    target: Path  # what the user gave
    model_path: Path  # the model file itself
    run: RunDir | None  # the run dir, or the run a file sits in (RUN/exports/int8/model.tflite)

    @property
    def out_dir(self) -> Path:
        """Where outputs about this model go by default: the run dir, else the file's folder."""
        return self.run.path if self.kind == "run" else self.model_path.parent

    def recipe_path(self, override: str | Path | None = None) -> Path | None:
        if override is not None:
            return Path(override)
        return self.run.recipe if self.run is not None else None

    def load_recipe(self, override: str | Path | None = None, *, required: str | None = None):
        """The recipe of ``--recipe`` or of the run; ``None`` when there is none, unless
        ``required`` says what needs it (then a one-line error)."""
        from kcnn.recipes import load

        path = self.recipe_path(override)
        if path is None:
            if required is None:
                return None
            raise KcnnError(f"{self.target}: --recipe is required {required}")
        return load(path)

    def load_model(self):
        """A ``keras.Model`` (run dir, .keras) or a :class:`~kcnn.export.runtime.TFLiteModel`."""
        if self.kind == "tflite":
            from kcnn.export.runtime import TFLiteModel

            return TFLiteModel(self.model_path)
        return load_keras_model(self.model_path)


def run_of_file(path: Path) -> RunDir | None:
    """The run a model file sits in: ``RUN/model.keras`` or ``RUN/exports/<mode>/model.tflite``."""
    for parent in list(path.parents)[:3]:
        if (parent / "recipe.yaml").is_file() and (parent / "checkpoints").is_dir():
            return RunDir(parent)
    if (path.parent / "recipe.yaml").is_file():
        return RunDir(path.parent)
    return None


def resolve(target: str | Path, kinds: tuple[str, ...] = KINDS) -> ModelRef:
    """What ``target`` is (one of ``kinds``); a :class:`KcnnError` when it is none of them."""
    path = Path(target)
    if path.is_dir():
        kind = "run"
    elif path.suffix in (".keras", ".tflite"):
        kind = path.suffix[1:]
    elif not path.exists():
        what = "run directory" if kinds == ("run",) else "file or directory"
        raise KcnnError(f"{target}: no such {what} (expected {expected(kinds)})")
    else:
        kind = None
    if kind not in kinds:
        what = "a folder" if path.is_dir() else f"a {path.suffix or 'suffix-less'} file"
        raise KcnnError(f"{target}: expected {expected(kinds)} (got {what})")
    if kind == "run":
        run = RunDir.open(path)
        if not run.model.is_file():
            raise RunDirError(f"{target}: run has no model.keras yet (train it first)")
        return ModelRef("run", path, run.model, run)
    if not path.is_file():
        raise KcnnError(f"{target}: model file not found")
    return ModelRef(kind, path, path, run_of_file(path))


def load_keras_model(path: str | Path):
    """Load a ``.keras`` file with every kcnn layer, loss and schedule registered."""
    import keras

    import kcnn.engine.schedules  # noqa: F401  (registers the schedules for deserialization)
    import kcnn.layers  # noqa: F401  (registers the custom layers)
    import kcnn.losses.basic  # noqa: F401  (and the losses)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:
        raise KcnnError(f"{path}: cannot load Keras model ({type(err).__name__}: {err})") from None


def resolve_model_file(path: str | Path, key: str, noun: str = "model", hint: str = "") -> Path:
    """The ``.keras`` file a recipe key names (``model.init.from``, ``distill.teacher``):
    a ``.keras`` file, a run dir, or a folder of runs (the newest finished run, by name).
    Returned absolute, so a run's recipe.yaml records where it came from."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".keras":
        return p.resolve()
    if (p / "model.keras").is_file():
        return (p / "model.keras").resolve()
    if p.is_dir():
        runs = sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")
                      and (c / "model.keras").is_file())
        if runs:
            return (runs[-1] / "model.keras").resolve()
    raise KcnnError(f"{key}: no trained {noun} at {path} (expected a run dir with model.keras, "
                    f"a folder of runs or a .keras file{hint})")


def read_class_names(run: RunDir | None) -> list[str] | None:
    """Class names recorded in a run's metrics.json (``per_class``), if any."""
    import json

    if run is None or not run.metrics.is_file():
        return None
    try:
        per_class: list[dict[str, Any]] = json.loads(run.metrics.read_text()).get("per_class") or []
    except (OSError, ValueError):
        return None
    return [str(row.get("class")) for row in per_class] or None
