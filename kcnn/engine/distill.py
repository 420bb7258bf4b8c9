"""Knowledge distillation (Hinton, Vinyals & Dean, 2015): a small student learns from a
trained teacher's softened outputs as well as from the labels.

```
loss = α · T² · KL(softmax(t / T) ‖ softmax(s / T)) + (1 − α) · hard(y, s)
```

``t`` and ``s`` are the teacher's and the student's logits, ``T`` the
temperature and ``hard`` the recipe's own loss (``train.loss``, e.g. cross
entropy with label smoothing). The T² factor keeps the soft term's gradients
on the scale of the hard term's as T changes. Regularization losses of the
student are added unscaled.

A recipe turns it on with a section

```yaml
distill: {teacher: runs/digits_teacher, temperature: 4, alpha: 0.9}
```

``teacher`` is a run dir, a folder of runs (the newest one with a
``model.keras`` is used) or a ``.keras`` file; a relative path is taken from
the working directory. It is checked when training starts (not when the
recipe is validated) and the run's ``recipe.yaml`` records the resolved
absolute path, so ``kcnn train --resume`` uses the same teacher.

Training wraps the student in a :class:`Distiller` (a ``keras.Model`` with a
custom ``compute_loss``). The teacher runs in inference mode, frozen, and is
not part of the Distiller's tracked state: checkpoints hold the student and
the optimizer only, and ``Distiller.save`` writes the student alone, so the
run's ``model.keras`` is the plain student.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
from keras import ops

from kcnn.errors import KcnnError


def resolve_teacher(path: str | Path) -> Path:
    """The teacher's ``.keras`` file: a file, a run dir, or the newest run in a folder of runs."""
    from kcnn.saving import resolve_model_file

    return resolve_model_file(path, "distill.teacher", noun="teacher", hint=(
        "; train the teacher first, or set it with --set distill.teacher=RUN_DIR"))


def distillation_terms(teacher_logits, student_logits, temperature: float):
    """Per-sample ``KL(softmax(t/T) ‖ softmax(s/T))``, computed in float32."""
    t = ops.cast(teacher_logits, "float32") / temperature
    s = ops.cast(student_logits, "float32") / temperature
    log_p = ops.log_softmax(t, axis=-1)
    log_q = ops.log_softmax(s, axis=-1)
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


def distillation_loss(y_true, student_logits, teacher_logits, *, temperature: float,
                      alpha: float, hard_loss=None, sample_weight=None):
    """``α·T²·mean(KL) + (1 − α)·hard(y, s)``; ``hard_loss`` defaults to softmax cross entropy
    on integer labels."""
    kl = distillation_terms(teacher_logits, student_logits, temperature)
    if sample_weight is not None:
        w = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
        soft = ops.sum(kl * w) / ops.cast(ops.shape(kl)[0], "float32")
    else:
        soft = ops.mean(kl)
    if hard_loss is None:
        hard_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    hard = hard_loss(y_true, student_logits, sample_weight=sample_weight)
    return alpha * temperature**2 * soft + (1.0 - alpha) * ops.cast(hard, "float32")


class _Untracked:
    """Holds the teacher out of Keras' attribute tracking (its weights are not the Distiller's)."""

    def __init__(self, model):
        self.model = model


class Distiller(keras.Model):
    """Trains ``student`` against ``teacher``'s soft targets; behaves as the student otherwise.

    Compile it like the student (``loss`` is the hard-label term). ``call``,
    metrics, ``save_weights``/``load_weights`` (with the optimizer) act on the
    student; ``save`` writes the student alone as a ``.keras`` file.
    """

    def __init__(self, student, teacher, temperature: float = 4.0, alpha: float = 0.9, **kwargs):
        super().__init__(name=kwargs.pop("name", f"{student.name}_distiller"), **kwargs)
        if not temperature > 0:
            raise KcnnError(f"distill.temperature: must be > 0 (got {temperature})")
        if not 0 <= alpha <= 1:
            raise KcnnError(f"distill.alpha: must be in [0, 1] (got {alpha})")
        self.student = student
        teacher.trainable = False
        self._teacher = _Untracked(teacher)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.built = True

    @property
    def teacher(self):
        return self._teacher.model

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        hard = self._compile_loss(y, y_pred, sample_weight) if self._compile_loss else 0.0
        kl = distillation_terms(self.teacher(x, training=False), y_pred, self.temperature)
        if sample_weight is not None:
            w = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
            soft = ops.sum(kl * w) / ops.cast(ops.shape(kl)[0], "float32")
        else:
            soft = ops.mean(kl)
        total = self.alpha * self.temperature**2 * soft + (1.0 - self.alpha) * ops.cast(
            hard, "float32")
        for extra in self.losses:  # the student's regularization losses, unscaled
            total = total + ops.cast(self._aggregate_additional_loss(extra), "float32")
        return total

    def save(self, filepath, *args, **kwargs):
        """Save the student (the teacher is only a training aid)."""
        return self.student.save(filepath, *args, **kwargs)

    def get_config(self):
        """A description (TensorBoard logs it); a Distiller itself is never reloaded:
        ``save`` writes the student."""
        return {"name": self.name, "temperature": self.temperature, "alpha": self.alpha,
                "student": keras.saving.serialize_keras_object(self.student)}


def load_teacher(path: str | Path):
    from kcnn.saving import load_keras_model

    return load_keras_model(resolve_teacher(path))


def wrap_student(recipe, student, data) -> tuple[Any, Any]:
    """``(recipe with the teacher's absolute path, Distiller)`` for a recipe with ``distill``.

    Raises a :class:`KcnnError` when the teacher is missing or does not fit the data.
    """
    cfg = recipe.distill
    if len(getattr(student, "outputs", None) or [None]) != 1:
        raise KcnnError("distill: the student must have one output (distillation cannot be "
                        "combined with finetune.co_training)")
    path = resolve_teacher(cfg.teacher)
    teacher = load_teacher(path)
    t_classes = teacher.outputs[0].shape[-1] if getattr(teacher, "outputs", None) else None
    if t_classes != data.num_classes:
        raise KcnnError(
            f"distill.teacher: {path} predicts {t_classes} classes but the student's data has "
            f"{data.num_classes}; the teacher must be trained on the same classes"
        )
    t_shape = tuple(teacher.inputs[0].shape[1:])
    if t_shape != tuple(data.input_shape):
        raise KcnnError(
            f"distill.teacher: {path} takes inputs of shape {t_shape} but the student's data "
            f"has {tuple(data.input_shape)}"
        )
    resolved = recipe.model_copy(update={"distill": cfg.model_copy(update={"teacher": str(path)})})
    return resolved, Distiller(student, teacher, cfg.temperature, cfg.alpha)
