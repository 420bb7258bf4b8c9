"""A strict, bounded YAML reader for recipes and ``extends`` bases.

Built on PyYAML's safe loader, with the checks a hand-edited config file needs:

* **Duplicate keys are errors.** YAML says mapping keys are unique, but PyYAML
  keeps the last value silently; here a repeated key names both lines::

      recipes/x.yaml: line 7: duplicate key 'train.epochs' (first at line 5)

  YAML merge keys (``<<: *base``) still work: keys merged in from an anchor may
  be overridden by the mapping's own keys, as the merge-key spec says.
* **Aliases cannot blow up.** Anchors and aliases are fine, but the document
  after alias expansion may have at most ``max(MAX_EXPANDED_NODES, 10 × its own
  node count)`` nodes, so a "billion laughs" file is refused in milliseconds
  instead of filling memory later. A node that contains itself is refused too.
* **Text only.** At most ``MAX_BYTES`` bytes of UTF-8 text without NUL bytes;
  anything else is one line naming the file, never a traceback.
* **Safe tags only.** ``!!python/...`` and other unknown tags are refused.
* **Errors are one line** with the file, line and column
  (``recipes/x.yaml: line 3, column 1: YAML syntax error: ...``).

Every problem raises :class:`~kcnn.errors.RecipeError`. No TensorFlow import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from kcnn.errors import RecipeError

MAX_BYTES = 1 << 20  # 1 MiB: a recipe is a few hundred bytes; an inline layer list a few KiB
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 100  # nesting levels; PyYAML's composer recurses per level

_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _line(mark: Any) -> str:
    return f"line {mark.line + 1}" if mark is not None else "?"


class _Refused(Exception):
    """Raised inside the loader; turned into a RecipeError naming the file."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, self-containing nodes and
    alias expansion beyond a bound. Use :func:`parse` rather than this class."""

    def check_node(self, root: Node, max_nodes: int = MAX_EXPANDED_NODES) -> None:
        """Walk the composed node graph once (each node once, however often it is
        aliased): duplicate keys, cycles, depth, and the expanded size."""
        expanded: dict[int, int] = {}  # id(node) -> node count after alias expansion
        active: set[int] = set()
        own = 0

        def walk(node: Node, path: tuple[str, ...], depth: int) -> int:
            nonlocal own
            key = id(node)
            if key in expanded:
                return expanded[key]
            if key in active:
                raise _Refused(f"{_line(node.start_mark)}: a node that contains itself "
                               "(recursive alias) is not allowed")
            if depth > MAX_DEPTH:
                raise _Refused(f"{_line(node.start_mark)}: nested more than {MAX_DEPTH} levels deep")
            own += 1
            active.add(key)
            size = 1
            if isinstance(node, SequenceNode):
                for i, item in enumerate(node.value):
                    size += walk(item, (*path, str(i)), depth + 1)
            elif isinstance(node, MappingNode):
                self._check_duplicates(node, path)
                for key_node, value_node in node.value:
                    name = key_node.value if isinstance(key_node, ScalarNode) else "?"
                    size += walk(key_node, path, depth + 1)
                    size += walk(value_node, (*path, str(name)), depth + 1)
            active.discard(key)
            expanded[key] = size
            return size

        total = walk(root, (), 0)
        limit = max(max_nodes, 10 * own)
        if total > limit:
            raise _Refused(
                f"YAML aliases expand the document to {total:,} nodes ({own:,} written; "
                f"at most {limit:,} allowed); refused (is it a 'billion laughs' file?)"
            )

    def _check_duplicates(self, node: MappingNode, path: tuple[str, ...]) -> None:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode):
                continue  # complex keys: the constructor reports them (unhashable)
            if key_node.tag in (_MERGE_TAG, _VALUE_TAG):
                value = (key_node.tag,)  # '<<' and '=' keys: compare by tag
            else:
                value = self.construct_object(key_node)
            try:
                first = seen.get(value)
            except TypeError:
                continue
            if first is not None:
                dotted = ".".join((*path, str(key_node.value)))
                raise _Refused(f"{_line(key_node.start_mark)}: duplicate key {dotted!r} "
                               f"(first at {_line(first.start_mark)})")
            seen[value] = key_node


def read_text(path: str | Path, shown: str | None = None, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of a small file, or a one-line RecipeError naming it."""
    path = Path(path)
    shown = shown if shown is not None else str(path)
    try:
        if not path.is_file():
            raise RecipeError("file not found" if not path.exists() else "not a file", file=shown)
        with path.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as err:
        raise RecipeError(f"cannot read: {err.strerror or err}", file=shown) from None
    if len(raw) > max_bytes:
        raise RecipeError(f"file is larger than {max_bytes:,} bytes; refused", file=shown)
    if b"\x00" in raw:
        raise RecipeError("not a UTF-8 text file (it contains NUL bytes)", file=shown)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise RecipeError(
            f"not a UTF-8 text file (byte 0x{raw[err.start]:02x} at offset {err.start} "
            "is not valid UTF-8)",
            file=shown,
        ) from None


