"""The recipe schema: pydantic v2 models, strict (``extra="forbid"``).

A recipe is the single source of truth for a run. Sections that come in
several kinds (data source, sampler, optimizer, schedule, loss) are chosen by a
``type`` key and validated as the model of that kind.

This module never imports TensorFlow or Keras.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from kcnn import choices

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# ----------------------------------------------------------------------------- data
class DigitsSource(Strict):
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes)."""

    type: Literal["digits"]
    resize: PositiveInt | None = Field(None, description="Upsample the 8×8 images to resize×resize.")


class NpzSource(Strict):
    """A NumPy ``.npz`` file with arrays ``x`` (N, H, W[, C]) and ``y`` (N,).

    Optional ``x_val``/``y_val`` and ``x_test``/``y_test`` arrays give the file's own split.
    A relative path is taken relative to the recipe file.
    """

    type: Literal["npz"]
    path: str


OnBadImage = Annotated[Literal["error", "skip"], Field(description=(
    "A file that is not a readable image: error (stop before training, naming it) or skip "
    "(leave it out; the run dir lists it in skipped_images.txt)."))]


class DirectorySource(Strict):
    """One sub-folder per class (``root/<class>/*.png``); ``train/``, ``val/``, ``test/``
    sub-folders, when present, give the folder's own split."""

    type: Literal["directory"]
    path: str
    image_size: tuple[PositiveInt, PositiveInt] = (64, 64)
    color_mode: Literal["rgb", "grayscale"] = "rgb"
    on_bad_image: OnBadImage = "error"


class KerasSource(Strict):
    """A ``keras.datasets`` data set (downloads on first use)."""

    type: Literal["keras"]
    name: Literal["mnist", "fashion_mnist", "cifar10", "cifar100"]


class CsvSource(Strict):
    """A CSV table with one row per image: the image file, its label and optional
    per-sample cost and split columns.

    Classification labels may be integers or class names (names are sorted to give
    the class indices). Under ``data.task: regression`` the label column(s) hold the
    float targets. Image paths are relative to ``root`` (default: the CSV's folder).
    """

    type: Literal["csv"]
    path: str
    image_column: str = "image"
    label_column: str | list[str] = Field(
        "label", description="Label column; regression: one column or a list of target columns."
    )
    weight_column: str | None = Field(
        None, description="Per-sample cost (sample weight, >= 0) multiplied into the loss."
    )
    split_column: str | None = Field(
        None, description="Column with train/val/test per row: the file's own split."
    )
    root: str | None = Field(None, description="Folder image paths are relative to (default: the CSV's).")
    image_size: tuple[PositiveInt, PositiveInt] = (64, 64)
    color_mode: Literal["rgb", "grayscale"] = "rgb"
    on_bad_image: OnBadImage = "error"


Source = Annotated[
    Union[DigitsSource, NpzSource, DirectorySource, KerasSource, CsvSource],
    Field(discriminator="type"),
]


class Split(Strict):
    """Stratified train/val/test split, used when the source has no split of its own.

    The test part is split off first, then val from the rest. ``seed`` is separate
    from the training seed so the test set stays the same when you vary the latter.
    """

    val: Fraction = 0.1
    test: Fraction = 0.25
    seed: int = 0


FRACTION_PATTERN = r"^\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*/\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*$"


def _parse_fraction(value: Any) -> Any:
    """``"1/255"`` → 1/255; anything else is left for the field's own validation."""
    if isinstance(value, str):
        m = re.fullmatch(FRACTION_PATTERN, value)
        if m and float(m.group(3)) != 0:
            return float(m.group(1)) / float(m.group(3))
    return value


# A positive number, or a fraction written as text ("1/255"): what the loader accepts.
Rescale = Annotated[
    PositiveFloat,
    WithJsonSchema({
        "anyOf": [
            {"type": "number", "exclusiveMinimum": 0},
            {"type": "string", "pattern": FRACTION_PATTERN, "description": "A fraction, e.g. 1/255."},
        ]
    }),
]


class Preprocess(Strict):
    """Baked into the model's first layers, so exports take raw pixels."""

    rescale: Rescale | None = Field(None, description="Multiply pixels by this, e.g. 1/255.")
    standardize: bool = Field(
        True, description="Per-channel mean/std, computed on the training split only."
    )
    stats_samples: PositiveInt = Field(10_000, description=(
        "standardize: the statistics come from at most this many training images "
        "(a fixed seeded sample when the split is larger)."))

    _fraction = field_validator("rescale", mode="before")(_parse_fraction)


