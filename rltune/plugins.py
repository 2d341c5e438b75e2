"""Plugins named by string: entry points, dotted paths and file paths (no import-time registries).

A spec is one of
  * an entry-point name in the group `rltune.<group>` (`exact_match`, `redit`; `rltune plugins` lists them),
  * a dotted path `pkg.mod:Attr` (or `pkg.mod.Attr`),
  * a file path `path/to/file.py:Attr`, relative to `base_dir` (the trainer passes the working directory), then to the cwd.

Every process builds its own instances from the spec (no import-time registry; instances are never pickled);
`bind_args` checks constructor
arguments against the signature without building anything, like torchtune's `_validate`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

__all__ = ["PluginError", "resolve", "bind_args", "build", "installed"]

_FORMS = "an entry-point name, a dotted path 'pkg.mod:Attr' or a file path 'path/to/file.py:Attr'"


class PluginError(ValueError):
    """A plugin spec that cannot be resolved, or arguments that do not fit its signature."""


def installed(group: str) -> dict[str, str]:
    """Entry points of `rltune.<group>` as {name: "module:attr"}, sorted by name."""
    return {ep.name: ep.value for ep in sorted(entry_points(group=f"rltune.{group}"), key=lambda e: e.name)}


def resolve(spec: str, group: str, base_dir: str | Path | None = None) -> Any:
    """Return the object a spec names (a class, function or instance); imports, builds nothing."""
    spec = spec.strip()
    if not spec:
        raise PluginError(f"empty {group} plugin spec; expected {_FORMS}")
    target, sep, attr = spec.rpartition(":")
    if sep and (target.endswith(".py") or "/" in target or "\\" in target):
        return _from_file(spec, target, attr, base_dir)
    if spec.endswith(".py"):
        mod = _from_file(spec, spec, "", base_dir)  # no ":Attr": say which names the file offers
        names = [n for n, v in vars(mod).items() if not n.startswith("_") and callable(v)
                 and getattr(v, "__module__", None) == mod.__name__]
        raise PluginError(f"{group} plugin '{spec}' names a file but no attribute; write '{spec}:<Attr>' "
                          f"(callables defined there: {', '.join(names) or 'none'})")
    eps = [ep for ep in entry_points(group=f"rltune.{group}") if ep.name == spec]
    if eps:
        values = sorted({ep.value for ep in eps})
        if len(values) > 1:
            raise PluginError(f"{group} plugin '{spec}' is registered by several packages ({', '.join(values)}); "
                              "name the one you mean by its dotted path")
        try:
            return eps[0].load()
        except Exception as e:
            raise PluginError(f"{group} plugin '{spec}': loading entry point '{values[0]}' failed: "
                              f"{type(e).__name__}: {e}") from e
    if sep:
        return _from_module(spec, target, attr, base_dir)
    if "." in spec:
        module, _, attr = spec.rpartition(".")
        return _from_module(spec, module, attr, base_dir)
    names = installed(group)
    near = difflib.get_close_matches(spec, list(names), n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise PluginError(
        f"unknown {group} plugin '{spec}': not an entry point in group 'rltune.{group}' "
        f"(installed: {', '.join(names) or 'none'}){hint} A spec may also be a dotted path 'pkg.mod:Attr' "
        "or a file path 'path/to/file.py:Attr'."
    )


def bind_args(obj: Any, args: dict[str, Any], spec: str) -> None:
    """Check that `args` fit `obj`'s signature (a class: its constructor, all required arguments given;
    a function: a partial binding) without calling anything. Raises PluginError naming the argument."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return  # builtins and C types without a signature: nothing to check
    params = sig.parameters
    kinds = inspect.Parameter
    valid = [n for n, p in params.items() if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
    takes_any = any(p.kind is kinds.VAR_KEYWORD for p in params.values())
    where = f"plugin '{spec}'"
    for key in args:
        if key not in valid and not takes_any:
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise PluginError(f"{where}: unexpected argument '{key}' (valid arguments: "
                              f"{', '.join(valid) or 'none'}){hint}")
    if inspect.isclass(obj):
        missing = [n for n in valid if params[n].default is inspect.Parameter.empty and n not in args]
        if missing:
            raise PluginError(f"{where}: missing required argument '{missing[0]}' (valid arguments: "
                              f"{', '.join(valid)}; given: {', '.join(args) or 'none'})")
    try:
        (sig.bind if inspect.isclass(obj) else sig.bind_partial)(**args)
    except TypeError as e:
        raise PluginError(f"{where}: arguments {sorted(args)} do not fit {sig}: {e} "
                          f"(valid arguments: {', '.join(valid) or 'none'})") from e


def build(spec: str, group: str, args: dict[str, Any] | None = None, base_dir: str | Path | None = None) -> Any:
    """Resolve `spec` and make it usable: a class is checked with `bind_args` and instantiated with `args`;
    a function gets `args` bound with `functools.partial`; any other object is returned as is."""
    args = dict(args or {})
    obj = resolve(spec, group, base_dir)
    if inspect.isclass(obj):
        bind_args(obj, args, spec)
        try:
            return obj(**args)
        except Exception as e:
            raise PluginError(f"building {group} plugin '{spec}' with args {args} failed: "
                              f"{type(e).__name__}: {e}") from e
    if args:
        if not (inspect.isroutine(obj) or isinstance(obj, functools.partial)):
            raise PluginError(f"{group} plugin '{spec}' is a {type(obj).__name__} instance, not a class or "
                              f"function, so args {sorted(args)} cannot be applied; drop `args:`")
        bind_args(obj, args, spec)
        return functools.partial(obj, **args)
    return obj


# ------------------------------------------------------------------------------------------- helpers
def _getattr_path(obj: Any, attr: str, spec: str, where: str) -> Any:
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            near = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise PluginError(f"plugin '{spec}': {where} has no attribute '{part}'{hint}")
        obj = getattr(obj, part)
    return obj


def _from_module(spec: str, module: str, attr: str, base_dir: str | Path | None) -> Any:
    if not module or not attr:
        raise PluginError(f"plugin '{spec}': expected {_FORMS}")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise PluginError(f"plugin '{spec}': module '{module}' was found but importing it failed: {e}") from e
        # Like torchtune, let a recipe name modules beside it or in the cwd (a console script's sys.path
        # does not hold the cwd); a folder is added to sys.path only when it holds that package.
        folders = ([Path(base_dir)] if base_dir is not None else []) + [Path.cwd()]
        folder = next((f.resolve() for f in folders if (f / top).is_dir() or (f / f"{top}.py").is_file()), None)
        if folder is None or str(folder) in sys.path:
            tried = ", ".join(["sys.path"] + [str(f) for f in folders])
            raise PluginError(f"plugin '{spec}': no module named '{e.name}' (tried: {tried}); "
                              f"expected {_FORMS}") from e
        sys.path.insert(0, str(folder))
        return _from_module(spec, module, attr, None)
    except Exception as e:
        raise PluginError(f"plugin '{spec}': importing module '{module}' failed: {type(e).__name__}: {e}") from e
    return _getattr_path(mod, attr, spec, f"module '{module}'")


def _from_file(spec: str, file: str, attr: str, base_dir: str | Path | None) -> Any:
    tried = [Path(base_dir) / file] if base_dir is not None and not Path(file).is_absolute() else []
    tried.append(Path(file) if Path(file).is_absolute() else Path.cwd() / file)
    path = next((p.resolve() for p in tried if p.is_file()), None)
    if path is None:
        raise PluginError(f"plugin '{spec}': file '{file}' not found (tried: {', '.join(map(str, tried))})")
    # One stable module name per absolute path: the same file loads once per process.
    name = f"rltune_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    mod = sys.modules.get(name)
    if mod is None:
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise PluginError(f"plugin '{spec}': cannot load '{path}' as a Python module")
        mod = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = mod  # before exec: dataclasses and typing look the module up while it runs
        try:
            loader_spec.loader.exec_module(mod)
        except Exception as e:
            del sys.modules[name]
            raise PluginError(f"plugin '{spec}': executing '{path}' failed: {type(e).__name__}: {e}") from e
    return _getattr_path(mod, attr, spec, f"file '{path}'") if attr else mod
