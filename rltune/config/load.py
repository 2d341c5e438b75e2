"""Load a recipe: YAML file + dotted CLI overrides -> a validated, frozen `Recipe`.

Errors are `RecipeError`s that name the YAML path, the bad value and the valid choices, e.g.
`algo.kl_coef: unknown key 'kl_coeff' (did you mean 'kl_coef'?)`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from rltune.config.schema import Recipe


class RecipeError(ValueError):
    """A recipe that cannot be loaded; the message is meant for the user, as is."""


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path} (check the path; `rltune init` writes a starter recipe)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise RecipeError(f"{path}: not UTF-8 text (byte {e.start}, line {line}); save the recipe as UTF-8") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the recipe: {e.strerror}") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: {_yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections (run, model, data, ...), got {type(raw).__name__}")
    for ov in overrides:
        apply_override(raw, ov)
    return recipe_from_dict(raw, source=str(path))


def recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, source)) from None


def apply_override(raw: dict[str, Any], override: str) -> None:
    """`algo.kl_coef=0.01` -> raw["algo"]["kl_coef"] = 0.01 (the value is parsed as YAML)."""
    if "=" not in override:
        raise RecipeError(f"override {override!r} must look like section.key=value, e.g. algo.kl_coef=0.01")
    key, value = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"override {override!r}: the key must be dotted names, e.g. algo.kl_coef=0.01")
    node: Any = raw
    for i, part in enumerate(parts):
        if not isinstance(node, (dict, list)):
            where = ".".join(parts[:i])
            raise RecipeError(f"override {override!r}: {where} is a value ({node!r}), not a section, so it has no "
                              f"key {part!r}; `rltune show <recipe>` prints the recipe's structure")
        if i == len(parts) - 1:
            break
        if isinstance(node, list):
            node = node[_index(part, key, len(node))]
            continue
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    leaf = parts[-1]
    try:
        parsed = yaml.load(value, Loader=UniqueKeyLoader) if value.strip() else None
    except yaml.YAMLError as e:
        raise RecipeError(f"override {override!r}: {_yaml_problem(e)}. The value is read as YAML: quote a "
                          f"string value, e.g. {key}='\"...\"'") from None
    if isinstance(node, list):
        node[_index(leaf, key, len(node))] = parsed
    else:
        node[leaf] = parsed


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently, so a
    second `train:` block would replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # unhashable keys fail in the base class with PyYAML's own message
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} at lines {seen[key]} and {line}: merge the two into one "
                    "(YAML would keep only the last)", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e)
    if problem.startswith("duplicate key"):
        return problem
    if "python/" in problem or "could not determine a constructor" in problem:
        problem += " (YAML tags that build Python objects are not allowed in recipes)"
    return f"malformed YAML{where}: {problem}"


def _index(part: str, key: str, n: int) -> int:
    if not part.isdigit():
        raise RecipeError(f"override {key!r}: {part!r} indexes a list and must be a number")
    if int(part) >= n:
        valid = f"valid: 0..{n - 1}" if n else "the list is empty"
        raise RecipeError(f"override {key!r}: index {part} is past the end of a list of {n} ({valid})")
    return int(part)


def format_validation_error(e: ValidationError, source: str) -> str:
    lines = [f"{source}: {e.error_count()} problem(s) in the recipe:"]
    for err in e.errors():
        loc = [str(x) for x in err["loc"] if not str(x).startswith("function-after")]
        path = ".".join(loc) or "<root>"
        kind = err["type"]
        if kind == "extra_forbidden":
            valid = _valid_keys(loc[:-1])
            near = difflib.get_close_matches(loc[-1], valid, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            lines.append(f"  - {path}: unknown key {loc[-1]!r}{hint}; valid keys: {', '.join(valid)}")
        elif kind == "missing":
            lines.append(f"  - {path}: required and missing")
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  - {path}: {err['msg']}{got_s}")
    return "\n".join(lines)


def _valid_keys(loc: list[str]) -> list[str]:
    """Field names of the model at `loc` (walking lists by index)."""
    model: Any = Recipe
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part) if _is_model(model) else None
        if field is None:
            return []
        model = _inner_model(field.annotation)
    return list(model.model_fields) if _is_model(model) else []


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _inner_model(t: Any) -> Any:
    if _is_model(t):
        return t
    for arg in get_args(t):
        m = _inner_model(arg)
        if m is not None:
            return m
    return None if get_origin(t) is None else None


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe (every default filled in) as YAML."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
