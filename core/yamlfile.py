"""YAML files with line numbers, and JSON Schema validation with one clear error line.

``load_yaml`` parses a file once (libyaml when available), builds the data and a :class:`LineMap`
from the same node tree, and rejects duplicate mapping keys (YAML itself silently keeps the last
one, a classic way to lose half a rule). Hostile input is bounded before anything is built: the file
size, then (streaming the parser's events) the number of nodes, the nesting depth and the size the
document would have with every alias expanded (a 700-byte "billion laughs" file took 3 GB).
``validate`` checks data against a JSON Schema (Draft
2020-12) and raises :class:`~mistwatch.errors.ConfigError` for the most relevant problem, with the
file, line and key path, in words rather than a jsonschema dump.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mistwatch.errors import ConfigError
from mistwatch.secrets import redact

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"

#: Bounds on one YAML file (config, rules, rule tests). The largest shipped file is under 10 KB and
#: a few thousand nodes; these leave room for 100 times that and keep peak memory far below 150 MB.
MAX_FILE_BYTES = 1_048_576
MAX_NODES = 100_000
#: Nodes counted with every alias expanded: what later stages (schema validation, rule compilation)
#: walk, since they see the data as a tree.
MAX_EXPANDED_NODES = 200_000
MAX_DEPTH = 64


class _Entry:
    """One node of the line map: its 1-based line and its children (by key or index)."""

    __slots__ = ("children", "line")

    def __init__(self, line: int) -> None:
        self.line = line
        self.children: dict[Any, _Entry] | None = None


class LineMap:
    """Where each value of a loaded YAML document is, by key path."""

    def __init__(self, root: _Entry | None = None) -> None:
        self._root = root

    def line(self, key_path: Sequence[str | int]) -> int | None:
        """The 1-based line of the value at ``key_path`` (for a mapping entry: its key's line).

        A path that does not exist (a missing key, say) gives the line of its nearest ancestor.
        """
        entry = self._root
        if entry is None:
            return None
        for part in key_path:
            children = entry.children
            if not children:
                break
            child = children.get(part)
            if child is None:
                child = children.get(str(part))
            if child is None and isinstance(part, str) and part.isdigit():
                child = children.get(int(part))
            if child is None:
                break
            entry = child
        return entry.line


def format_key_path(key_path: Sequence[str | int]) -> str:
    """``("notifiers", 0, "smtp_port")`` -> ``"notifiers[0].smtp_port"``."""
    out = ""
    for part in key_path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _build_line_map(root: yaml.Node, file: str) -> _Entry:
    """Walk the node tree once: record lines and reject duplicate keys."""
    top = _Entry(root.start_mark.line + 1)
    seen: dict[int, _Entry] = {}  # aliases can make cycles: expand each node once, share its children
    stack: list[tuple[yaml.Node, _Entry, tuple[Any, ...]]] = [(root, top, ())]
    while stack:
        node, entry, path = stack.pop()
        first_visit = seen.get(id(node))
        if first_visit is not None:
            entry.children = first_visit.children
            continue
        seen[id(node)] = entry
        if isinstance(node, yaml.MappingNode):
            entry.children = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
                line = key_node.start_mark.line + 1
                first = entry.children.get(key)
                if first is not None:
                    raise ConfigError(f"duplicate key '{key}' (first at line {first.line})",
                                      file=file, line=line, key=format_key_path((*path, key)))
                child = entry.children[key] = _Entry(line)
                stack.append((value_node, child, (*path, key)))
        elif isinstance(node, yaml.SequenceNode):
            entry.children = {}
            for index, item in enumerate(node.value):
                child = entry.children[index] = _Entry(item.start_mark.line + 1)
                stack.append((item, child, (*path, index)))
    return top


def _syntax_error(exc: yaml.YAMLError, file: str) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            problem = f"{problem} ({exc.context})"
        return ConfigError(f"YAML syntax error: {problem}", file=file,
                           line=mark.line + 1 if mark is not None else None)
    return ConfigError(f"YAML syntax error: {exc}", file=file)


def _check_bounds(text: str, file: str) -> None:
    """Stream the parser's events (no nodes are built) and refuse a document over the bounds."""
    nodes = expanded = 0
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node
    stack: list[list[Any]] = [[None, 0]]  # [anchor, expanded size so far] per open collection
    loader = _Loader(text)

    def refuse(problem: str, event: Any) -> ConfigError:
        return ConfigError(problem, file=file, line=event.start_mark.line + 1 if event.start_mark else None)

    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.AliasEvent):
                size = sizes.get(event.anchor)
                if size is None:  # inside its own anchor it would make an endless document
                    recursive = any(frame[0] == event.anchor for frame in stack)
                    raise refuse(f"{'recursive' if recursive else 'undefined'} alias *{event.anchor}", event)
                stack[-1][1] += size
                expanded += size
            elif isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
                nodes += 1
                expanded += 1
                if nodes > MAX_NODES:
                    raise refuse(f"too many YAML nodes (more than {MAX_NODES})", event)
                if isinstance(event, yaml.ScalarEvent):
                    if event.anchor is not None:
                        sizes[event.anchor] = 1
                    stack[-1][1] += 1
                else:
                    if len(stack) > MAX_DEPTH:
                        raise refuse(f"nested too deep (more than {MAX_DEPTH} levels)", event)
                    stack.append([event.anchor, 1])
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, size = stack.pop()
                if anchor is not None:
                    sizes[anchor] = size
                stack[-1][1] += size
            else:
                continue
            if expanded > MAX_EXPANDED_NODES:
                raise refuse(f"too large with its aliases expanded (more than {MAX_EXPANDED_NODES} nodes)",
                             event)
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> tuple[Any, LineMap]:
    """Load one YAML document safely; return ``(data, line_map)``.

    Every problem (missing or unreadable file, syntax error, duplicate key) is a ``ConfigError``
    naming the file as given and the 1-based line.
    """
    file = str(path)
    try:
        with open(path, "rb") as handle:  # read one byte past the cap: never the whole of a huge file
            raw = handle.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError(f"file too large (over {MAX_FILE_BYTES // 1024} KB)", file=file)
        # utf-8-sig: files saved by Windows editors often start with a BOM
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a file", file=file) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 text (byte {exc.start})", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=file) from None
    try:
        _check_bounds(text, file)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, file) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:  # empty file or only comments
            return None, LineMap()
        lines = _build_line_map(node, file)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, file) from None
    finally:
        loader.dispose()
    return data, LineMap(lines)


