"""The plugin host: discovers plugins with pluggy and hands out their descriptors.

pluggy only discovers. Nothing here fans a call out through ``pm.hook``: each plugin's registration
hook is called on its own, guarded, so one broken plugin is reported and isolated, never fatal.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from mistwatch import hookspecs
from mistwatch.hookspecs import Collector, Notifier, RuleKind

BUILTINS: tuple[str, ...] = (
    "mistwatch.plugins.mist",
    "mistwatch.plugins.rulekinds",
    "mistwatch.notifiers.email",
    "mistwatch.notifiers.console",
    "mistwatch.notifiers.webhook",
    "mistwatch.notifiers.slack",
    "mistwatch.notifiers.teams",
)
ENTRY_POINT_GROUP = "mistwatch"
HOOKS = ("mistwatch_collectors", "mistwatch_notifiers", "mistwatch_rule_kinds")


@dataclass
class PluginInfo:
    name: str
    source: str  # "builtin", "entry point <dist>", "plugins_dir <path>"
    version: str = ""
    status: str = "ok"  # ok | disabled | failed: <why>
    hooks: list[str] = field(default_factory=list)


@dataclass
class PluginHost:
    pm: pluggy.PluginManager
    infos: list[PluginInfo]

    def _descriptors(self, hook: str) -> list[tuple[str, Any]]:
        found = []
        for info in self.infos:
            plugin = self.pm.get_plugin(info.name)
            impl = getattr(plugin, hook, None) if plugin is not None else None
            if impl is None or info.status != "ok":
                continue
            try:
                found.extend((info.name, item) for item in (impl() or ()))
            except Exception as exc:  # a plugin that raises is reported, not fatal
                info.status = f"failed: {hook}: {type(exc).__name__}: {exc}"
        return found

    def _unique(self, hook: str, attr: str) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for plugin_name, item in self._descriptors(hook):
            key = getattr(item, attr)
            if key in chosen:
                info = next(i for i in self.infos if i.name == plugin_name)
                info.status = f"failed: {attr} {key!r} is already provided by {owner[key]}"
                continue
            chosen[key], owner[key] = item, plugin_name
        return chosen

    def collectors(self) -> dict[str, Collector]:
        return self._unique("mistwatch_collectors", "name")

    def notifiers(self) -> dict[str, Notifier]:
        return self._unique("mistwatch_notifiers", "type")

    def rule_kinds(self) -> dict[str, RuleKind]:
        return self._unique("mistwatch_rule_kinds", "name")


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _hooks_of(module: Any) -> list[str]:
    return [hook for hook in HOOKS if callable(getattr(module, hook, None))]


def _register(pm: pluggy.PluginManager, info: PluginInfo, load: Any, infos: list[PluginInfo]) -> None:
    infos.append(info)
    try:
        module = load()
        pm.register(module, name=info.name)
        info.hooks = _hooks_of(module)
    except Exception as exc:  # import errors and validation errors alike
        info.status = f"failed: {type(exc).__name__}: {exc}"


def _load_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"mistwatch_local_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_host(*, entry_points: bool = True, plugins_dir: str | Path | None = None,
              extra: Iterable[tuple[str, Any]] = ()) -> PluginHost:
    """Build a fresh plugin host: built-ins, then entry points, then ``plugins_dir`` files.

    ``MISTWATCH_DISABLE_PLUGINS=a,b`` blocks plugins by name before they are imported;
    ``MISTWATCH_LOAD_PLUGINS=a,b`` loads only those entry points (empty: none, built-ins only).
    ``extra`` registers already-made plugin objects (tests, embedding).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs.MistwatchSpec)
    if os.environ.get("MISTWATCH_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    blocked = set(_env_list("MISTWATCH_DISABLE_PLUGINS") or [])
    only = _env_list("MISTWATCH_LOAD_PLUGINS")
    infos: list[PluginInfo] = []

    def add(info: PluginInfo, load: Any) -> None:
        if info.name in blocked:
            pm.set_blocked(info.name)
            info.status = "disabled"
            infos.append(info)
        else:
            _register(pm, info, load, infos)

    for module_name in BUILTINS:
        short = module_name.rsplit(".", 1)[1]
        add(PluginInfo(short, "builtin"), lambda m=module_name: importlib.import_module(m))

    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, f"entry point {dist.name if dist else '?'}",
                              dist.version if dist else "")
            if pm.has_plugin(ep.name) or any(i.name == ep.name for i in infos):
                info.status = f"failed: name {ep.name!r} is already registered"
                infos.append(info)
            elif only is not None and ep.name not in only:
                info.status = "disabled"
                infos.append(info)
            else:
                add(info, ep.load)

    if plugins_dir:
        for path in sorted(Path(plugins_dir).glob("*.py")):
            add(PluginInfo(path.stem, f"plugins_dir {path}"), lambda p=path: _load_file(p))

    for name, obj in extra:
        add(PluginInfo(name, "inline"), lambda o=obj: o)

    return PluginHost(pm, infos)