class Augment(Strict):
    """Random augmentation of training batches (seeded by seed, epoch and batch)."""

    crop_padding: Annotated[int, Field(ge=0)] = Field(
        0, description="Pad by this many pixels, then crop back at a random offset."
    )
    flip: bool = Field(False, description="Random horizontal flip.")
    translate: Fraction = Field(0.0, description="Random shift, as a fraction of height/width.")
    rotate: Annotated[float, Field(ge=0, le=180)] = Field(
        0.0, description="Random rotation range in degrees (±)."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.crop_padding or self.flip or self.translate or self.rotate)


class ShuffleSampler(Strict):
    """A fresh seeded permutation of the training set every epoch."""

    type: Literal["shuffle"]


class BatchDownsampleSampler(Strict):
    """Batch-level downsampling: no class may fill more than a cap of any batch.

    Batches stay full; the cap decides how many batches an epoch has. Majority
    classes are taken from a per-class cursor that rotates through a shuffled
    list, so across epochs every sample is still seen (none is dropped for good).
    Without ``max_per_class``/``max_fraction`` the cap is ⌈batch_size / classes⌉.
    """

    type: Literal["batch_downsample"]
    max_per_class: PositiveInt | None = Field(None, description="At most this many samples of one class per batch.")
    max_fraction: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="At most this fraction of a batch from one class (at least 1 sample)."
    )

    @model_validator(mode="after")
    def _one_cap(self):
        if self.max_per_class is not None and self.max_fraction is not None:
            raise ValueError("give max_per_class or max_fraction, not both")
        return self


class ClassBalancedSampler(Strict):
    """Class-aware sampling (Shen et al., Relay BP, 2016): draw a class (uniformly, or by
    ``class_probs``), then the next sample of that class's shuffled list.

    ``progressive: true`` moves from instance-balanced sampling in the first epoch to
    class-balanced sampling in the last: p_c(t) ∝ π_c^(1−t/T) · q_c^(t/T), where π is
    the training class frequency, q the target (uniform or ``class_probs``), t the
    epoch and T the last epoch's index.
    """

    type: Literal["class_balanced"]
    class_probs: list[NonNegFloat] | None = Field(
        None, description="Per-class sampling weights (normalised); default: uniform."
    )
    epoch_size: PositiveInt | None = Field(None, description="Samples per epoch; default: the training split size.")
    progressive: bool = Field(False, description="Go from instance- to class-balanced over the epochs.")

    @field_validator("class_probs")
    @classmethod
    def _some_mass(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not sum(v) > 0:
            raise ValueError(f"needs at least one positive entry (got {v})")
        return v


class LabelShufflingSampler(Strict):
    """Label shuffling (类别重组法): every class is resampled to the largest class's
    count M (randperm(M) mod n_c), then everything is shuffled; redrawn every epoch."""

    type: Literal["label_shuffling"]


Sampler = Annotated[
    Union[ShuffleSampler, BatchDownsampleSampler, ClassBalancedSampler, LabelShufflingSampler],
    Field(discriminator="type"),
]


class LongTail(Strict):
    """Make the training split long-tailed (val and test stay untouched).

    ``exp``: n_c = n_max · ratio^(−c/(C−1)) for class index c; ``step``: the last
    ⌊C/2⌋ classes keep n_max / ratio samples, the others n_max. Which samples stay
    is drawn with ``seed``.
    """

    ratio: Annotated[float, Field(ge=1)] = Field(10.0, description="n_max / n_min.")
    profile: Literal["exp", "step"] = "exp"
    seed: int = 0


class Data(Strict):
    """Where the images come from and how they are split, sampled and augmented.

    ``task: regression`` takes float targets (npz ``y`` of shape (N,) or (N, k), or
    CSV target columns) instead of class labels: the split is random rather than
    stratified, the model's head has one linear output per target, the loss is
    ``mse`` and evaluation reports mse, rmse, mae and r2.
    """

    task: Literal["classification", "regression"] = "classification"
    source: Source
    split: Split = Split()
    preprocess: Preprocess = Preprocess()
    augment: Augment = Augment()
    sampler: Sampler = ShuffleSampler(type="shuffle")
    cache: Literal["none", "memory", "disk"] = Field("none", description=(
        "Decoded images of file-backed sources (directory, csv): none = decode every epoch "
        "(flat memory), memory = decode once into RAM, disk = decode once into a cache file "
        "reused across epochs and runs."))
    cache_dir: str | None = Field(None, description=(
        "Folder of the disk cache (default: $KCNN_CACHE_DIR, else ~/.cache/kcnn)."))
    classes: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="Keep only these classes (relabelled 0..k-1 in this order), in every split."
    )
    samples_per_class: PositiveInt | None = Field(
        None, description="Keep at most this many training samples per class (seeded by split.seed)."
    )
    long_tail: LongTail | None = Field(
        None, description="Subsample the training split into a long-tailed one (for experiments)."
    )
    num_classes: PositiveInt | None = Field(
        None, description="Number of classes; inferred from the labels when omitted."
    )


