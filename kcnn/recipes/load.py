"""Recipe loading: strict YAML → ``extends`` merge → ``--set`` overrides → Recipe.

Every problem becomes a :class:`~kcnn.errors.RecipeError` whose lines read
``recipes/x.yaml: train.optimizer.lr: must be > 0 (got -1)``; a problem with a
value that a ``--set`` item gave is blamed on it:
``--set train.optimizer.lr=-1: train.optimizer.lr: must be > 0 (got -1)``.
YAML is read by :mod:`kcnn.recipes.yamlio` (duplicate keys, alias bombs and
binary files are refused).

No TensorFlow or Keras import happens here.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kcnn.errors import RecipeError
from kcnn.recipes import schema as S
from kcnn.recipes import yamlio
from kcnn.registry import did_you_mean


def _recipes_dir() -> Path:
    """The bundled recipes: ``kcnn/recipes/bundled/`` in an installed wheel (setup.py maps
    the top-level ``recipes/`` folder there at build time), the top-level folder itself
    in a source tree or an editable install."""
    here = Path(__file__).resolve().parent
    packaged = here / "bundled"
    return packaged if packaged.is_dir() else here.parents[1] / "recipes"


RECIPES_DIR = _recipes_dir()


# ----------------------------------------------------------------------------- YAML
def _mapping(data: Any, shown: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a mapping (got {type(data).__name__})", file=shown)
    return data


def _read_yaml(path: Path, shown: str) -> dict[str, Any]:
    """A recipe file through the strict reader (:mod:`kcnn.recipes.yamlio`)."""
    return _mapping(yamlio.read(path, shown), shown)


def _parse_yaml(text: str, shown: str) -> dict[str, Any]:
    return _mapping(yamlio.parse(text, shown), shown)


# ----------------------------------------------------------------------------- merging
def _selector(at: tuple[str, ...], section: dict[str, Any]) -> tuple[str, Any]:
    """The key that says what kind of thing a section is, and its value (or None).

    ``model`` is selected by ``name`` (a ``layers:`` list without a name means the
    ``layers`` builder); every other section by ``type``.
    """
    if at == ("model",):
        return "name", section.get("name", "layers" if "layers" in section else None)
    return "type", section.get("type")


def _selects_other(at: tuple[str, ...], old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when ``new`` names a different kind than ``old`` (so it replaces ``old``)."""
    key, before = _selector(at, old)
    return key in new and before is not None and new[key] != before


