"""The closed sets of names that recipes and the command line share.

One definition each: the recipe schema annotates its fields with these
``Literal`` types, the CLI lists them in ``--help``, the libraries check
against them, and ``tests/test_choices.py`` checks that every registry agrees.
Standard library only, so ``kcnn --help`` stays light.
"""

from __future__ import annotations

from typing import Literal, get_args

Split = Literal["train", "val", "test"]
ExportFormat = Literal["tflite", "saved_model", "keras"]
QuantizeMode = Literal["none", "dynamic", "float16", "int8", "int16x8"]
Strategy = Literal["none", "data_parallel", "mirrored", "multi_worker", "tpu"]
PruneMethod = Literal["filter", "magnitude"]
PruneCriterion = Literal["l1_bn", "l1"]
LowrankMode = Literal["spatial", "channel"]
ClusterMethod = Literal["scalar", "product"]


def values(choice) -> tuple[str, ...]:
    """The names of a ``Literal`` type, in their declared order."""
    return tuple(get_args(choice))


def listing(choice) -> str:
    """``a, b or c`` for help texts."""
    names = values(choice)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
