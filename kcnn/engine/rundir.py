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
any moment resumes from the last state it names.
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

    @classmethod
    def create(cls, path: str | Path) -> RunDir:
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise RunDirError(f"{path}: run dir already exists and is not empty (use --resume to continue it)")
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

    def prune_checkpoints(self, keep: str | None) -> None:
        for f in self.checkpoints.glob("epoch-*.weights.h5"):
            if f.name != keep:
                f.unlink(missing_ok=True)