# --- validation -------------------------------------------------------------------------------

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string",
               list: "array", dict: "object", type(None): "null"}


def _json_type(value: Any) -> str:
    for py_type, name in _JSON_TYPES.items():
        if type(value) is py_type:
            return name
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = redact(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _s(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _allowed_keys(schema: Mapping[str, Any]) -> list[str]:
    return sorted(schema.get("properties", {}) or {})


def _unknown_keys(error: Any) -> list[str]:
    """The offending keys of an additionalProperties/unevaluatedProperties error."""
    instance, schema = error.instance, error.schema
    if not isinstance(instance, Mapping):
        return []
    known = set(schema.get("properties", {}) or {})
    patterns = list((schema.get("patternProperties") or {}).keys())
    return [str(k) for k in instance
            if k not in known and not any(re.search(p, str(k)) for p in patterns)]


def _describe(error: Any) -> tuple[str, tuple[Any, ...]]:
    """A readable message for a jsonschema error, and extra path parts to point at."""
    custom = error.schema.get("x-message") if isinstance(error.schema, Mapping) else None
    if isinstance(custom, str):
        return custom, ()
    keyword, expected, instance = error.validator, error.validator_value, error.instance
    if keyword in ("additionalProperties", "unevaluatedProperties"):
        unknown = _unknown_keys(error)
        if unknown:
            key = unknown[0]
            message = f"unknown key '{key}'"
            allowed = _allowed_keys(error.schema)
            close = difflib.get_close_matches(key, allowed, n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
            elif allowed:
                message += f" (allowed: {', '.join(allowed)})"
            return message, (key,)
        return "unknown keys are not allowed", ()
    if keyword == "required":
        missing = [k for k in expected if isinstance(instance, Mapping) and k not in instance]
        return f"missing required key '{missing[0] if missing else expected[0]}'", ()
    if keyword == "type":
        names = expected if isinstance(expected, list) else [expected]
        return f"expected {' or '.join(names)}, got {_json_type(instance)}", ()
    if keyword == "enum":
        choices = ", ".join(str(c) for c in expected)
        return f"must be one of: {choices} (got {_short(instance)})", ()
    if keyword == "const":
        return f"must be {expected!r}", ()
    if keyword == "minimum":
        return f"must be at least {expected}", ()
    if keyword == "maximum":
        return f"must be at most {expected}", ()
    if keyword == "exclusiveMinimum":
        return f"must be greater than {expected}", ()
    if keyword == "exclusiveMaximum":
        return f"must be less than {expected}", ()
    if keyword == "multipleOf":
        return f"must be a multiple of {expected}", ()
    if keyword == "minLength":
        return ("must not be empty" if expected == 1 else
                f"must be at least {_s(expected, 'character')} long"), ()
    if keyword == "maxLength":
        return f"must be at most {_s(expected, 'character')} long", ()
    if keyword == "minItems":
        return ("must not be empty" if expected == 1 else f"must have at least {_s(expected, 'item')}"), ()
    if keyword == "maxItems":
        return f"must have at most {_s(expected, 'item')}", ()
    if keyword == "minProperties":
        return ("must not be empty" if expected == 1 else f"must have at least {_s(expected, 'key')}"), ()
    if keyword == "maxProperties":
        return f"must have at most {_s(expected, 'key')}", ()
    if keyword == "uniqueItems":
        return "must not contain duplicates", ()
    if keyword == "pattern":
        return f"must match the pattern {expected}", ()
    if keyword == "format":
        return f"is not a valid {expected}", ()
    if keyword == "dependentRequired":
        return f"{error.message.split(' is a dependency of ')[0]} is required here", ()
    if keyword in ("oneOf", "anyOf"):
        branches = list(error.context or ())
        if branches and all(b.validator == "required" and not b.relative_path for b in branches):
            # e.g. anyOf: [{required: [cloud]}, {required: [base_url]}]
            keys = [k for b in branches for k in b.validator_value]
            return f"needs one of the keys: {', '.join(keys)}", ()
        return "does not match any of the allowed forms", ()
    if keyword == "not":
        return "is not allowed here", ()
    if keyword == "propertyNames":
        return f"invalid key {_short(instance)}", ()
    return f"is not valid ({keyword})", ()


def _error_rank(error: Any, lines: LineMap, prefix: Sequence[str | int]) -> tuple[int, int]:
    """Sort key: the line of the value in error, then an unknown key before a missing one
    (in the same mapping, the unknown key is usually the misspelt required one)."""
    line = lines.line((*prefix, *error.absolute_path)) or 0
    keyword = error.validator
    if keyword in ("additionalProperties", "unevaluatedProperties"):
        return line, 0
    return line, 2 if keyword == "required" else 1


def validate(data: Any, schema: Mapping[str, Any], *, file: str, lines: LineMap | None = None,
             prefix: Sequence[str | int] = ()) -> None:
    """Validate ``data`` against a JSON Schema (Draft 2020-12); raise one ``ConfigError``.

    ``prefix`` is the key path of ``data`` inside the file (when validating a part of it), used for
    the key path and line of the error. A schema may give its own message with ``"x-message"``.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = list(validator.iter_errors(data))
    if not errors:
        return
    if lines is not None:
        # report the first problem in file order (jsonschema alone prefers the last sibling)
        first = min(_error_rank(e, lines, prefix) for e in errors)
        errors = [e for e in errors if _error_rank(e, lines, prefix) == first]
    error = best_match(errors)
    message, extra = _describe(error)
    path = (*prefix, *error.absolute_path, *extra)
    line = lines.line(path) if lines is not None else None
    raise ConfigError(message, file=file, line=line, key=format_key_path(path) or None)