def deep_merge(base: dict[str, Any], over: dict[str, Any], _at: tuple[str, ...] = ()) -> dict[str, Any]:
    """Merge ``over`` into a copy of ``base``: mappings merge key by key, anything
    else is replaced.

    A section that names a different kind than the base's replaces the base's
    section whole instead of merging into it: a different ``type`` (``adam``
    options make no sense for ``sgd``), and a different ``model.name`` (the base
    model's architecture arguments, ``filters`` say, mean nothing to another
    builder; ``model.init`` goes too, as a warm start from the old architecture
    rarely fits the new one). Repeat what you want to keep.
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        old = out.get(key)
        at = (*_at, str(key))
        if isinstance(old, dict) and isinstance(value, dict) and not _selects_other(at, old, value):
            out[key] = deep_merge(old, value, at)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _shown(path: Path) -> str:
    """A path as the user should see it: relative to the working dir when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _resolve_extends(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    shown = _shown(path)
    real = path.resolve()
    if real in chain:
        cycle = " -> ".join(_shown(p) for p in (*chain[chain.index(real) :], real))
        raise RecipeError(f"extends cycle: {cycle}", file=_shown(chain[-1]), key="extends")
    data = _read_yaml(path, shown)
    bases = data.pop("extends", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RecipeError(f"must be a path or a list of paths (got {bases!r})", shown, "extends")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = (path.parent / base)
        if not base_path.exists():
            raise RecipeError(f"base recipe not found: {base}", file=shown, key="extends")
        merged = deep_merge(merged, _resolve_extends(base_path, (*chain, real)))
    return deep_merge(merged, data)


# ----------------------------------------------------------------------------- --set
def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.optimizer.lr=0.01"`` → (["train", "optimizer", "lr"], 0.01)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"expected key.path=value (got {item!r})", file="--set")
    value = yamlio.parse(raw, f"--set {item.strip()}") if raw.strip() else None
    return key.split("."), value


def _under(key: str, section: str) -> bool:
    """``key`` is ``section`` or inside it (dotted paths; ``""`` is the whole recipe)."""
    return not section or key == section or key.startswith(section + ".")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> tuple[dict, dict[str, str]]:
    """Apply ``--set KEY=VALUE`` items left to right.

    Returns the new dict and, for blame, the dotted keys the overrides set, each
    mapped to its ``KEY=VALUE`` text. Setting a section's selector to a different
    kind (``train.optimizer.type=sgd``, ``model.name=resnet20``) replaces that
    section as a different kind does under ``extends`` (see :func:`deep_merge`);
    values earlier ``--set`` items put into it are kept.
    """
    data = copy.deepcopy(data)
    set_keys: dict[str, str] = {}
    for item in overrides:
        path, value = parse_override(item)
        shown = f"--set {item.strip()}"
        key = ".".join(path)
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise RecipeError(
                    f"{'.'.join(path[: i + 1])} is not a section (it is {nxt!r})",
                    file=shown,
                    key=key,
                )
            node = nxt
        parent, last = tuple(path[:-1]), path[-1]
        old = node.get(last)
        if isinstance(value, dict) and isinstance(old, dict) and not _selects_other(tuple(path), old, value):
            node[last] = deep_merge(old, value, tuple(path))
        elif parent and _selector(parent, node)[0] == last and _selects_other(parent, node, {last: value}):
            section = ".".join(parent)
            kept = {k: v for k, v in node.items()
                    if any(_under(f"{section}.{k}", s) or _under(s, f"{section}.{k}") for s in set_keys)}
            node.clear()
            node.update(kept)
            node[last] = value
            set_keys.setdefault(section, item.strip())
        else:
            node[last] = value
        set_keys[key] = item.strip()
    return data, set_keys


def _origin(key: str, file: str, set_keys: dict[str, str] | list[str]) -> str:
    """Who to blame for a problem at dotted ``key``: the ``--set`` item that set it
    (or the section around it), else the recipe file."""
    items = set_keys if isinstance(set_keys, dict) else {k: k for k in set_keys}
    best = max((k for k in items if _under(key, k)), key=len, default=None)
    if best is None and key:  # a problem with a section that a --set item went into
        best = next((k for k in items if k.startswith(key + ".")), None)
    if best is None:
        return file
    return f"--set {items[best]}" if "=" in items[best] else "--set"


# ----------------------------------------------------------------------------- errors
def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated/list wrappers down to a model class or a union."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) == 1:
                annotation = args[0]
            else:
                return annotation
        else:
            return annotation


def _clean_loc(loc: tuple, data: Any) -> tuple[list[str], type[BaseModel] | None]:
    """Drop discriminator tags from a pydantic error location.

    Returns the dotted key parts and the model class that owns the last key.
    """
    parts: list[str] = []
    model: Any = S.Recipe
    owner: type[BaseModel] | None = S.Recipe
    node = data
    i = 0
    while i < len(loc):
        item = loc[i]
        parts.append(str(item))
        owner = model if isinstance(model, type) and issubclass(model, BaseModel) else None
        field = owner.model_fields.get(item) if owner and isinstance(item, str) else None
        node = node.get(item) if isinstance(node, dict) else None
        model = _unwrap(field.annotation) if field else None
        if typing.get_origin(model) in (typing.Union, types.UnionType) and i + 1 < len(loc):
            tag = loc[i + 1]
            for cls in typing.get_args(model):
                if isinstance(cls, type) and issubclass(cls, BaseModel):
                    if tag in typing.get_args(cls.model_fields["type"].annotation):
                        model = cls
                        i += 1  # skip the tag
                        break
        i += 1
    return parts, owner


def _fmt_value(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


_COMPARE = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _message(err: dict[str, Any], parts: list[str], owner: type[BaseModel] | None) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = f" (got {_fmt_value(err.get('input'))})"
    if kind in _COMPARE:
        sym, key = _COMPARE[kind]
        bound = ctx[key]
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"must be {sym} {bound}{got}"
    if kind == "extra_forbidden":
        valid = sorted(owner.model_fields) if owner else []
        return f"unknown key{did_you_mean(parts[-1], valid)}; valid keys: {', '.join(valid)}"
    if kind == "union_tag_invalid":
        what = S.SECTION_KINDS.get(parts[-1], parts[-1])
        expected = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        return (
            f"unknown {what} {ctx.get('tag')!r}{did_you_mean(str(ctx.get('tag')), expected)}; "
            f"valid names: {', '.join(expected)}"
        )
    if kind == "union_tag_not_found":
        what = S.SECTION_KINDS.get(parts[-1], parts[-1])
        return f"missing 'type' naming the {what}"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}{got}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}{got}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    msg = err["msg"]
    return msg[0].lower() + msg[1:] + got


def _validation_error(exc: ValidationError, data: dict, file: str, set_keys: dict[str, str]):
    lines = []
    for err in exc.errors():
        parts, owner = _clean_loc(err["loc"], data)
        key = ".".join(parts)
        origin = _origin(key, file, set_keys)
        lines.append(str(RecipeError(_message(err, parts, owner), file=origin, key=key or None)))
    return RecipeError("\n".join(lines))


# ----------------------------------------------------------------------------- checks
def check_model(recipe: S.Recipe, file: str) -> None:
    """Model name and arguments against the registry (without importing Keras)."""
    from kcnn import models

    spec = recipe.model
    try:
        params = models.builder_params(spec.name)
    except Exception as err:  # KcnnError from the registry
        raise RecipeError(str(err), file=file, key="model.name") from None
    for key in spec.kwargs:
        if key not in params:
            raise RecipeError(
                f"unknown argument for model {spec.name!r}{did_you_mean(key, params)}; "
                f"valid: {', '.join(params)}",
                file=file,
                key=f"model.{key}",
            )
    from kcnn.errors import KcnnError

    try:  # choice-valued options (pooling, head) and the builder's own structural checks
        models.check_kwargs(spec.name, spec.kwargs)
    except KcnnError as err:
        raise RecipeError(str(err), file=file) from None


REGRESSION_SOURCES = ("npz", "csv")


def check_task(recipe: S.Recipe, file: str) -> None:
    """Settings that only make sense for class labels, refused under ``data.task: regression``."""
    if recipe.data.task != "regression":
        return

    def refuse(key: str, why: str) -> None:
        raise RecipeError(f"{why} (data.task is regression)", file=file, key=key)

    data, train = recipe.data, recipe.train
    if data.source.type not in REGRESSION_SOURCES:
        refuse("data.source.type", f"{data.source.type!r} has class labels only; regression targets "
               f"come from {' or '.join(REGRESSION_SOURCES)}")
    if data.sampler.type != "shuffle":
        refuse("data.sampler.type", f"{data.sampler.type!r} balances classes; use shuffle")
    for key in ("classes", "samples_per_class", "long_tail", "num_classes"):
        if getattr(data, key) is not None:
            refuse(f"data.{key}", "only for class labels (the output width is the number of targets)")
    if train.loss.type not in ("mse", "l2"):
        refuse("train.loss.type", f"{train.loss.type!r} is a classification loss; use mse or l2")
    if train.monitor != "val_loss":
        refuse("train.monitor", f"{train.monitor!r} needs class labels; use val_loss")
    if recipe.distill is not None:
        refuse("distill", "distillation matches class probabilities")
    if recipe.finetune is not None and recipe.finetune.co_training is not None:
        refuse("finetune.co_training", "co-training adds a classification head")


# ----------------------------------------------------------------------------- public API
def resolve_path(path: str | Path) -> Path:
    """A recipe path as given, or the name of a bundled recipe (``quickstart``)."""
    p = Path(path)
    if not p.exists() and not p.suffix and (RECIPES_DIR / f"{p}.yaml").exists():
        return RECIPES_DIR / f"{p}.yaml"
    return p


def bundled_names() -> list[str]:
    """Names of the bundled recipes (``kcnn train NAME`` finds them)."""
    return sorted(f.stem for f in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []


def _check_found(given: str | Path, path: Path) -> None:
    """A bare name that is neither a file nor a bundled recipe: say so, with close names."""
    if path.exists() or Path(given).name != str(given):
        return
    suffixed = Path(given).suffix in (".yaml", ".yml")
    stem = Path(given).stem if suffixed else str(given)
    close = difflib.get_close_matches(stem, bundled_names(), n=3, cutoff=0.6)
    names = " or ".join(repr(c) for c in close)
    if suffixed:
        hint = f"; did you mean the bundled recipe {names}?" if close else ""
        raise RecipeError(f"file not found{hint}", file=str(given))
    if not Path(given).suffix:
        hint = f"; did you mean {names}?" if close else ""
        raise RecipeError(f"no such recipe file or bundled recipe{hint}", file=str(given))


def load_dict(path: str | Path, overrides: list[str] | None = None) -> tuple[dict, dict[str, str]]:
    """The merged, overridden recipe as a plain dict (not yet validated), and the
    keys ``--set`` gave (key → ``KEY=VALUE``)."""
    resolved = resolve_path(path)
    _check_found(path, resolved)
    data = _resolve_extends(resolved)
    return apply_overrides(data, list(overrides or []))


_LEADING_KEY = re.compile(r"^((?:model|data|train)(?:\.[A-Za-z0-9_\[\]]+)*): ")


def from_dict(
    data: dict[str, Any], file: str = "<recipe>", set_keys: dict[str, str] | list[str] = ()
) -> S.Recipe:
    """Validate a merged recipe dict. ``set_keys``: keys given by ``--set`` (a list,
    or key → ``KEY=VALUE`` text), so their problems are blamed on ``--set``."""
    set_keys = set_keys if isinstance(set_keys, dict) else {k: k for k in set_keys}
    try:
        recipe = S.Recipe.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, data, file, set_keys) from None
    try:
        check_model(recipe, file)
        check_task(recipe, file)
    except RecipeError as err:
        key = err.key
        if key is None:  # "model.layers: ..." messages from the model registry
            m = _LEADING_KEY.match(err.message)
            key = m.group(1) if m else None
        origin = _origin(key, file, set_keys) if key else file
        if origin == file:
            raise
        raise RecipeError(err.message, file=origin, key=err.key) from None
    return recipe


def load(path: str | Path, overrides: list[str] | None = None) -> S.Recipe:
    """Read, merge, override and validate a recipe file."""
    data, set_keys = load_dict(path, overrides)
    path = resolve_path(path)
    _absolute_data_path(data, path.resolve().parent)
    return from_dict(data, _shown(path), set_keys)


def _absolute_data_path(data: dict[str, Any], base: Path) -> None:
    """Make file paths (data, cost matrix, ``model.init.from``, co-training source)
    absolute: relative to the recipe file when they exist there, else to the working
    directory. The run's recipe.yaml then works from anywhere."""
    source = (data.get("data") or {}).get("source")
    train = data.get("train")
    loss = train.get("loss") if isinstance(train, dict) else None
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    finetune = data.get("finetune") if isinstance(data.get("finetune"), dict) else {}
    co = finetune.get("co_training") if isinstance(finetune.get("co_training"), dict) else {}
    for section, key in ((source, "path"), (loss, "matrix"),  # matrix: a cost-matrix CSV
                         (model.get("init"), "from"), (co.get("source"), "path")):
        if isinstance(section, dict) and isinstance(section.get(key), str):
            p = Path(section[key]).expanduser()
            if not p.is_absolute():
                p = base / p if (base / p).exists() else Path.cwd() / p
            section[key] = str(p.resolve())


def loads(text: str, file: str = "<string>") -> S.Recipe:
    """Validate a recipe from YAML text (no ``extends``)."""
    data = _parse_yaml(text, file)
    if "extends" in data:
        raise RecipeError("extends is only allowed in recipe files", file=file, key="extends")
    return from_dict(data, file)


def dump(recipe: S.Recipe) -> str:
    """YAML text of a resolved recipe; ``loads(dump(r)) == r``."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def describe(path: Path) -> str:
    """The one-line description of a recipe file, without validating it."""
    try:
        data = _resolve_extends(path)
    except RecipeError:
        return "(invalid)"
    return str(data.get("description", "")).strip().splitlines()[0] if data.get("description") else ""
