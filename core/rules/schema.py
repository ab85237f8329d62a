"""The JSON Schema of rule files: the keys every rule has, plus each kind's own keys (merged from the
kinds' descriptors, so `rules check` validates plugin kinds too, and `rules schema` prints it)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from mistwatch.hookspecs import RuleKind, duration_schema
from mistwatch.model import SEVERITIES

_MATCHER_VALUE: dict[str, Any] = {"oneOf": [
    {"type": ["string", "number", "boolean"]},
    {"type": "array", "items": {"type": ["string", "number", "boolean"]}, "minItems": 1},
    {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
     "properties": {
         "regex": {"type": "string"}, "not_regex": {"type": "string"},
         "not": {"type": ["string", "number", "boolean"]},
         "in": {"type": "array", "items": {"type": ["string", "number", "boolean"]}},
         "not_in": {"type": "array", "items": {"type": ["string", "number", "boolean"]}},
         "exists": {"type": "boolean"},
     }},
], "x-message": "a label matcher is a value, a list of values, or one of "
                "{regex: ...}, {not_regex: ...}, {not: ...}, {in: [...]}, {not_in: [...]}, {exists: true}"}

_TEMPLATE = {"type": "string", "minLength": 1}


#: ``metrics:`` in a rule file: derived metrics (mistwatch.rules.derived).
METRICS_SCHEMA: dict[str, Any] = {"type": ["array", "null"], "items": {
    "type": "object", "additionalProperties": False, "required": ["name", "expr"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$",
                 "x-message": "must be a dotted metric name like site.clients_per_ap"},
        "scope": {"type": "string", "minLength": 1},
        "expr": {"type": "string", "minLength": 1},
        "description": {"type": "string"}}}}


def common_properties() -> dict[str, Any]:
    """The JSON Schema of the keys every rule has."""
    return {
        "id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
               "x-message": "must be letters, digits and _ . : - (starting with a letter or digit)"},
        "description": {"type": "string"},
        "kind": {"type": "string"},
        "scope": {"type": "string", "pattern": r"^[a-z][a-z0-9_]*$"},
        "match": {"type": "object", "additionalProperties": _MATCHER_VALUE},
        "severity": {"enum": list(SEVERITIES)},
        "tiers": {"type": "array", "minItems": 1},
        "for": {"description": "how long the condition must hold before the alert fires",
                "oneOf": [*(dict(alt, **{"x-message": "must be a duration like 10m, or {cycles: N}"})
                            for alt in duration_schema()["oneOf"]),
                          {"type": "object", "additionalProperties": False, "required": ["cycles"],
                           "properties": {"cycles": {"type": "integer", "minimum": 1}}}],
                "x-message": "must be a duration like 10m, or {cycles: N}"},
        "keep_firing_for": duration_schema("stay firing this long after the condition clears"),
        "recover_when": {"description": "the alert resolves only once this holds (hysteresis)"},
        "when": {"type": "string", "minLength": 1},
        "labels": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
        "summary": _TEMPLATE,
        "recommendation": {"type": "string"},
        "enabled": {"type": "boolean"},
        "supersedes": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                       "description": "rule ids whose alerts this rule's firing alert replaces in "
                                      "notifications (same entity, same or lower severity)",
                       "x-message": "must be a list of rule ids"},
    }


def _kind_schema(kind: RuleKind) -> dict[str, Any]:
    """One kind's own keys, and its condition keys in tiers and recover_when."""
    kind_schema = copy.deepcopy(dict(kind.schema or {}))
    properties = kind_schema.setdefault("properties", {})
    condition_keys = tuple(getattr(kind, "condition_keys", ()) or ())
    if condition_keys:
        condition = {k: properties[k] for k in condition_keys if k in properties}
        properties["tiers"] = {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["severity"],
            "properties": {"severity": {"enum": list(SEVERITIES)}, **condition},
            "minProperties": 2}}
        properties["recover_when"] = {"oneOf": [
            {"type": "string", "minLength": 1},
            {"type": "object", "additionalProperties": False, "minProperties": 1,
             "properties": {**condition, **(getattr(kind, "recover_schema", None) or {})}},
        ], "x-message": "must be an expression, or a mapping of " + ", ".join(
            [*condition_keys, *(getattr(kind, "recover_schema", None) or {})])}
    else:
        properties["tiers"] = {"not": {}, "x-message": f"kind '{kind.name}' has no severity tiers"}
        properties["recover_when"] = {"type": "string", "minLength": 1,
                                      "x-message": "must be an expression"}
    return kind_schema


def _kind_branch(kind: RuleKind) -> dict[str, Any]:
    return {"if": {"properties": {"kind": {"const": kind.name}}, "required": ["kind"]},
            "then": _kind_schema(kind)}


def kind_rule_schema(kind: RuleKind) -> dict[str, Any]:
    """The flat schema of one rule of ``kind`` (what ``load_rules`` validates each rule against:
    a flat schema names the real problem, where if/then would also flag every key of a failed branch)."""
    own = _kind_schema(kind)
    schema = {key: value for key, value in own.items() if key not in ("properties", "required")}
    schema.update({
        "type": "object",
        "required": ["id", "kind", *own.get("required", [])],
        "properties": {**common_properties(), **own["properties"]},
        "additionalProperties": False,
    })
    return schema


def rule_schema(kinds: Mapping[str, RuleKind]) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one rule, with every registered kind's keys."""
    properties = common_properties()
    properties["kind"] = {"enum": sorted(kinds),
                          "x-message": "must be one of the rule kinds: " + ", ".join(sorted(kinds))}
    return {
        "type": "object",
        "required": ["id", "kind"],
        "properties": properties,
        "allOf": [_kind_branch(kinds[name]) for name in sorted(kinds)],
        "unevaluatedProperties": False,
    }


def file_schema(kinds: Mapping[str, RuleKind]) -> dict[str, Any]:
    """The JSON Schema of a rule file: ``{rules: [rule, ...]}`` or a single rule."""
    rule = rule_schema(kinds)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://mistwatch.dev/schemas/rules.schema.json",
        "title": "mistwatch rule file",
        "$defs": {"rule": rule},
        "if": {"type": "object", "anyOf": [{"required": ["rules"]}, {"required": ["metrics"]}]},
        "then": {"type": "object", "additionalProperties": False,
                 "properties": {"rules": {"type": "array", "items": {"$ref": "#/$defs/rule"}},
                                "metrics": METRICS_SCHEMA}},
        "else": {"$ref": "#/$defs/rule"},
    }