# ----------------------------------------------------------------------------- model
def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"not a valid regular expression: {value!r} ({err})") from None
    return value


Regex = Annotated[str, AfterValidator(_check_regex)]


class WarmStart(Strict):
    """Load weights from a trained model into every matching layer of the same name and shape."""

    from_: str = Field(alias="from", description="A run dir, a folder of runs (newest wins) or a .keras file.")
    layers: Regex = Field(".*", description="Regex (full match) of layer names to load.")
    skip_mismatch: bool = Field(True, description="Leave layers whose shapes differ freshly initialised.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


def _name_or_layers(schema: dict[str, Any]) -> None:
    """JSON Schema: ``name`` is required unless ``layers`` is given (the loader implies it)."""
    schema["required"] = [r for r in schema.get("required", []) if r != "name"]
    if not schema["required"]:
        del schema["required"]
    schema["anyOf"] = [{"required": ["name"]}, {"required": ["layers"]}]


class ModelSpec(BaseModel):
    """``name`` picks a registered builder; every other key is passed to it.

    ``num_classes`` and ``input_shape`` default to the data's. A model given as
    ``layers: [...]`` without a ``name`` uses the ``layers`` builder.

    Under ``extends`` and ``--set``, a different ``name`` replaces the base's whole
    ``model`` section (its architecture arguments and ``init``) instead of merging
    into it, as a different ``type`` does for typed sections.
    """

    model_config = ConfigDict(extra="allow", json_schema_extra=_name_or_layers)

    name: str
    init: WarmStart | None = Field(None, description="Warm start from a trained model.")

    @model_validator(mode="before")
    @classmethod
    def _layers_imply_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data and "layers" in data:
            return {"name": "layers", **data}
        return data

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


# ----------------------------------------------------------------------------- train
class DepthScaled(Strict):
    """Layer-wise lr factor growing linearly with depth (the book: deep slightly above shallow)."""

    shallow: NonNegFloat = 0.1
    deep: NonNegFloat = 1.0


class _OptimizerBase(Strict):
    lr: PositiveFloat = Field(1e-3, description="Peak learning rate (after warm-up).")
    weight_decay: NonNegFloat = Field(
        0.0, description="Decoupled weight decay; biases and normalisation weights are excluded."
    )
    clipnorm: PositiveFloat | None = None
    lr_multipliers: dict[Regex, NonNegFloat] | None = Field(
        None, description="Layer-name regex → lr factor (0 keeps a layer still but trainable)."
    )
    depth_scaled: DepthScaled | None = Field(
        None, description="lr factor interpolated from the shallowest to the deepest layer."
    )


class SGD(_OptimizerBase):
    type: Literal["sgd"]
    lr: PositiveFloat = 0.01
    momentum: Fraction = 0.0
    nesterov: bool = False


class Adagrad(_OptimizerBase):
    type: Literal["adagrad"]
    lr: PositiveFloat = 0.01


class Adadelta(_OptimizerBase):
    type: Literal["adadelta"]
    lr: PositiveFloat = 1.0
    rho: Fraction = 0.95


class RMSProp(_OptimizerBase):
    type: Literal["rmsprop"]
    rho: Fraction = 0.9
    momentum: Fraction = 0.0


class Adam(_OptimizerBase):
    type: Literal["adam"]
    beta_1: Fraction = 0.9
    beta_2: Fraction = 0.999
    epsilon: PositiveFloat = 1e-7


class AdamW(Adam):
    type: Literal["adamw"]  # type: ignore[assignment]
    weight_decay: NonNegFloat = 1e-4


Optimizer = Annotated[
    Union[SGD, Adagrad, Adadelta, RMSProp, Adam, AdamW], Field(discriminator="type")
]


class _ScheduleBase(Strict):
    warmup_epochs: NonNegFloat = Field(0.0, description="Linear warm-up from 0 to lr.")


class ConstantSchedule(_ScheduleBase):
    type: Literal["constant"]


class StepSchedule(_ScheduleBase):
    """Multiply the lr by ``factor`` at each boundary (in epochs)."""

    type: Literal["step"]
    boundaries: list[PositiveFloat]
    factor: Annotated[float, Field(gt=0, le=1)] = 0.1

    @field_validator("boundaries")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"must be strictly increasing (got {v})")
        return v


