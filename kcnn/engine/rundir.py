"""The run directory: where a training run keeps everything it writes.

```
runs/<name>/<timestamp>/
  recipe.yaml          resolved recipe + versions
  model.keras          best model by the validation metric
  checkpoints/         state.json + the last epoch's weights (model + optimizer)
  history.csv          one row per completed epoch
  metrics.json         evaluation on the test split
  preprocess.json      statistics computed on the training split
  plots/               curves.png, confusion_matrix.png
  tensorboard/         TensorBoard logs
```

``checkpoints/state.json`` is the commit point of an epoch: it is written
(atomically) only after the weights it names are complete, so a run killed at
any moment resumes from the last state it names. The two most recent epochs
are kept (``epoch-NNNN.weights.h5`` with its own ``epoch-NNNN.state.json``): a
damaged latest checkpoint makes ``--resume`` fall back to the one before.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from kcnn.errors import RunDirError
from kcnn.io import write_json

STATE_VERSION = 1


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # paths
    recipe = property(lambda self: self.path / "recipe.yaml")
    model = property(lambda self: self.path / "model.keras")
    checkpoints = property(lambda self: self.path / "checkpoints")
    state_file = property(lambda self: self.path / "checkpoints" / "state.json")
    history = property(lambda self: self.path / "history.csv")
    metrics = property(lambda self: self.path / "metrics.json")
    preprocess = property(lambda self: self.path / "preprocess.json")
    plots = property(lambda self: self.path / "plots")
    tensorboard = property(lambda self: self.path / "tensorboard")

    def metrics_for(self, split: str) -> Path:
        return self.metrics if split == "test" else self.path / f"metrics_{split}.json"

    @staticmethod
    def new_path(name: str, root: str | Path = "runs") -> Path:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(root) / name / stamp
        path, n = base, 1
        while path.exists():
            path, n = base.with_name(f"{stamp}-{n}"), n + 1
        return path

    @staticmethod
    def check_new(path: str | Path) -> None:
        """Refuse a run dir that exists and is not empty (before anything is started)."""
        path = Path(path)
        if path.is_dir() and any(path.iterdir()):
            raise RunDirError(f"{path}: run dir already exists and is not empty (use --resume to continue it)")
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path}: exists and is not a directory")

    @classmethod
    def create(cls, path: str | Path) -> RunDir:
        path = Path(path)
        cls.check_new(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "checkpoints").mkdir(exist_ok=True)
        (path / "plots").mkdir(exist_ok=True)
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run; raises :class:`RunDirError` if ``path`` is not one."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirError(f"{path}: no such run directory")
        if not run.recipe.is_file():
            raise RunDirError(f"{path}: not a kcnn run (no recipe.yaml)")
        return run

    def is_trainable(self) -> bool:
        return self.state_file.is_file()

    def read_state(self) -> dict[str, Any]:
        if not self.state_file.is_file():
            raise RunDirError(f"{self.path}: not a resumable kcnn run (no checkpoints/state.json)")
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunDirError(f"{self.state_file}: unreadable checkpoint state ({err})") from None
        if state.get("version") != STATE_VERSION:
            raise RunDirError(f"{self.state_file}: unsupported checkpoint version {state.get('version')}")
        ckpt = state.get("checkpoint")
        if ckpt and not (self.checkpoints / ckpt).is_file():
            raise RunDirError(f"{self.state_file}: names missing checkpoint {ckpt}")
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        write_json(self.state_file, {"version": STATE_VERSION, **state})

    def remove_stale_temp_files(self) -> None:
        """Delete temp files a killed process left behind (never trusted, only clutter)."""
        for f in self.path.rglob(".*.tmp*"):
            if f.is_file():
                f.unlink(missing_ok=True)

    def epoch_state_file(self, epoch: int) -> Path:
        """The state saved with the checkpoint of ``epoch`` (1-based: epochs done)."""
        return self.checkpoints / f"epoch-{epoch:04d}.state.json"

    def prune_checkpoints(self, keep_last: int = 2) -> None:
        """Delete all but the ``keep_last`` most recent epochs' weights and states."""
        epochs = sorted({int(f.name[6:10]) for f in self.checkpoints.glob("epoch-*.*")
                         if f.name[6:10].isdigit()})
        for epoch in epochs[:-keep_last] if keep_last else epochs:
            for f in self.checkpoints.glob(f"epoch-{epoch:04d}.*"):
                f.unlink(missing_ok=True)

    def resume_state(self) -> tuple[dict[str, Any], str | None]:
        """The newest state whose checkpoint is intact, and a note when that is not the
        latest (``state.json`` or its weights damaged): ``(state, note or None)``."""
        candidates: list[tuple[str, Any]] = [("state.json", self.state_file)]
        candidates += [(f.name, f) for f in sorted(self.checkpoints.glob("epoch-*.state.json"),
                                                   reverse=True)]
        problems = []
        for name, path in candidates:
            state, why = self._usable_state(path)
            if state is not None:
                note = None
                if problems:
                    note = (f"{self.path}: {'; '.join(problems)}; resuming from the previous "
                            f"checkpoint (epoch {state.get('epoch', 0)})")
                return state, note
            if why:
                problems.append(f"{name}: {why}")
        if not self.state_file.is_file():
            raise RunDirError(f"{self.path}: not a resumable kcnn run (no checkpoints/state.json)")
        raise RunDirError(f"{self.path}: no usable checkpoint ({'; '.join(problems)})")

    def _usable_state(self, path: Path) -> tuple[dict[str, Any] | None, str | None]:
        if not path.is_file():
            return None, None
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            return None, f"unreadable ({type(err).__name__})"
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return None, "unsupported checkpoint state"
        ckpt = state.get("checkpoint")
        if ckpt:
            why = weights_problem(self.checkpoints / ckpt)
            if why:
                return None, f"{ckpt} {why}"
        return state, None


def weights_problem(path: Path) -> str | None:
    """None when ``path`` is a readable Keras weights file, else what is wrong with it."""
    if not path.is_file():
        return "is missing"
    try:
        import h5py

        with h5py.File(path, "r") as f:
            def read(name, obj):
                if isinstance(obj, h5py.Dataset):
                    obj[()]

            f.visititems(read)
    except Exception as err:  # noqa: BLE001 - any failure to read means damaged
        return f"is damaged ({type(err).__name__})"
    return None
