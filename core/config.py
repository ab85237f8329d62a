"""Loading and validating ``config.yaml``.

The whole file is checked before anything runs: YAML syntax, duplicate keys, ``${VAR}`` references,
the JSON Schema (core keys, each section's fragment, each collector's and notifier type's own
settings), notifier names and types, and that the paths it names exist. Every problem is one
:class:`~mistwatch.errors.ConfigError` naming the file, line and key path.

Sections owned by other parts of mistwatch live in ``core/schemas/config-<section>.json``::

    {"properties": {<top-level key>: <JSON Schema>, ...},
     "defaults": {<top-level key>: <default>, ...},
     "notifier_properties": {<key allowed in every notifier entry>: <JSON Schema>, ...}}

Fragments are merged: two fragments may both describe an object key (``reports``, say) as long as
they do not disagree about the same sub-key. ``notifier_properties`` is optional.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mistwatch import secrets
from mistwatch.errors import ConfigError, MistwatchError
from mistwatch.notify.digest import digest_settings
from mistwatch.notify.pipeline import check_config as check_notify_config
from mistwatch.yamlfile import LineMap, format_key_path, load_yaml, validate

if TYPE_CHECKING:
    from mistwatch.host import PluginHost

#: Values under these keys (or keys ending in ``_<one of them>``) are secrets.
SECRET_KEYS = ("token", "password", "secret", "api_key", "webhook_url", "routing_key", "heartbeat_url")
#: Keys every notifier entry has, whatever its type (more come from fragments' notifier_properties).
NOTIFIER_COMMON = ("name", "type")

_VAR = re.compile(r"\$(\$)?\{([^}]*)\}")  # $${...} is a literal ${...}
_VAR_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


# --- ${VAR} interpolation ---------------------------------------------------------------------

def _expand_string(text: str, *, file: str, lines: LineMap | None, path: tuple, strict: bool = True) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(1):  # escaped
            return "${" + match.group(2) + "}"
        body = _VAR_BODY.fullmatch(match.group(2))
        key = format_key_path(path) or None
        line = lines.line(path) if lines is not None else None
        if body is None:
            raise ConfigError(f"bad variable reference '${{{match.group(2)}}}': use ${{NAME}} or "
                              "${NAME:-default}", file=file, line=line, key=key)
        name, default = body.group(1), body.group(2)
        value = os.environ.get(name)
        if default is not None:
            return value if value else default  # shell semantics: unset or empty -> default
        if value is None:
            if not strict:  # a command that never uses this value (status, silences) keeps it as written
                return match.group(0)
            raise ConfigError(f"environment variable {name} is not set (write ${{{name}:-default}} "
                              "to give a default)", file=file, line=line, key=key)
        return value

    return _VAR.sub(replace, text)


def _interpolate(value: Any, file: str, lines: LineMap | None, path: tuple, expanded: set[tuple],
                 strict: bool = True) -> Any:
    if isinstance(value, str):
        if "${" not in value:
            return value
        expanded.add(path)
        return _expand_string(value, file=file, lines=lines, path=path, strict=strict)
    if isinstance(value, dict):
        return {k: _interpolate(v, file, lines, (*path, k), expanded, strict) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, file, lines, (*path, i), expanded, strict) for i, v in enumerate(value)]
    return value


def interpolate(value: Any, *, file: str, lines: LineMap | None, prefix: Sequence[str | int] = ()) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of ``value`` (a copy is returned).

    An unset variable without a default is a ``ConfigError`` naming the key path and the variable.
    ``$${...}`` stays a literal ``${...}``.
    """
    return _interpolate(value, file, lines, tuple(prefix), set())


# --- secrets ----------------------------------------------------------------------------------

def _is_secret_key(key: Any) -> bool:
    key = str(key).lower()
    return any(key == s or key.endswith("_" + s) for s in SECRET_KEYS)


def _register_secrets(value: Any, key: Any = None) -> Any:
    """Register every secret with ``mistwatch.secrets`` and wrap it as a ``Secret`` (repr masked)."""
    if isinstance(value, dict):
        return {k: _register_secrets(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_register_secrets(v, key) for v in value]
    if isinstance(value, str) and value:
        if key is not None and _is_secret_key(key):
            return secrets.register(value)
        if "://" in value and "@" in value:  # a URL with credentials: the password is a secret
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                secrets.register(password)
    return value


def _masked(value: Any) -> Any:
    if isinstance(value, secrets.Secret):
        return secrets.MASK
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, str):
        return secrets.redact(value)
    return value


def masked(value: Any) -> Any:
    """A copy of config data with every secret replaced by ``***``, for display."""
    return _masked(value)