class ExponentialSchedule(_ScheduleBase):
    """lr · decay_rate^(epoch / decay_epochs), smoothly per step."""

    type: Literal["exponential"]
    decay_rate: Annotated[float, Field(gt=0, le=1)] = 0.9
    decay_epochs: PositiveFloat = 1.0


class CosineSchedule(_ScheduleBase):
    """Cosine decay from lr to lr·alpha over the epochs after warm-up."""

    type: Literal["cosine"]
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.0


Schedule = Annotated[
    Union[ConstantSchedule, StepSchedule, ExponentialSchedule, CosineSchedule],
    Field(discriminator="type"),
]


_WEIGHT_RULES = ("balanced", "effective_number")


def _class_weight_spec(value: Any) -> Any:
    """A per-class weight list, ``balanced`` or ``effective_number``; one clear message otherwise."""
    if value is None or value in _WEIGHT_RULES:
        return value
    if isinstance(value, str):
        raise ValueError(f"must be a list of per-class weights, 'balanced' or 'effective_number' (got {value!r})")
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"must be a non-empty list of per-class weights, 'balanced' or 'effective_number' (got {value!r})")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"weights must be finite numbers >= 0 (got {v!r})")
    if not any(v > 0 for v in value):
        raise ValueError("needs at least one positive weight")
    return [float(v) for v in value]


ClassWeights = Union[list[NonNegFloat], Literal["balanced", "effective_number"], None]
Beta = Annotated[Union[Annotated[float, Field(ge=0, lt=1)], None], Field(
    description="effective_number only: β in (1−β)/(1−β^n_c); default 0.999."
)]


def _check_beta(model: Any, rule: Any) -> Any:
    if model.beta is not None and rule != "effective_number":
        raise ValueError("beta is only used with 'effective_number' weights")
    return model


class CrossEntropyLoss(Strict):
    """Softmax cross-entropy on integer labels, optionally weighted per class.

    ``class_weights``: a list (one per class), ``balanced`` (N / (C·n_c), as scikit-learn's
    ``compute_class_weight``) or ``effective_number`` ((1−β)/(1−β^n_c), Cui et al. 2019,
    normalised to sum to C). Counts come from the training split.
    """

    type: Literal["cross_entropy"]
    label_smoothing: Fraction = 0.0
    class_weights: ClassWeights = None
    beta: Beta = None

    _weights = field_validator("class_weights", mode="before")(_class_weight_spec)

    @model_validator(mode="after")
    def _beta(self):
        return _check_beta(self, self.class_weights)


MAX_COST_CSV_BYTES = 16 << 20  # a 1000-class matrix is about 5 MB of text


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_cost_csv(path: str) -> list[list[float]]:
    """The rows of a cost-matrix CSV (``#`` lines are comments). Every problem is a
    one-line ValueError naming the file; pydantic reports it at ``train.loss.matrix``."""
    import csv
    import io

    from kcnn.errors import RecipeError
    from kcnn.recipes.yamlio import read_text

    try:
        text = read_text(path, path, max_bytes=MAX_COST_CSV_BYTES)
    except RecipeError as err:
        if err.message == "file not found":
            raise ValueError(f"cost matrix file not found: {path}") from None
        raise ValueError(f"cost matrix file {path}: {err.message}") from None
    rows = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            cells = [c.strip() for c in row if c.strip()]
            if not cells or cells[0].startswith("#"):
                continue
            try:
                rows.append([float(c) for c in cells])
            except ValueError:
                bad = next(c for c in cells if not _is_float(c))
                raise ValueError(
                    f"{path}: line {reader.line_num}: non-numeric cell {bad[:40]!r} "
                    f"in row {len(rows) + 1}"
                ) from None
    except csv.Error as err:
        raise ValueError(f"{path}: line {reader.line_num}: not a valid CSV file ({err})") from None
    return rows