def parse(text: str, shown: str, max_nodes: int = MAX_EXPANDED_NODES) -> Any:
    """Parse one YAML document strictly; ``None`` for an empty one."""
    if len(text) > MAX_BYTES:
        raise RecipeError(f"YAML text is longer than {MAX_BYTES:,} characters; refused", file=shown)
    loader = None
    try:
        loader = StrictLoader(text)  # checks for unprintable characters
        node = loader.get_single_node()
        if node is None:
            return None
        loader.check_node(node, max_nodes)
        return _unshare(loader.construct_document(node))
    except _Refused as err:
        raise RecipeError(str(err), file=shown) from None
    except yaml.constructor.ConstructorError as err:
        raise RecipeError(_constructor_message(err), file=shown) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = _one_line(err.problem or err.context or err)
        if err.context and "duplicate anchor" in err.context and err.context_mark:
            anchor = err.context.split(";")[0].replace("found ", "")
            problem = f"{anchor} (first at {_line(err.context_mark)})"
        elif err.problem and err.context and not err.context.startswith("while "):
            problem = f"{_one_line(err.context)}, {problem}"  # "expected …, but found …"
        if "'\\t'" in problem:
            problem += " (indent with spaces, not tabs)"
        raise RecipeError(f"{where}YAML syntax error: {problem}", file=shown) from None
    except yaml.reader.ReaderError as err:
        raise RecipeError(
            f"character #x{err.character:04x} at position {err.position} is not allowed in YAML",
            file=shown,
        ) from None
    except yaml.YAMLError as err:
        raise RecipeError(f"YAML error: {_one_line(err)}", file=shown) from None
    except RecursionError:
        raise RecipeError("YAML nested too deeply; refused", file=shown) from None
    finally:
        if loader is not None:
            loader.dispose()


def read(path: str | Path, shown: str | None = None) -> Any:
    """:func:`read_text` then :func:`parse`."""
    shown = shown if shown is not None else str(path)
    return parse(read_text(path, shown), shown)


def _constructor_message(err: yaml.constructor.ConstructorError) -> str:
    mark = err.problem_mark or err.context_mark
    line = f"{_line(mark)}: " if mark is not None else ""
    problem = err.problem or ""
    if "could not determine a constructor" in problem:
        tag = problem.split("tag", 1)[-1].strip(" '")
        return f"{line}unsafe or unknown YAML tag {tag!r} refused (recipes are read with safe_load)"
    return f"{line}{_one_line(problem or err)}"


def _unshare(value: Any) -> Any:
    """A copy without shared containers: an alias becomes an independent copy, so
    editing one place (``--set``, ``extends``) never changes another. Bounded by
    the expansion check."""
    if isinstance(value, dict):
        return {k: _unshare(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshare(v) for v in value]
    return value
