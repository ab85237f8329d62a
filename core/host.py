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

import click
import pluggy

from mistwatch import __version__, hookspecs
from mistwatch.hookspecs import Collector, Notifier, RuleKind

BUILTINS: tuple[str, ...] = (
    "mistwatch.plugins.mist",
    "mistwatch.plugins.rulekinds",
    "mistwatch.plugins.analytics",
    "mistwatch.notifiers.email",
    "mistwatch.notifiers.console",
    "mistwatch.notifiers.webhook",
    "mistwatch.notifiers.slack",
    "mistwatch.notifiers.teams",
)
ENTRY_POINT_GROUP = "mistwatch"
HOOKS = ("mistwatch_collectors", "mistwatch_notifiers", "mistwatch_rule_kinds", "mistwatch_commands")


@dataclass
class PluginInfo:
    name: str
    source: str  # "builtin", "entry point <dist>", "plugins_dir <path>"
    version: str = ""
    status: str = "ok"  # ok | disabled | failed: <why>
    hooks: list[str] = field(default_factory=list)


_DESCRIPTORS: dict[str, tuple[type, str, str]] = {  # hook -> (descriptor type, unique attr, label)
    "mistwatch_collectors": (Collector, "name", "collector"),
    "mistwatch_notifiers": (Notifier, "type", "notifier type"),
    "mistwatch_rule_kinds": (RuleKind, "name", "rule kind"),
    "mistwatch_commands": (click.Command, "name", "command"),
}


@dataclass
class PluginHost:
    pm: pluggy.PluginManager
    infos: list[PluginInfo]
    _chosen: dict[str, dict[str, Any]] | None = field(default=None, init=False, repr=False)

    def _call(self, info: PluginInfo, hook: str) -> list[Any]:
        """Call one plugin's registration hook (as marked with @hookimpl) and check what it yields."""
        kind, _attr, _label = _DESCRIPTORS[hook]
        items: list[Any] = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name != info.name:
                continue
            result = impl.function()
            if isinstance(result, kind):  # a lone descriptor returned instead of yielded
                result = [result]
            for item in result or ():
                if not isinstance(item, kind):
                    raise TypeError(f"{hook} yielded {type(item).__name__}, expected {kind.__name__}")
                items.append(item)
        return items

    def _load(self) -> dict[str, dict[str, Any]]:
        """Ask every loaded plugin for its descriptors, once, in load order.

        A plugin that raises in any hook, yields something wrong, or reuses a name another plugin
        already provides is marked failed and contributes nothing at all: a half-working plugin
        is harder to diagnose than a missing one, and the result must not depend on call order.
        """
        if self._chosen is not None:
            return self._chosen
        chosen: dict[str, dict[str, Any]] = {hook: {} for hook in _DESCRIPTORS}
        owner: dict[tuple[str, str], str] = {}
        trace = bool(os.environ.get("MISTWATCH_TRACE_PLUGINS"))
        for info in self.infos:
            if info.status != "ok":
                continue
            mine: dict[str, list[Any]] = {}
            try:
                for hook in _DESCRIPTORS:
                    mine[hook] = self._call(info, hook)
            except Exception as exc:  # a plugin that raises is reported, not fatal
                info.status = f"failed: {hook}: {type(exc).__name__}: {exc}"
                continue
            clash = None
            for hook, items in mine.items():
                _kind, attr, label = _DESCRIPTORS[hook]
                seen_here: set[str] = set()
                for item in items:
                    key = getattr(item, attr)
                    first = owner.get((hook, key)) or (info.name if key in seen_here else None)
                    if first is not None:
                        clash = f"{label} {key!r} is provided by both {first!r} and {info.name!r}"
                        break
                    seen_here.add(key)
                if clash:
                    break
            if clash:
                info.status = f"failed: {clash}"
                continue
            for hook, items in mine.items():
                attr = _DESCRIPTORS[hook][1]
                for item in items:
                    chosen[hook][getattr(item, attr)] = item
                    owner[(hook, getattr(item, attr))] = info.name
                if trace and items:
                    sys.stderr.write(f"mistwatch: plugin {info.name}: {hook} -> "
                                     f"{', '.join(getattr(i, attr) for i in items)}\n")
        self._chosen = chosen
        return chosen

    def collectors(self) -> dict[str, Collector]:
        return dict(self._load()["mistwatch_collectors"])

    def notifiers(self) -> dict[str, Notifier]:
        return dict(self._load()["mistwatch_notifiers"])

    def rule_kinds(self) -> dict[str, RuleKind]:
        return dict(self._load()["mistwatch_rule_kinds"])

    def commands(self) -> dict[str, click.Command]:
        """Plugin commands, asking only the commands hook (``mistwatch --help`` must not build every
        collector's schema): a plugin that raises here, or repeats a name, contributes none."""
        if self._chosen is not None:
            return dict(self._chosen["mistwatch_commands"])
        found: dict[str, click.Command] = {}
        for info in self.infos:
            if info.status != "ok" or "mistwatch_commands" not in info.hooks:
                continue
            try:
                mine = {cmd.name: cmd for cmd in self._call(info, "mistwatch_commands")}
            except Exception:  # reported with the other hooks by `mistwatch plugins`
                continue
            found.update({name: cmd for name, cmd in mine.items() if name not in found})
        return found

    def plugins(self) -> list[PluginInfo]:
        """Every plugin with its final status (descriptors are loaded first, so hook failures show)."""
        self._load()
        return list(self.infos)

    def unknown_hooks(self) -> list[tuple[str, str]]:
        """``(plugin name, hook name)`` for every @hookimpl that matches no hook (a typo, usually).

        ``pm.check_pending()`` raises on the first one; this lists them all.
        """
        found = []
        for name in sorted(vars(self.pm.hook)):
            caller = getattr(self.pm.hook, name)
            if name.startswith("_") or caller.has_spec():
                continue
            found.extend((impl.plugin_name, name) for impl in caller.get_hookimpls() if not impl.optionalhook)
        return found


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _hooks_of(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """The hooks a plugin implements, as pluggy registered them (typo'd names included)."""
    names = {caller.name for caller in pm.get_hookcallers(plugin) or []}
    return [h for h in HOOKS if h in names] + sorted(names - set(HOOKS))


def _register(pm: pluggy.PluginManager, info: PluginInfo, load: Any, infos: list[PluginInfo]) -> None:
    infos.append(info)
    try:
        module = load()
        pm.register(module, name=info.name)
        info.hooks = _hooks_of(pm, module)
    except Exception as exc:  # import errors and validation errors alike
        info.status = f"failed: {type(exc).__name__}: {exc}"


def _load_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"mistwatch_local_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)  # leave no half-initialised module behind
        raise
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
        short = module_name.rsplit(".", 1)[-1]
        add(PluginInfo(short, "builtin", __version__), lambda m=module_name: importlib.import_module(m))

    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, f"entry point {dist.name if dist else '?'}",
                              dist.version if dist else "")
            if pm.has_plugin(ep.name) or any(i.name == ep.name for i in infos):
                info.status = f"failed: name {ep.name!r} is already registered"
                infos.append(info)
            elif only is not None and ep.name not in only and (dist is None or dist.name not in only):
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
