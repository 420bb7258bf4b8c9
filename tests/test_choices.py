"""One source of truth for every ``type`` name: the registries agree with the recipe schema,
and the command line's choices come from :mod:`kcnn.choices`."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel

from kcnn import choices
from kcnn.recipes import schema as S


def schema_type_names(annotation) -> set[str]:
    """The ``type`` literals of every model in a (possibly Annotated) union."""
    names: set[str] = set()
    args = typing.get_args(annotation) or (annotation,)
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            field = arg.model_fields.get("type")
            if field is not None:
                names.update(typing.get_args(field.annotation))
        elif typing.get_args(arg):
            names |= schema_type_names(arg)
    return names


def _registry(name: str):
    if name == "sources":
        from kcnn.data.sources import SOURCES

        return SOURCES
    if name == "samplers":
        from kcnn.data.samplers import SAMPLERS

        return SAMPLERS
    if name == "optimizers":
        from kcnn.engine.optim import OPTIMIZERS

        return OPTIMIZERS
    if name == "schedules":
        from kcnn.engine.schedules import SCHEDULES

        return SCHEDULES
    if name == "losses":
        import kcnn.losses.basic  # noqa: E401, F401
        import kcnn.losses.cost_matrix
        import kcnn.losses.focal
        import kcnn.losses.logit_adjusted  # noqa: F401
        from kcnn.losses import LOSSES, make_loss  # noqa: F401

        return LOSSES
    from kcnn.export.tflite import QUANTIZE_MODES

    return QUANTIZE_MODES


CASES = {
    "sources": lambda: schema_type_names(S.Source),
    "samplers": lambda: schema_type_names(S.Sampler),
    "optimizers": lambda: schema_type_names(S.Optimizer),
    "schedules": lambda: schema_type_names(S.Schedule),
    "losses": lambda: schema_type_names(S.Train.model_fields["loss"].annotation),
    "quantize": lambda: set(choices.values(choices.QuantizeMode)),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_registry_agrees_with_schema(kind):
    names = CASES[kind]()
    assert names, f"no {kind} names found in the schema"
    assert set(_registry(kind).names()) == names


def test_schema_fields_use_the_shared_choices():
    assert S.Export.model_fields["quantize"].annotation == choices.QuantizeMode
    assert S.Export.model_fields["format"].annotation == choices.ExportFormat
    assert S.Evaluate.model_fields["split"].annotation == choices.Split
    assert S.Distribute.model_fields["strategy"].annotation == choices.Strategy


def test_library_constants_come_from_the_choices():
    from kcnn.compress.filters import CRITERIA
    from kcnn.compress.lowrank import MODES
    from kcnn.compress.prune import METHODS
    from kcnn.engine.distribute import STRATEGIES
    from kcnn.export.api import FORMATS, quantize_modes

    assert METHODS == ("filter", "magnitude") and CRITERIA == ("l1_bn", "l1")
    assert MODES == choices.values(choices.LowrankMode)
    assert STRATEGIES == choices.values(choices.Strategy)
    assert FORMATS == choices.values(choices.ExportFormat)
    assert quantize_modes()[0] == "none" and len(quantize_modes()) == 5


def test_listing_reads_as_prose():
    assert choices.listing(choices.Split) == "train, val or test"