def _cost_matrix(value: Any) -> Any:
    """Inline K×K list, or a CSV path (read here, so the resolved recipe holds the numbers)."""
    if isinstance(value, str):
        value = _read_cost_csv(value)
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(r, (list, tuple)) for r in value):
        raise ValueError(f"must be a K×K list of lists or a CSV file path (got {value!r})")
    k = len(value)
    widths = [len(r) for r in value]
    if any(w != k for w in widths):
        raise ValueError(f"must be square: {k} rows with {widths} entries")
    for i, row in enumerate(value):
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"entry [{i}][{j}] must be a finite number (got {v!r})")
            if v < 0:
                raise ValueError(f"entries must be >= 0 (got {v} at [{i}][{j}])")
            if i == j and v != 0:
                raise ValueError(f"the diagonal must be 0: a correct prediction costs nothing (got {v} at [{i}][{i}])")
    return [[float(v) for v in row] for row in value]


class CostMatrixLoss(Strict):
    """Expected misclassification cost: loss = Σ_j softmax(z)_j · C[y, j] + λ · CE.

    ``matrix`` is K×K with C[y, y] = 0 and C ≥ 0 (row: true class, column: predicted
    class), inline or a CSV file (relative to the recipe file, else the working
    directory). ``cross_entropy_weight`` is λ.
    """

    type: Literal["cost_matrix"]
    matrix: Union[list[list[NonNegFloat]], str]
    cross_entropy_weight: NonNegFloat = 0.0

    _matrix = field_validator("matrix", mode="before")(_cost_matrix)


class FocalLoss(Strict):
    """Focal loss (Lin et al. 2017): −α_y · (1 − p_y)^γ · log p_y.

    ``alpha``: per-class weights as for ``cross_entropy.class_weights`` (a list,
    ``balanced`` or ``effective_number``); none by default.
    """

    type: Literal["focal"]
    gamma: NonNegFloat = 2.0
    alpha: ClassWeights = None
    beta: Beta = None

    _alpha = field_validator("alpha", mode="before")(_class_weight_spec)

    @model_validator(mode="after")
    def _beta(self):
        return _check_beta(self, self.alpha)


class LogitAdjustedLoss(Strict):
    """Logit-adjusted cross-entropy (Menon et al. 2020): CE(z + τ·log π, y), π the
    training class prior. ``post_hoc: true`` trains with plain cross-entropy instead
    and subtracts τ·log π from the logits when kcnn evaluates. ``tune_tau: true`` (post
    hoc only) then picks τ from 0, 0.25, …, 3 by the validation split's balanced
    accuracy after training, and writes it into the run's recipe."""

    type: Literal["logit_adjusted"]
    tau: NonNegFloat = 1.0
    post_hoc: bool = False
    tune_tau: bool = Field(
        False, description="post_hoc: choose tau on the validation split after training."
    )

    @model_validator(mode="after")
    def _tune_needs_post_hoc(self):
        if self.tune_tau and not self.post_hoc:
            raise ValueError("tune_tau needs post_hoc: true (τ is tuned on the trained model's logits)")
        return self


class SquaredErrorLoss(Strict):
    """Mean squared error (``l2`` is an alias). Integer labels are one-hot encoded
    and compared with the softmax output (l2 loss for classification); float
    targets are compared with the raw output (regression)."""

    type: Literal["mse", "l2"]


Loss = Annotated[
    Union[CrossEntropyLoss, SquaredErrorLoss, CostMatrixLoss, FocalLoss, LogitAdjustedLoss],
    Field(discriminator="type"),
]


class EarlyStopping(Strict):
    patience: PositiveInt = 10
    min_delta: NonNegFloat = 0.0


