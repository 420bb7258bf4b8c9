"""``kcnn compress prune``: the book's four-step loop — score importance, remove,
fine-tune, repeat — with :mod:`kcnn.compress.magnitude` or :mod:`kcnn.compress.filters`.

Rounds: round ``r`` of ``R`` prunes to sparsity ``1 − (1 − s)^(r/R)`` (each
round removes the same share of what is left), then fine-tunes. After every
removal and every fine-tuning the BatchNormalization moving statistics are
re-estimated on one epoch of training batches: removing channels shifts what
reaches each BN layer, and stale statistics (not the surgery) are what ruins
a pruned BN network's inference accuracy.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kcnn.choices import PruneMethod, values
from kcnn.compress import common
from kcnn.compress.filters import CRITERIA, channel_counts, filter_prune
from kcnn.compress.magnitude import (
    apply_masks,
    magnitude_masks,
    mean_sparsity,
    prunable_kernels,
    remove_masks,
    sparsity_of,
)
from kcnn.errors import KcnnError

METHODS = values(PruneMethod)

def round_sparsity(sparsity: float, r: int, rounds: int) -> float:
    """Cumulative sparsity after round ``r`` of ``rounds``: ``1 − (1 − s)^(r/R)``."""
    return 1.0 - (1.0 - sparsity) ** (r / rounds)


def check_options(method: str, sparsity: float, rounds: int, finetune_epochs: int,
                  lr: float | None, criterion: str) -> None:
    """One line per bad option, before anything heavy is loaded."""
    if method not in METHODS:
        raise KcnnError(f"--method: unknown method {method!r}; valid: {', '.join(METHODS)}")
    common.check_fraction(sparsity, "--sparsity")
    if not isinstance(rounds, int) or rounds < 1:
        raise KcnnError(f"--rounds: must be >= 1 (got {rounds})")
    common.check_finetune(finetune_epochs, lr)
    if criterion not in CRITERIA:
        raise KcnnError(f"--criterion: unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")


def prune_run(run_dir: str | Path, *, method: str = "filter", sparsity: float = 0.5,
              rounds: int = 3, finetune_epochs: int = 3, lr: float | None = None,
              criterion: str = "l1_bn", out: str | Path | None = None,
              runs_root: str | Path = "runs", tflite: bool = True, latency_runs: int = 100,
              verbose: int | None = None, log=None) -> tuple[Path, dict[str, Any]]:
    """Prune a trained run into a new run dir; returns ``(run_dir, compress.json content)``.

    Each round: score and remove (``magnitude``: masks; ``filter``: a rebuilt,
    thinner model), re-estimate the BatchNormalization statistics
    (:func:`~kcnn.compress.common.recalibrate_batchnorm`), fine-tune, re-estimate
    them again.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    check_options(method, sparsity, rounds, finetune_epochs, lr, criterion)
    source, before = common.open_and_measure(run_dir, out, tflite=tflite,
                                             latency_runs=latency_runs, log=log)
    settings = {"method": method, "sparsity": sparsity, "rounds": rounds,
                "finetune_epochs": finetune_epochs, "bn_recalibration": True,
                "criterion": criterion if method == "filter" else "magnitude",
                "lr": lr if lr is not None else common.default_lr(source.recipe)}
    info = common.base_info(f"prune-{method}", source, settings)
    pruner = _Pruner(source.model, method, criterion)
    history: list[dict[str, Any]] = []
    round_log: list[dict[str, Any]] = []
    for r in range(1, rounds + 1):
        target = round_sparsity(sparsity, r, rounds)
        detail = pruner.prune(target, first=r == 1)
        raw = common.measure(pruner.model, source, tflite=False)["accuracy"]
        rows, acc, after_acc = common.recalibrate_and_finetune(
            pruner.model, source, finetune_epochs, lr=lr, round_=r, first_epoch=len(history),
            verbose=verbose, log=log,
            what=f"round {r}/{rounds}: sparsity {target:.3f}, accuracy {raw:.4f} pruned, ")
        history += rows
        round_log.append({"round": r, "sparsity": target, "accuracy_pruned_raw": raw,
                          "accuracy_pruned": acc, "accuracy_finetuned": after_acc, **detail})
    model, extra = pruner.finish()
    after = common.measure(model, source, tflite=tflite, latency_runs=latency_runs)
    info.update({"rounds": round_log, "before": before, "after": after,
                 "ratios": common.ratios(before, after), "epochs": len(history), **pruner.report})
    if method == "filter":
        info["channels"] = {n: [pruner.original[n], c] for n, c in channel_counts(model).items()}
    else:
        info["kernel_sparsity"] = sparsity_of(model)
    out = Path(out) if out is not None else common.default_out(source.recipe.name, "prune", runs_root)
    path = common.write_run(out, source, model, info=info, history=history, extra=extra)
    return path, info


class _Pruner:
    """The model being pruned, round by round, by one method."""

    def __init__(self, model, method: str, criterion: str):
        self.model, self.method, self.criterion = model, method, criterion
        self.original = channel_counts(model)
        self.masks: dict[str, np.ndarray] = {}
        self.report: dict[str, Any] = {}

    def prune(self, target: float, first: bool) -> dict[str, Any]:
        """Prune to the cumulative sparsity ``target``; what this round did."""
        if self.method == "magnitude":
            if not prunable_kernels(self.model):
                raise KcnnError("magnitude pruning found no Conv2D/Dense kernels in the model")
            remove_masks(self.model)
            self.masks = magnitude_masks(self.model, target)
            apply_masks(self.model, self.masks)
            return {"kernel_sparsity": mean_sparsity(self.model)}
        keep = {name: max(1, int(round(c * (1.0 - target)))) for name, c in self.original.items()}
        self.model, plan = filter_prune(self.model, keep_counts=keep, criterion=self.criterion)
        if first:
            if not plan.groups:
                why = "; ".join(f"{n}: {w}" for n, w in plan.unprunable.items()) or (
                    "no Conv2D/Dense layers at the top level of the model")
                raise KcnnError(f"filter pruning found no channels it can remove ({why}); "
                                f"try --method magnitude")
            self.report["unprunable"] = plan.unprunable
        return {"removed_channels": plan.removed(), "channels": channel_counts(self.model)}

    def finish(self) -> tuple[Any, dict[str, Any]]:
        """(a plain model: no masks, no optimizer state; extra run files: masks.npz)."""
        extra: dict[str, Any] = {}
        if self.method == "magnitude":
            remove_masks(self.model)
            zeros_ok = all(np.all(np.asarray(var.numpy())[self.masks[key] == 0] == 0)
                           for key, var in prunable_kernels(self.model))
            if not zeros_ok:  # pragma: no cover - the constraint guarantees it
                raise RuntimeError("a masked weight became non-zero during fine-tuning")
            extra["masks.npz"] = _npz_bytes(self.masks)
        return common.plain_copy(self.model), extra


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k.replace("/", "__"): v.astype("uint8") for k, v in arrays.items()})
    return buf.getvalue()


def format_rounds(rounds: Sequence[dict[str, Any]]) -> str:
    lines = ["| round | sparsity | accuracy pruned | accuracy fine-tuned |", "|---|---|---|---|"]
    for r in rounds:
        lines.append(f"| {r['round']} | {r['sparsity']:.3f} | {r['accuracy_pruned']:.4f} | "
                     f"{r['accuracy_finetuned']:.4f} |")
    return "\n".join(lines)
