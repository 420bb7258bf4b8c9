"""The recipe schema: pydantic v2 models, strict (``extra="forbid"``).

A recipe is the single source of truth for a run. Sections that come in
several kinds (data source, sampler, optimizer, schedule, loss) are chosen by a
``type`` key and validated as the model of that kind.

This module never imports TensorFlow or Keras.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class DirectorySource(Strict):
    """One sub-folder per class (``root/<class>/*.png``); ``train/``, ``val/``, ``test/``
    sub-folders, when present, give the folder's own split."""

    type: Literal["directory"]
    path: str
    image_size: tuple[PositiveInt, PositiveInt] = (64, 64)
    color_mode: Literal["rgb", "grayscale"] = "rgb"


class KerasSource(Strict):
    """A ``keras.datasets`` data set (downloads on first use)."""

    type: Literal["keras"]
    name: Literal["mnist", "fashion_mnist", "cifar10", "cifar100"]


Source = Annotated[
    Union[DigitsSource, NpzSource, DirectorySource, KerasSource], Field(discriminator="type")
]


class Split(Strict):
    """Stratified train/val/test split, used when the source has no split of its own.

    The test part is split off first, then val from the rest. ``seed`` is separate
    from the training seed so the test set stays the same when you vary the latter.
    """

    val: Fraction = 0.1
    test: Fraction = 0.25
    seed: int = 0


def _parse_fraction(value: Any) -> Any:
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.]+)\s*/\s*([0-9.]+)\s*", value)
        if m and float(m.group(2)) != 0:
            return float(m.group(1)) / float(m.group(2))
    return value


class Preprocess(Strict):
    """Baked into the model's first layers, so exports take raw pixels."""

    rescale: PositiveFloat | None = Field(None, description="Multiply pixels by this, e.g. 1/255.")
    standardize: bool = Field(
        True, description="Per-channel mean/std, computed on the training split only."
    )

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


Sampler = Annotated[Union[ShuffleSampler], Field(discriminator="type")]


class Data(Strict):
    source: Source
    split: Split = Split()
    preprocess: Preprocess = Preprocess()
    augment: Augment = Augment()
    sampler: Sampler = ShuffleSampler(type="shuffle")
    num_classes: PositiveInt | None = Field(
        None, description="Number of classes; inferred from the labels when omitted."
    )


# ----------------------------------------------------------------------------- model
class ModelSpec(BaseModel):
    """``name`` picks a registered builder; every other key is passed to it.

    ``num_classes`` and ``input_shape`` default to the data's.
    """

    model_config = ConfigDict(extra="allow")

    name: str

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


# ----------------------------------------------------------------------------- train
class _OptimizerBase(Strict):
    lr: PositiveFloat = Field(1e-3, description="Peak learning rate (after warm-up).")
    weight_decay: NonNegFloat = Field(
        0.0, description="Decoupled weight decay; biases and normalisation weights are excluded."
    )
    clipnorm: PositiveFloat | None = None


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


class CrossEntropyLoss(Strict):
    """Softmax cross-entropy on integer labels."""

    type: Literal["cross_entropy"]
    label_smoothing: Fraction = 0.0


class SquaredErrorLoss(Strict):
    """Mean squared error (``l2`` is an alias). Integer labels are one-hot encoded
    and compared with the softmax output (l2 loss for classification); float
    targets are compared with the raw output (regression)."""

    type: Literal["mse", "l2"]


Loss = Annotated[Union[CrossEntropyLoss, SquaredErrorLoss], Field(discriminator="type")]


class EarlyStopping(Strict):
    patience: PositiveInt = 10
    min_delta: NonNegFloat = 0.0


class Callbacks(Strict):
    early_stopping: EarlyStopping | None = None
    tensorboard: bool = True


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


# ----------------------------------------------------------------------------- evaluate / export
class Evaluate(Strict):
    split: Literal["train", "val", "test"] = "test"
    plots: bool = True


class Export(Strict):
    format: Literal["tflite", "saved_model", "keras"] = "tflite"
    quantize: Literal["none", "dynamic", "float16", "int8", "int16x8"] = "none"
    calibration: PositiveInt = 200


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
    versions: dict[str, str] | None = Field(
        None, description="Written by kcnn into a run's recipe.yaml; ignored on input."
    )


# Names of each ``type``-selected section, for error messages and registry checks.
SECTION_KINDS = {
    "source": "data source",
    "sampler": "sampler",
    "optimizer": "optimizer",
    "schedule": "schedule",
    "loss": "loss",
}


def type_names(union: Any) -> list[str]:
    """The ``type`` tags of a discriminated union, e.g. ``type_names(Optimizer)``."""
    inner = union.__origin__ if hasattr(union, "__metadata__") else union
    names: list[str] = []
    for cls in inner.__args__:
        names.extend(cls.model_fields["type"].annotation.__args__)
    return names


def json_schema() -> dict[str, Any]:
    """JSON Schema for recipe files (adds the loader's ``extends`` key)."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "kcnn recipe"
    schema["properties"]["extends"] = {
        "description": "Base recipe(s), relative to this file, deep-merged under this one.",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }
    schema["properties"].pop("versions", None)
    schema["required"] = []  # a recipe that extends another may omit any section
    return schema
