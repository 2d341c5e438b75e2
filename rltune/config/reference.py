"""The recipe reference (docs/recipe-reference.md), generated from the schema so that it cannot drift.

    python -m rltune.config.reference > docs/recipe-reference.md

One section per model in the recipe tree (`model.tiny`, `algo.dynamic_sampling`, ...), each a table of key,
type, default and the field's description. A model that appears twice (`critic.tiny`) is described once and
linked. tests/unit/config/test_reference.py fails when the committed file is stale.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from rltune.config.schema import Recipe

__all__ = ["generate_reference"]

REGENERATE = "python -m rltune.config.reference > docs/recipe-reference.md"
_BOUNDS = ((Gt, "gt", ">"), (Ge, "ge", "≥"), (Lt, "lt", "<"), (Le, "le", "≤"))


def _model_in(t: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`X`, `X | None`, `list[X]`), if any."""
    if isinstance(t, type) and issubclass(t, BaseModel):
        return t
    return next((m for m in map(_model_in, typing.get_args(t)) if m is not None), None)


def _bounds(metadata: Sequence[Any]) -> str:
    parts = [f"{sym} {getattr(m, attr)}" for m in metadata for cls, attr, sym in _BOUNDS if isinstance(m, cls)]
    parts += [f"≥ {m.min_length} items" for m in metadata if isinstance(m, MinLen)]
    return f" ({', '.join(parts)})" if parts else ""


def _type(t: Any, links: dict[type, tuple[str, str]], metadata: Sequence[Any] = ()) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:
        return _type(args[0], links, [*metadata, *t.__metadata__])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a, links) for a in args) + _bounds(metadata)
    if isinstance(t, type) and issubclass(t, BaseModel):
        return f"[`{links[t][0]}`](#{links[t][1]})"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type(a, links) for a in args)
        return f"{origin.__name__}[{inner}]" + _bounds(metadata)
    return ("null" if t is type(None) else getattr(t, "__name__", str(t))) + _bounds(metadata)


def _value(v: Any) -> str:
    if isinstance(v, BaseModel):
        return "(section defaults)"
    if isinstance(v, str):
        return f"`{v}`"
    return f"`{json.dumps(list(v) if isinstance(v, tuple) else v)}`"


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return _value(field.default_factory())
    return "**required**" if field.default is PydanticUndefined else _value(field.default)


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped, `<` escaped outside code spans (else HTML eats `<name>`)."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9_ -]", "", heading.lower()).replace(" ", "-")


def _sections(model: type[BaseModel], path: str, out: list[tuple[str, type[BaseModel]]], seen: set[type]) -> None:
    """Depth-first (heading, model) pairs in schema order, each model once."""
    seen.add(model)
    out.append((path, model))
    for name, field in model.model_fields.items():
        sub = _model_in(field.annotation)
        if sub is not None and sub not in seen:
            many = typing.get_origin(field.annotation) is list
            _sections(sub, f"{path}.{name}".lstrip(".") + ("[]" if many else ""), out, seen)


def _table(model: type[BaseModel], links: dict[type, tuple[str, str]]) -> list[str]:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, f in model.model_fields.items():
        desc = f.description or ""
        sub = _model_in(f.annotation)
        if sub is not None and not desc and sub.__doc__:
            desc = inspect.cleandoc(sub.__doc__).split("\n\n")[0]
        rows.append(f"| `{name}` | {_type(f.annotation, links, f.metadata)} | {_default(f)} | {_cell(desc)} |")
    return rows


def _derived(model: type[BaseModel]) -> list[str]:
    props = [(n, p) for n, p in vars(model).items() if isinstance(p, property) and p.__doc__]
    lines = [f"- `{n}`: {_cell(inspect.cleandoc(p.__doc__))}" for n, p in props]
    return ["", "Derived (read-only):", "", *lines] if lines else []


def generate_reference() -> str:
    """Markdown of the whole recipe schema, one table per section."""
    sections: list[tuple[str, type[BaseModel]]] = []
    _sections(Recipe, "", sections, set())
    sections = [(p or "recipe (top level)", m) for p, m in sections]
    links = {m: (p, _anchor(p)) for p, m in sections}
    lines = [
        "# Recipe reference",
        "",
        f"<!-- Generated from rltune/config/schema.py and model.py by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "Every section is strict (an unknown key is an error that names the nearest valid one) and frozen. "
        "Keys are written in YAML as `section: {key: value}` or overridden on the command line as "
        "`section.key=value`. `rltune show <recipe>` prints a recipe with every default filled in. "
        "Cross-field rules (e.g. `train.micro_batch_size` must divide the rollout batch) are checked at load; "
        "see [troubleshooting](troubleshooting.md).",
        "",
        "Sections: " + ", ".join(f"[`{p}`](#{links[m][1]})" for p, m in sections),
    ]
    for path, model in sections:
        lines += ["", f"## {path}", ""]
        if model.__doc__:
            lines += [" ".join(inspect.cleandoc(model.__doc__).split()), ""]
        lines += _table(model, links) + _derived(model)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.reconfigure(encoding="utf-8")
    sys.stdout.write(generate_reference())
