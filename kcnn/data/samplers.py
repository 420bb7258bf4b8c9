"""Index samplers: which training samples make up each epoch, in which order.

Samplers work on label arrays only (NumPy, O(N) memory, no image copies) and
plug into :mod:`kcnn.data.pipeline`, which gathers the images for each batch.
The pipeline asks for ``num_batches(batch_size)`` once and then for
``batches(epoch, batch_size)`` every epoch; the two always agree.

Determinism contract: the indices of epoch ``e`` depend only on the seed, the
labels and the sampler's state *before* epoch ``e``. ``state_dict()`` after an
epoch is saved in the run's checkpoint, so ``--resume`` continues the same
sequence. Stateless samplers (``shuffle``, ``label_shuffling``) derive
everything from (seed, epoch); the samplers that walk through per-class lists
(``batch_downsample``, ``class_balanced``) keep a cursor per class in their
state and must be drawn in epoch order.

Written with NumPy because imbalanced-learn resamples 2-D arrays once, not a
fresh index stream every epoch.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from kcnn.errors import DataError, RecipeError
from kcnn.registry import Registry

SAMPLERS: Registry[type[IndexSampler]] = Registry("sampler")


class IndexSampler:
    """Base class. Subclasses implement :meth:`epoch_indices` (or :meth:`batches`)."""

    def __init__(self, labels: np.ndarray, num_classes: int, seed: int = 0,
                 class_names: list[str] | None = None):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.class_names = list(class_names) if class_names else [str(c) for c in range(self.num_classes)]
        self.counts = np.bincount(self.labels, minlength=self.num_classes)[: self.num_classes]

    def rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch)])

    def epoch_size(self) -> int:
        return len(self.labels)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def batches(self, epoch: int, batch_size: int) -> list[np.ndarray]:
        """The epoch's indices cut into batches (the last one may be smaller)."""
        idx = self.epoch_indices(epoch)
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]

    def num_batches(self, batch_size: int) -> int:
        return -(-self.epoch_size() // batch_size)

    def num_full_batches(self, batch_size: int) -> int:
        """Batches of exactly ``batch_size`` per epoch (what a drop-remainder pipeline uses)."""
        return self.epoch_size() // batch_size

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def _require_samples(self, classes: np.ndarray, why: str) -> None:
        """DataError naming the first of ``classes`` that has no training sample."""
        empty = [int(c) for c in classes if self.counts[c] == 0]
        if empty:
            names = ", ".join(repr(self.class_names[c]) for c in empty[:5])
            more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
            raise DataError(
                f"data.sampler: {why}, but class {names}{more} has no samples in the training split "
                f"(check data.num_classes and the data, or give it weight 0 in class_probs)"
            )


@SAMPLERS.register("shuffle")
class ShuffleSampler(IndexSampler):
    """A fresh permutation of all training samples every epoch."""

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return self.rng(epoch).permutation(len(self.labels))


# ----------------------------------------------------------------------------- per-class streams
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = (np.uint64(30), np.uint64(0xBF58476D1CE4E5B9), np.uint64(27), np.uint64(0x94D049BB133111EB),
        np.uint64(31))


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective, well-mixed hash of uint64 values.

    ``z`` must be a uint64 *array* (ndim >= 1): array arithmetic wraps around
    silently, where NumPy scalars would warn about the (intended) overflow.
    """
    s1, m1, s2, m2, s3 = _MIX
    z = (z ^ (z >> s1)) * m1
    z = (z ^ (z >> s2)) * m2
    return z ^ (z >> s3)


def _compact(values: np.ndarray, upper: int) -> np.ndarray:
    """Small non-negative ints in the narrowest dtype, so a stable argsort is a radix sort."""
    return values.astype(np.min_scalar_type(max(int(upper), 1)))


class ClassStreams:
    """An endless, seeded stream of sample indices per class.

    Class c's stream is its members in a fresh order for every pass p; the
    order of pass p is a pure function of (seed, c, p), so the stream position
    alone — ``passes[c]`` and ``cursor[c]`` — is the whole state, and a sampler
    rebuilt from that state continues exactly where the old one was. Large
    classes are shuffled by a generator seeded with (seed, c, p); small ones,
    which may go through hundreds of passes in an epoch, are sorted by a
    counter-based hash of (seed, c, p, i), all passes in one vectorised step.
    """

    SMALL = 256  # classes below this size use the vectorised hash

    def __init__(self, labels: np.ndarray, num_classes: int, seed: int, tag: int):
        self.order = np.argsort(labels, kind="stable")
        self.counts = np.bincount(labels, minlength=num_classes)[:num_classes].astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.cursor = np.zeros(num_classes, np.int64)
        self.passes = np.zeros(num_classes, np.int64)
        self._seed = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, tag]
        root = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64) + np.array([tag], np.uint64) * _GOLDEN)
        self._class_keys = _mix64(root ^ (np.arange(num_classes, dtype=np.uint64) * _GOLDEN))
        self._lanes = np.arange(self.SMALL, dtype=np.uint64) * _GOLDEN  # one per member position
        self._cache: dict[int, tuple[int, np.ndarray]] = {}  # class → (pass, its order)

    def members(self, c: int) -> np.ndarray:
        return self.order[self.starts[c] : self.starts[c] + self.counts[c]]

    def _orders(self, c: int, first: int, last: int) -> np.ndarray:
        """Orders of passes first..last of class c, concatenated."""
        members = self.members(c)
        n = len(members)
        cached = self._cache.get(c)
        head = []
        if cached is not None and cached[0] == first:
            head, first = [cached[1]], first + 1
        if first <= last and n >= self.SMALL:
            for p in range(first, last + 1):
                head.append(np.random.default_rng([*self._seed, c, p]).permutation(members))
            self._cache[c] = (last, head[-1])
        elif first <= last:
            row = _mix64(np.arange(first, last + 1, dtype=np.uint64) + self._class_keys[c])
            keys = _mix64(row[:, None] + self._lanes[None, :n])
            block = members[np.argsort(keys, axis=1)]
            self._cache[c] = (last, block[-1])
            head.append(block.ravel())
        return head[0] if len(head) == 1 else np.concatenate(head)

    def take(self, c: int, k: int) -> np.ndarray:
        """The next ``k`` indices of class c's stream (wrapping into new passes as needed)."""
        n = int(self.counts[c])
        if k <= 0:
            return np.empty(0, np.int64)
        if n == 0:
            raise ValueError(f"class {c} has no samples")
        pos0 = int(self.passes[c]) * n + int(self.cursor[c])
        pos1 = pos0 + int(k)
        first, last = pos0 // n, (pos1 - 1) // n
        block = self._orders(c, first, last)
        out = block[pos0 - first * n : pos1 - first * n]
        self.passes[c], self.cursor[c] = divmod(pos1, n)
        return out

    def take_distinct(self, c: int, k: int) -> np.ndarray:
        """The next ``k <= n_c`` indices of class c, all different.

        A window that runs into the next pass skips that pass's copies of the
        samples it has just taken from the end of the old one (they were seen
        moments ago); every sample of pass 0 is still taken within ⌈n_c / k⌉ calls.
        """
        n = int(self.counts[c])
        if not 0 <= k <= n:
            raise ValueError(f"take_distinct needs 0 <= k <= {n} (got {k})")
        p, cur = int(self.passes[c]), int(self.cursor[c])
        if cur + k <= n:
            return self.take(c, k)
        both = self._orders(c, p, p + 1)
        tail, following = both[cur:n], both[n:]
        need = k - len(tail)
        fresh = np.flatnonzero(~np.isin(following, tail))[:need]
        self.passes[c], self.cursor[c] = divmod((p + 1) * n + int(fresh[-1]) + 1, n)
        return np.concatenate([tail, following[fresh]])

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor.tolist(), "pass": self.passes.tolist()}

    def load_state_dict(self, state: dict[str, Any], where: str) -> None:
        cursor, passes = state.get("cursor"), state.get("pass")
        n = len(self.counts)
        if not (isinstance(cursor, list) and isinstance(passes, list) and len(cursor) == n == len(passes)):
            raise DataError(f"{where}: sampler state does not match {n} classes (got {state!r:.80})")
        self.cursor = np.asarray(cursor, np.int64)
        self.passes = np.asarray(passes, np.int64)
        if np.any(self.cursor < 0) or np.any(self.passes < 0) or np.any(
            (self.counts > 0) & (self.cursor >= np.maximum(self.counts, 1))
        ):
            raise DataError(f"{where}: sampler state is out of range (got {state!r:.80})")