class Callbacks(Strict):
    early_stopping: EarlyStopping | None = None
    tensorboard: bool = True


class GradualUnfreeze(Strict):
    """Train the top ``start_top`` weighted layers, then one more every ``every`` epochs."""

    start_top: PositiveInt = 1
    every: PositiveInt = 1

    def trainable_top(self, epoch: int) -> int:
        return self.start_top + epoch // self.every


class Train(Strict):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    optimizer: Optimizer = Adam(type="adam")
    schedule: Schedule = ConstantSchedule(type="constant")
    loss: Loss = CrossEntropyLoss(type="cross_entropy")
    callbacks: Callbacks = Callbacks()
    monitor: Literal["val_accuracy", "val_loss"] = Field(
        "val_accuracy", description="Validation metric that picks the best model."
    )
    deterministic: bool = Field(
        True, description="Deterministic TensorFlow ops: same seed, same metrics on CPU."
    )
    verbose: Literal[0, 1, 2] | None = Field(
        None, description="Keras progress output; default: a bar on a terminal, a line per epoch otherwise."
    )
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "float32", description="Keras dtype policy; the classifier's logits stay float32."
    )
    freeze: list[Regex] = Field(
        default_factory=list, description="Regexes (full match) of layer names to freeze."
    )
    freeze_depth: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="Freeze this shallowest fraction of the weighted layers."
    )
    trainable_top: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Freeze all but the top N weighted layers."
    )
    unfreeze: GradualUnfreeze | None = Field(
        None, description="Unfreeze from the top down on a schedule of epochs."
    )


# ----------------------------------------------------------------------------- evaluate / export
class Evaluate(Strict):
    split: choices.Split = "test"
    plots: bool = True


class Export(Strict):
    format: choices.ExportFormat = "tflite"
    quantize: choices.QuantizeMode = "none"
    calibration: PositiveInt = 200


# ----------------------------------------------------------------------------- distribution
class Distribute(Strict):
    """Train on more devices or machines; the recipe is otherwise unchanged.

    ``train.batch_size`` is the global batch, split evenly across replicas (it must
    divide by their number). ``data_parallel`` (JAX backend) is
    ``keras.distribution.DataParallel`` over every device of every process; a
    multi-process job takes its settings from Keras' environment variables
    (``KERAS_DISTRIBUTION_JOB_ADDRESSES``, ``_NUM_PROCESSES``, ``_PROCESS_ID``), else
    from the keys below. ``mirrored`` and ``multi_worker`` are ``tf.distribute``
    strategies (TensorFlow backend); ``multi_worker`` reads the cluster from ``TF_CONFIG``.
    """

    strategy: choices.Strategy = "none"
    devices: list[str] | None = Field(
        None, description="mirrored: devices to use, e.g. ['/gpu:0', '/gpu:1'] (default: all GPUs, else the CPU)."
    )
    tpu: str | None = Field(None, description="tpu: TPU name or grpc:// address ('' = local).")
    job_addresses: str | None = Field(
        None, description="data_parallel: 'host:port' of process 0 (the coordinator), or every "
                          "process's address, comma-separated (KERAS_DISTRIBUTION_JOB_ADDRESSES wins).")
    num_processes: int | None = Field(
        None, ge=1, description="data_parallel: processes in the job (KERAS_DISTRIBUTION_NUM_PROCESSES wins).")
    process_id: int | None = Field(
        None, ge=0, description="data_parallel: this process, 0 .. num_processes-1; best set per "
                                "process by the launcher (KERAS_DISTRIBUTION_PROCESS_ID wins). "
                                "Not saved in the run's recipe.")
    timeout: float = Field(
        120.0, gt=0, le=3600, description="data_parallel: seconds to wait for the other processes "
                                          "at start-up, and for a silent process before the job stops.")


# ----------------------------------------------------------------------------- fine-tuning
class CoTraining(Strict):
    """Co-train on the source samples nearest to the target data (book ch. 11).

    Source and target samples are embedded with the warm-start model's ``layer``;
    the ``neighbours`` nearest source samples of each target sample form the source
    subset, learnt by a second head with weight ``weight`` next to the target head.
    """

    source: Source
    classes: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="Keep only these source classes (relabelled 0..k-1)."
    )
    neighbours: PositiveInt = 5
    layer: str = Field(description="Name of the (shallow) layer whose output is the embedding.")
    weight: Annotated[float, Field(ge=0)] = 0.5