# --- schema -----------------------------------------------------------------------------------

def _merge(a: Any, b: Any, where: str) -> Any:
    """Merge two schema (or defaults) fragments; they may not disagree."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = _merge(a[key], value, f"{where}.{key}") if key in a else value
        return out
    if isinstance(a, list) and isinstance(b, list):
        return a + [x for x in b if x not in a]
    if a != b:
        raise MistwatchError(f"config schema fragments disagree about {where}: {a!r} vs {b!r}")
    return a


@functools.lru_cache(maxsize=1)
def _fragments() -> tuple[dict, dict, dict]:
    """(properties, defaults, notifier_properties) merged from every shipped ``config-*.json``."""
    from importlib.resources import files

    properties: dict = {}
    defaults: dict = {}
    notifier_properties: dict = {}
    folder = files("mistwatch") / "schemas"
    names = sorted(p.name for p in folder.iterdir() if p.name.startswith("config-") and p.name.endswith(".json"))
    for name in names:
        try:
            fragment = json.loads((folder / name).read_text(encoding="utf-8"))
        except ValueError as exc:  # a packaging bug, not the user's: still one clear line
            raise MistwatchError(f"schema fragment {name} is not valid JSON: {exc}") from None
        properties = _merge(properties, fragment.get("properties", {}), name)
        defaults = _merge(defaults, fragment.get("defaults", {}), name)
        notifier_properties = _merge(notifier_properties, fragment.get("notifier_properties", {}), name)
    return properties, defaults, notifier_properties


def _collector_sections(host: PluginHost) -> dict[str, Mapping[str, Any]]:
    sections: dict[str, Mapping[str, Any]] = {}
    for collector in host.collectors().values():
        if collector.config_key:
            sections[collector.config_key] = collector.settings_schema or {"type": "object"}
    return sections


def _top_schema(host: PluginHost) -> dict:
    """The schema of the whole file except the per-type notifier settings (checked one by one)."""
    properties, _defaults, notifier_properties = _fragments()
    properties = copy.deepcopy(properties)
    properties.update(copy.deepcopy(_collector_sections(host)))
    if notifier_properties and "notifiers" in properties:
        items = properties["notifiers"].setdefault("items", {})
        items["properties"] = {**items.get("properties", {}), **copy.deepcopy(notifier_properties)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mistwatch config.yaml",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }


def config_schema(host: PluginHost | None = None) -> dict:
    """The whole JSON Schema of ``config.yaml``: core, every section, and the plugins' settings."""
    if host is None:
        from mistwatch.host import make_host

        host = make_host()
    schema = _top_schema(host)
    items = schema["properties"]["notifiers"]["items"]
    types = host.notifiers()
    if types:
        items["properties"]["type"] = {"enum": sorted(types)}
        branches = []
        for name, notifier in sorted(types.items()):
            then = copy.deepcopy(dict(notifier.settings_schema or {}))
            # the common keys live next to the type's own settings in one mapping
            then["properties"] = {**then.get("properties", {}), **copy.deepcopy(items["properties"])}
            branches.append({"if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                             "then": then})
        items["allOf"] = branches
    return schema


# --- validation helpers ---------------------------------------------------------------------

_NO = object()


def _coerce(text: str, types: Iterable[str]) -> Any:
    """A ${VAR} expansion is always a string; turn it into the type the schema wants, if it is one."""
    for wanted in types:
        if wanted == "integer" and re.fullmatch(r"[+-]?\d+", text.strip()):
            return int(text)
        if wanted == "number":
            try:
                return float(text)
            except ValueError:
                pass
        if wanted == "boolean" and text.strip().lower() in ("true", "false", "yes", "no", "on", "off"):
            return text.strip().lower() in ("true", "yes", "on")
    return _NO


def _coerce_expanded(data: Any, schema: Mapping, prefix: tuple, expanded: set[tuple]) -> None:
    if not expanded:
        return
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    for _ in range(len(expanded)):
        changed = False
        for error in validator.iter_errors(data):
            path = tuple(error.absolute_path)
            if error.validator != "type" or (*prefix, *path) not in expanded or not isinstance(error.instance, str):
                continue
            wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
            value = _coerce(error.instance, wanted)
            if value is _NO or not path:
                continue
            parent = data
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = value
            changed = True
        if not changed:
            return


def _check(data: Any, schema: Mapping, *, file: str, lines: LineMap, prefix: tuple = (),
           expanded: set[tuple] | None = None) -> None:
    _coerce_expanded(data, schema, prefix, expanded or set())
    validate(data, schema, file=file, lines=lines, prefix=prefix)


def _apply_property_defaults(section: Any, schema: Mapping) -> list[str]:
    """Fill a section's missing keys from its schema's ``default`` values (one level); returns the
    keys filled. None when the section holds a key the schema lists in ``x-no-defaults-with``."""
    if not isinstance(section, dict):
        return []
    # A section written another way (the Mist collector's ``orgs:`` list) takes none of the
    # defaults of the single form, so their ``${VAR}`` need not be set.
    if any(key in section for key in schema.get("x-no-defaults-with", ())):
        return []
    filled = []
    for key, sub in (schema.get("properties") or {}).items():
        if key not in section and isinstance(sub, Mapping) and "default" in sub:
            section[key] = copy.deepcopy(sub["default"])
            filled.append(key)
    return filled


def _merge_defaults(data: dict, defaults: Mapping) -> None:
    """User values win; a missing key or an empty ``key:`` (null) takes the default."""
    for key, default in defaults.items():
        if data.get(key) is None:
            data[key] = copy.deepcopy(default)
        elif isinstance(default, Mapping) and isinstance(data[key], dict):
            _merge_defaults(data[key], default)


# --- the config object ----------------------------------------------------------------------

@dataclass
class Config:
    """A validated config: ``data`` has ``${VAR}`` expanded and defaults applied."""

    path: Path
    base_dir: Path
    data: dict

    def resolve(self, p: str | Path) -> Path:
        """A path from the config, relative to the config file's folder (``~`` expanded)."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.data["state_dir"])

    @property
    def store_target(self) -> str | Path:
        """What ``Store.open`` takes: the ``store.url`` PostgreSQL URL, else the SQLite state folder."""
        url = str((self.data.get("store") or {}).get("url") or "")
        if url.startswith("sqlite:"):
            return self.resolve(url[len("sqlite:"):])
        return url or self.state_dir

    @property
    def reports_dir(self) -> Path:
        return self.resolve(self.data["reports"]["dir"])

    @property
    def rule_paths(self) -> list[Path]:
        return [self.resolve(p) for p in self.data["rules"]]

    @property
    def plugins_dir(self) -> Path | None:
        value = self.data.get("plugins_dir")
        return self.resolve(value) if value else None

    @property
    def notifiers(self) -> list[dict]:
        return self.data.get("notifiers") or []

    def __repr__(self) -> str:
        return f"Config(path={str(self.path)!r}, data={masked(self.data)!r})"


def _plugins_dir_of(data: Any, base_dir: Path) -> Path | None:
    value = data.get("plugins_dir") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _check_notifiers(data: dict, host: PluginHost, *, file: str, lines: LineMap, expanded: set[tuple]) -> None:
    types = host.notifiers()
    common = set(NOTIFIER_COMMON) | set(_fragments()[2])
    first_by_name: dict[str, int] = {}
    for index, entry in enumerate(data.get("notifiers") or []):
        path = ("notifiers", index)
        name, kind = entry["name"], entry["type"]
        if name in first_by_name:
            first = first_by_name[name]
            raise ConfigError(f"duplicate notifier name '{name}' (also notifiers[{first}], line "
                              f"{lines.line(('notifiers', first))})",
                              file=file, line=lines.line((*path, "name")), key=format_key_path((*path, "name")))
        first_by_name[name] = index
        notifier = types.get(kind)
        if notifier is None:
            known = ", ".join(sorted(types)) or "none are loaded (see `mistwatch plugins`)"
            raise ConfigError(f"unknown notifier type '{kind}'; known types: {known}",
                              file=file, line=lines.line((*path, "type")), key=format_key_path((*path, "type")))
        schema = notifier.settings_schema or {}
        settings = {k: v for k, v in entry.items() if k not in common}
        _apply_property_defaults(settings, schema)
        _check(settings, schema, file=file, lines=lines, prefix=path, expanded=expanded)
        entry.update(settings)


def _check_collectors(data: dict, host: PluginHost, *, file: str, lines: LineMap) -> None:
    known = host.collectors()
    for index, name in enumerate(data.get("collectors") or []):
        if name not in known:
            listed = ", ".join(sorted(known)) or "none are loaded (see `mistwatch plugins`)"
            raise ConfigError(f"unknown collector '{name}'; known collectors: {listed}",
                              file=file, line=lines.line(("collectors", index)),
                              key=format_key_path(("collectors", index)))


def _check_paths(config: Config, user_data: Mapping, *, file: str, lines: LineMap) -> None:
    for index, (raw, path) in enumerate(zip(config.data["rules"], config.rule_paths, strict=True)):
        if not path.exists():
            where = ("rules",) if "rules" not in user_data else ("rules", index)
            hint = " (the shipped rule pack: reinstall mistwatch)" if "rules" not in user_data else ""
            raise ConfigError(f"no such file or folder: {raw}{hint}", file=file,
                              line=lines.line(where), key=format_key_path(where))
    plugins_dir = config.plugins_dir
    if plugins_dir is not None and not plugins_dir.is_dir():
        raise ConfigError(f"not a folder: {config.data['plugins_dir']}", file=file,
                          line=lines.line(("plugins_dir",)), key="plugins_dir")


def load_config(path: str | Path, host: PluginHost | None = None, *, require_env: bool = True) -> Config:
    """Load, expand and validate a config file; raise ``ConfigError`` for the first problem.

    Without ``host``, a default plugin host is made (with the file's ``plugins_dir``), so plugin
    settings are validated against the plugins that will run. ``require_env=False`` leaves an
    unset ``${VAR}`` as written instead of failing: for commands that only read the state
    (``status``, ``silence``), which must not need the Mist token.
    """
    file = str(path)
    if not Path(path).expanduser().exists():
        raise ConfigError(f"file not found (looked for {Path(path).expanduser().resolve()}; give --config FILE or "
                          "set MISTWATCH_CONFIG, or write one with `mistwatch init`)", file=file)
    raw, lines = load_yaml(path)
    if not isinstance(raw, dict):
        what = "empty" if raw is None else f"a {type(raw).__name__}, not a mapping of settings"
        raise ConfigError(f"the config is {what} (see config.yaml in the mistwatch repository)",
                          file=file, line=lines.line(()))
    base_dir = Path(path).expanduser().resolve().parent
    expanded: set[tuple] = set()
    data = _interpolate(raw, file, lines, (), expanded, require_env)
    data = _register_secrets(data)

    if host is None:
        from mistwatch.host import make_host

        host = make_host(plugins_dir=_plugins_dir_of(data, base_dir))

    schema = _top_schema(host)
    _properties, defaults, _notifier_props = _fragments()
    _merge_defaults(data, defaults)
    if data.get("rules") is None:  # no rules: key: the pack shipped with mistwatch
        data["rules"] = [str(shipped_rules())]
    # Credentials default to environment variables. They are expanded after the schema check, so
    # a typo in the file is reported before a missing variable the file never mentions.
    env_defaults: list[tuple[str, str]] = []
    sections = _collector_sections(host)
    enabled = data.get("collectors") if isinstance(data.get("collectors"), list) else None
    for collector in host.collectors().values():
        key = collector.config_key
        if not key or (enabled is not None and collector.name not in enabled and key not in raw):
            continue
        if data.get(key) is None:
            data[key] = {}
        for name in _apply_property_defaults(data[key], sections.get(key, {})):
            if isinstance(data[key][name], str) and "${" in data[key][name]:  # e.g. token: ${MIST_API_TOKEN}
                env_defaults.append((key, name))
    _check(data, schema, file=file, lines=lines, expanded=expanded)
    for key, name in env_defaults:
        data[key][name] = _interpolate(data[key][name], file, lines, (key, name), expanded, require_env)
    if env_defaults:
        data = _register_secrets(data)
        _check(data, schema, file=file, lines=lines, expanded=expanded)
    _check_collectors(data, host, file=file, lines=lines)
    _check_notifiers(data, host, file=file, lines=lines, expanded=expanded)
    config = Config(path=Path(path), base_dir=base_dir, data=data)
    _check_paths(config, raw, file=file, lines=lines)
    check_notify_config(config, host.notifiers())  # routes, inhibit, maintenance; notifiers' own checks
    digest_settings(config)  # reports.digest: time, time zone, notifier names
    return config


def shipped_rules() -> Path:
    """The folder of the rule pack installed with mistwatch (``mistwatch.rulepack``)."""
    from mistwatch.rules.loader import package_rules_dir

    return package_rules_dir()


def host_for_config(path: str | Path | None) -> PluginHost:
    """A plugin host that includes the ``plugins_dir`` of the config at ``path`` when that file
    is readable; any problem with the file is ignored here (``config check`` reports it)."""
    from mistwatch.host import make_host

    plugins_dir = None
    if path is not None:
        try:
            raw, _lines = load_yaml(path)
            plugins_dir = _plugins_dir_of(interpolate(raw, file=str(path), lines=None),
                                          Path(path).expanduser().resolve().parent)
        except ConfigError:
            plugins_dir = None
        if plugins_dir is not None and not plugins_dir.is_dir():
            plugins_dir = None
    return make_host(plugins_dir=plugins_dir)