# ----------------------------------------------------------------------------- batch_downsample
@SAMPLERS.register("batch_downsample")
class BatchDownsampleSampler(IndexSampler):
    """Batch-level downsampling: no class contributes more than ``cap`` samples to a batch.

    Batches stay full (``batch_size`` samples). With a per-class cap ``m``, an
    epoch of K batches can hold at most f(K) = Σ_c min(n_c, K·m) samples, so the
    epoch has the largest K with f(K) ≥ K·batch_size; each class then gives
    min(n_c, t) samples (±1), t being the water level that fills exactly
    K·batch_size slots (t ≤ K·m). Minority classes give all their samples every
    epoch; majority classes are read from a per-class cursor over a shuffled
    list (reshuffled at the end of each pass), so across
    ``epochs_to_cover(batch_size)`` epochs every sample is seen, and no sample
    appears twice in one epoch.
    The epoch's samples are laid out class by class and dealt to the K batches
    in turn, which keeps every class within ⌈q_c / K⌉ ≤ m per batch.

    When even one full batch is impossible under the cap (few classes, small
    cap), all samples are used every epoch in ⌈n_max / m⌉ smaller batches.

    Args:
        max_per_class: the cap m.
        max_fraction: the cap as a fraction of the batch (m = ⌊fraction · batch_size⌋, ≥ 1).
        Neither: m = ⌈batch_size / classes present⌉, a balanced batch's share.
    """

    def __init__(self, labels, num_classes, seed=0, class_names=None,
                 max_per_class: int | None = None, max_fraction: float | None = None):
        super().__init__(labels, num_classes, seed, class_names)
        if max_per_class is not None and max_fraction is not None:
            raise RecipeError("give max_per_class or max_fraction, not both", key="data.sampler")
        self.max_per_class = max_per_class
        self.max_fraction = max_fraction
        self.streams = ClassStreams(self.labels, self.num_classes, self.seed, tag=1)
        self._plans: dict[int, tuple[int, int, int]] = {}

    def cap(self, batch_size: int) -> int:
        if self.max_per_class is not None:
            return int(self.max_per_class)
        if self.max_fraction is not None:
            return max(1, int(math.floor(self.max_fraction * batch_size + 1e-9)))
        return max(1, -(-batch_size // max(1, int(np.count_nonzero(self.counts)))))

    def plan(self, batch_size: int) -> tuple[int, int, int]:
        """(batches per epoch K, water level t, samples per epoch S) for a batch size."""
        if batch_size not in self._plans:
            n, m, b = self.counts, self.cap(batch_size), int(batch_size)
            total = lambda k: int(np.minimum(n, k * m).sum())  # noqa: E731
            lo, hi = 0, len(self.labels) // b
            while lo < hi:  # total(k) / k never grows with k: find the last k with full batches
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if total(mid) >= mid * b else (lo, mid - 1)
            if lo == 0:  # the cap cannot fill a batch: use everything, in smaller batches
                k = max(1, -(-int(n.max(initial=0)) // m))
                plan = (k, int(n.max(initial=0)), int(n.sum()))
            else:
                k, slots = lo, lo * b
                t_lo, t_hi = 0, k * m  # largest level t with Σ min(n_c, t) ≤ slots
                while t_lo < t_hi:
                    mid = (t_lo + t_hi + 1) // 2
                    t_lo, t_hi = (mid, t_hi) if np.minimum(n, mid).sum() <= slots else (t_lo, mid - 1)
                plan = (k, t_lo, slots)
            self._plans[batch_size] = plan
        return self._plans[batch_size]

    def num_batches(self, batch_size: int) -> int:
        return self.plan(batch_size)[0]

    def num_full_batches(self, batch_size: int) -> int:
        k, _, slots = self.plan(batch_size)
        return k if slots == k * batch_size else 0

    def epochs_to_cover(self, batch_size: int) -> int:
        """Within this many epochs from the start, every training sample has been drawn."""
        _, level, _ = self.plan(batch_size)
        per_epoch = np.minimum(self.counts, level)
        has = self.counts > 0
        return int(np.max(-(-self.counts[has] // per_epoch[has]), initial=1))

    def batches(self, epoch: int, batch_size: int) -> list[np.ndarray]:
        k, level, slots = self.plan(batch_size)
        rng = self.rng(epoch)
        quota = np.minimum(self.counts, level)
        extra = slots - int(quota.sum())
        if extra > 0:  # the last few slots go to randomly chosen classes above the level
            above = np.flatnonzero(self.counts > level)
            quota[rng.choice(above, size=extra, replace=False)] += 1
        classes = rng.permutation(self.num_classes)
        chosen = np.concatenate(
            [self.streams.take_distinct(int(c), int(quota[c])) for c in classes] + [np.empty(0, np.int64)]
        )
        # Deal the class-sorted list to the batches in turn, then shuffle batches and contents.
        batch_of = rng.permutation(k)[(np.arange(len(chosen)) + rng.integers(k)) % k]
        mix = rng.permutation(len(chosen))
        order = mix[np.argsort(_compact(batch_of[mix], k), kind="stable")]
        sizes = np.bincount(batch_of, minlength=k)
        return np.split(chosen[order], np.cumsum(sizes)[:-1])

    def epoch_indices(self, epoch: int, batch_size: int) -> np.ndarray:  # type: ignore[override]
        return np.concatenate(self.batches(epoch, batch_size))

    def epoch_size(self) -> int:
        raise TypeError("batch_downsample's epoch size depends on the batch size: use plan(batch_size), "
                        "num_batches(batch_size) or num_full_batches(batch_size)")

    def state_dict(self) -> dict[str, Any]:
        return self.streams.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.streams.load_state_dict(state, "batch_downsample")


# ----------------------------------------------------------------------------- class_balanced
@SAMPLERS.register("class_balanced")
class ClassBalancedSampler(IndexSampler):
    """Class-aware sampling (Shen et al., "Relay Backpropagation", 2016).

    Every draw picks a class — uniformly, or with ``class_probs`` — and takes
    the next sample of that class's shuffled list; a list is reshuffled when it
    runs out. ``epoch_size`` draws make an epoch (default: N).

    ``progressive``: the class probabilities move from instance-balanced in the
    first epoch to the target in the last, p_c(t) ∝ π_c^(1−a) · q_c^a with
    a = t / (epochs − 1), π_c = n_c / N and q the target (uniform or
    ``class_probs``); with a uniform target this is p_c ∝ n_c^(1−a). Needs
    ``epochs`` (the engine passes ``train.epochs``).
    """

    def __init__(self, labels, num_classes, seed=0, class_names=None,
                 class_probs: list[float] | None = None, epoch_size: int | None = None,
                 progressive: bool = False, epochs: int | None = None):
        super().__init__(labels, num_classes, seed, class_names)
        if class_probs is None:
            target = np.ones(self.num_classes)
        else:
            target = np.asarray(class_probs, dtype=np.float64)
            if target.shape != (self.num_classes,):
                raise RecipeError(
                    f"has {len(target)} entries but the data has {self.num_classes} classes",
                    key="data.sampler.class_probs",
                )
            if np.any(target < 0) or not target.sum() > 0:
                raise RecipeError("needs entries >= 0 with a positive sum", key="data.sampler.class_probs")
        self.target = target / target.sum()
        self._require_samples(np.flatnonzero(self.target > 0), "class_balanced samples every class")
        if progressive and not epochs:
            raise RecipeError("progressive sampling needs the number of epochs (train.epochs)",
                              key="data.sampler.progressive")
        self.progressive = bool(progressive)
        self.epochs = int(epochs) if epochs else None
        self._epoch_size = int(epoch_size) if epoch_size else len(self.labels)
        self.streams = ClassStreams(self.labels, self.num_classes, self.seed, tag=2)

    def epoch_size(self) -> int:
        return self._epoch_size

    def class_probabilities(self, epoch: int) -> np.ndarray:
        if not self.progressive:
            return self.target
        a = min(1.0, epoch / max(1, self.epochs - 1))
        prior = self.counts / self.counts.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            logp = (1 - a) * np.log(prior) + a * np.log(self.target)
        p = np.where(self.target > 0, np.exp(logp - np.max(logp[self.target > 0])), 0.0)
        return p / p.sum()

    def epoch_indices(self, epoch: int) -> np.ndarray:
        rng = self.rng(epoch)
        drawn = rng.choice(self.num_classes, size=self._epoch_size, p=self.class_probabilities(epoch))
        slots = np.argsort(_compact(drawn, self.num_classes), kind="stable")  # grouped by class
        per_class = np.bincount(drawn, minlength=self.num_classes)
        out = np.empty(self._epoch_size, np.int64)
        start = 0
        for c in np.flatnonzero(per_class):
            k = int(per_class[c])
            out[slots[start : start + k]] = self.streams.take(int(c), k)
            start += k
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.streams.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.streams.load_state_dict(state, "class_balanced")


# ----------------------------------------------------------------------------- label_shuffling
@SAMPLERS.register("label_shuffling")
class LabelShufflingSampler(IndexSampler):
    """Label shuffling (类别重组法), redrawn every epoch.

    With the samples sorted by class and M the largest class count: for each
    class c draw randperm(M) and take it modulo n_c to index the class's
    samples, concatenate the classes and shuffle. Each class appears exactly M
    times per epoch and each of its samples ⌊M/n_c⌋ or ⌈M/n_c⌉ times.

    Two equivalences keep it fast (one N and one C·M permutation per epoch):
    the final shuffle makes the order of each class's list irrelevant, and
    randperm(M) mod n_c hits every residue ⌊M/n_c⌋ or ⌈M/n_c⌉ times, so its
    multiset is arange(M) mod n_c. Indexing the class's samples *in a fresh
    random order* with arange(M) mod n_c therefore gives the same lists — and
    which samples get the extra copy is random each epoch rather than always
    the first ones of the sorted list.
    """

    def __init__(self, labels, num_classes, seed=0, class_names=None):
        super().__init__(labels, num_classes, seed, class_names)
        self._require_samples(np.arange(self.num_classes), "label_shuffling resamples every class")
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.largest = int(self.counts.max(initial=0))

    def epoch_size(self) -> int:
        return self.num_classes * self.largest

    def epoch_indices(self, epoch: int) -> np.ndarray:
        rng = self.rng(epoch)
        mix = rng.permutation(len(self.labels))
        by_class = mix[np.argsort(_compact(self.labels[mix], self.num_classes), kind="stable")]
        slot = np.arange(self.largest, dtype=np.int64)
        picks = by_class[self.starts[:, None] + slot[None, :] % self.counts[:, None]]
        return rng.permutation(picks.ravel())


# ----------------------------------------------------------------------------- factory
def make_sampler(config: Any, labels: np.ndarray, num_classes: int, seed: int, *,
                 epochs: int | None = None, class_names: list[str] | None = None) -> IndexSampler:
    """Build the sampler a recipe's ``data.sampler`` section names.

    ``epochs`` (``train.epochs``) reaches the samplers that take it (progressive
    ``class_balanced``); ``class_names`` makes error messages name classes.
    """
    cls = SAMPLERS.get(config.type)
    options = config.model_dump(exclude={"type"}, exclude_none=True)
    if "epochs" in inspect.signature(cls).parameters:
        options["epochs"] = epochs
    return cls(labels, num_classes, seed=seed, class_names=class_names, **options)