class Finetune(Strict):
    """The book's four fine-tuning cases, expanded into ``train`` settings on load:

    * ``head_only`` (little, similar data): ``train.trainable_top: 1``.
    * ``top_k``: ``train.trainable_top: k``.
    * ``full`` (plenty of data): everything trains, ``optimizer.depth_scaled: {shallow: 0.1, deep: 1}``.
    * ``gradual`` (little, dissimilar data): ``train.unfreeze: {start_top: 1, every: every}``.

    Settings the recipe gives explicitly are kept.
    """

    strategy: Literal["head_only", "top_k", "full", "gradual"] = "full"
    k: PositiveInt = Field(2, description="top_k: how many top weighted layers train.")
    every: PositiveInt = Field(2, description="gradual: epochs between two unfreezing steps.")
    co_training: CoTraining | None = None


# ----------------------------------------------------------------------------- distillation
class Distill(Strict):
    """Knowledge distillation: loss = α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·train.loss.

    ``teacher`` is a run dir, a folder of runs (the newest is used) or a ``.keras``
    file; it is checked when training starts, so a recipe validates without it.
    """

    teacher: str = Field(description="Teacher run dir, folder of runs (newest wins) or .keras file.")
    temperature: PositiveFloat = Field(4.0, description="Softmax temperature T of the soft targets.")
    alpha: Annotated[float, Field(ge=0, le=1)] = Field(
        0.9, description="Weight α of the soft (teacher) term; 1 − α goes to the labels."
    )


# ----------------------------------------------------------------------------- recipe
class Recipe(Strict):
    """A whole recipe. ``extends`` is resolved by the loader before validation."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    description: str = ""
    seed: int = 0
    data: Data
    model: ModelSpec
    train: Train = Train()
    evaluate: Evaluate = Evaluate()
    export: Export = Export()
    finetune: Finetune | None = None
    distribute: Distribute = Distribute()
    distill: Distill | None = None
    versions: dict[str, str] | None = Field(
        None, description="Written by kcnn into a run's recipe.yaml; ignored on input."
    )


    @model_validator(mode="after")
    def _regression_defaults(self) -> Recipe:
        """Under ``data.task: regression`` an unset loss is ``mse`` and an unset monitor
        ``val_loss`` (conflicting explicit settings are reported by the loader)."""
        if self.data.task != "regression":
            return self
        explicit = self.train.model_fields_set
        if "loss" not in explicit:
            self.train.loss = SquaredErrorLoss(type="mse")
        if "monitor" not in explicit:
            self.train.monitor = "val_loss"
        return self

    @model_validator(mode="after")
    def _expand_finetune(self) -> Recipe:
        ft, train = self.finetune, self.train
        if ft is None:
            return self
        explicit = train.model_fields_set
        if ft.strategy == "head_only" and "trainable_top" not in explicit:
            train.trainable_top = 1
        elif ft.strategy == "top_k" and "trainable_top" not in explicit:
            train.trainable_top = ft.k
        elif ft.strategy == "gradual" and "unfreeze" not in explicit:
            train.unfreeze = GradualUnfreeze(start_top=1, every=ft.every)
        elif ft.strategy == "full" and train.optimizer.depth_scaled is None:
            train.optimizer.depth_scaled = DepthScaled(shallow=0.1, deep=1.0)
        return self


# Names of each ``type``-selected section, for error messages and registry checks.
SECTION_KINDS = {
    "source": "data source",
    "sampler": "sampler",
    "optimizer": "optimizer",
    "schedule": "schedule",
    "loss": "loss",
}


def _members(annotation: Any) -> tuple[Any, ...]:
    """The members of a (possibly Annotated, possibly Optional) union, or the annotation."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def _literals(annotation: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` annotation (through Annotated/Optional/unions of Literals)."""
    values: list[Any] = []
    for member in _members(annotation):
        if typing.get_origin(member) is Literal:
            values.extend(v for v in typing.get_args(member) if v not in values)
    return tuple(values)


def type_names(section: Any) -> tuple[str, ...]:
    """The ``type`` names a typed section accepts, in declaration order — the one
    source of truth for registries and the CLI.

    ``section`` is a discriminated union (``Optimizer``, ``Schedule``, ``Sampler``,
    ``Loss``, ``Source``) or one model class with a ``type`` field::

        >>> type_names(Schedule)
        ('constant', 'step', 'exponential', 'cosine')
        >>> type_names(SquaredErrorLoss)
        ('mse', 'l2')

    For plain ``Literal`` fields (``Distribute.strategy``, ``Export.quantize``) use
    :func:`literal_values`.
    """
    names: list[str] = []
    for cls in _members(section):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel) and "type" in cls.model_fields):
            raise TypeError(f"{cls!r} is not a section chosen by a 'type' key")
        names.extend(n for n in _literals(cls.model_fields["type"].annotation) if n not in names)
    return tuple(names)


def literal_values(model: type[BaseModel], field: str) -> tuple[Any, ...]:
    """The allowed values of a ``Literal`` field, e.g. ``literal_values(Export, "quantize")``
    → ``('none', 'dynamic', 'float16', 'int8', 'int16x8')``."""
    if field not in model.model_fields:
        raise KeyError(f"{model.__name__} has no field {field!r}")
    values = _literals(model.model_fields[field].annotation)
    if not values:
        raise TypeError(f"{model.__name__}.{field} is not a Literal field")
    return values


# ----------------------------------------------------------------------------- JSON Schema
_DEFS = "#/$defs/"
_PARTIAL = "Partial"


def _partial(node: Any, keyword: bool = True) -> Any:
    """A relaxed copy of a JSON Schema fragment: nothing is required, and a typed
    section may leave out its ``type`` (it comes from the base recipe), so ``oneOf``
    becomes ``anyOf``. References point at the relaxed definitions."""
    if isinstance(node, list):
        return [_partial(v) for v in node]
    if not isinstance(node, dict):
        return node
    if not keyword:  # the keys of "properties"/"$defs" are names, not keywords
        return {k: _partial(v) for k, v in node.items()}
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in ("required", "discriminator"):
            continue
        if k == "$ref" and isinstance(v, str) and v.startswith(_DEFS):
            out[k] = _DEFS + _PARTIAL + v[len(_DEFS):]
        elif k in ("properties", "patternProperties", "$defs"):
            out[k] = _partial(v, keyword=False)
        else:
            out["anyOf" if k == "oneOf" else k] = _partial(v)
    return out


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) for recipe files, full and partial alike.

    A recipe without ``extends`` must be complete: it is checked against the
    strict ``$defs/Recipe`` (``name``, ``data.source``, ``model.name`` … required;
    each typed section needs its ``type``). A recipe with ``extends`` is partial:
    it is checked against relaxed definitions (``$defs/Partial*``) in which
    nothing is required, since the bases supply the rest. Unknown keys and bad
    values are errors in both. The top-level ``properties`` are the relaxed ones,
    so editors complete keys either way; ``if``/``else`` adds the strict check.
    """
    strict = Recipe.model_json_schema()
    defs = strict.pop("$defs")
    strict["properties"]["versions"]["description"] = (
        "Written by kcnn into a run's recipe.yaml (package versions); not needed in your recipes."
    )
    if "Recipe" in defs:  # pragma: no cover - a schema class named Recipe would clash
        raise RuntimeError("a $defs entry is already called Recipe")
    defs["Recipe"] = strict
    partial_defs = {_PARTIAL + name: _partial(d) for name, d in defs.items()}
    for name, d in partial_defs.items():
        d["title"] = f"{d.get('title', name[len(_PARTIAL):])} (partial)"
    extends = {
        "description": "Base recipe(s), relative to this file, deep-merged under this one; "
                       "a recipe with extends may leave out anything its bases give.",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }
    top = partial_defs.pop(_PARTIAL + "Recipe")
    top["properties"]["extends"] = extends
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "kcnn recipe",
        "description": (strict.get("description", "") + " Without extends a recipe must be "
                        "complete; with extends, its bases supply what it leaves out."),
        "type": "object",
        "properties": top["properties"],
        "additionalProperties": False,
        "if": {"required": ["extends"]},
        "else": {"$ref": _DEFS + "Recipe"},
        "$defs": {**defs, **partial_defs},
    }
