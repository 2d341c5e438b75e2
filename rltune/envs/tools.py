"""Tools as typed Python functions, and the parser that finds their calls in a model's output.

Two call syntaxes are recognised (in order of appearance in the text):
  * compact:  `name(arg, key=value)`: literal arguments only (numbers, strings, booleans, lists); no
    expression is ever evaluated. Only names of known tools count, so prose such as "f(x)" is ignored.
  * JSON (Hermes / Qwen2.5 style): `<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>`.

A call that is recognised but unusable (unclosed, non-literal argument, bad JSON, unknown JSON name) is returned
with `error` set, so an environment can answer with feedback instead of silently ignoring it.

>>> def add(a: int, b: int) -> int:
...     return a + b
>>> tools = ToolSet([add])
>>> [tools.run(c) for c in tools.parse("first add(2, 3) then add(a=1, b=-4)")]
['5', '-3']
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Sequence

__all__ = ["ToolCall", "ToolError", "ToolSet", "parse_tool_calls"]

_NAME = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\(")
_JSON = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.S)


class ToolError(ValueError):
    """A tool call that cannot run: unknown tool, bad arguments, or the tool itself raised."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    start: int = 0                 # character span of the call in the text
    end: int = 0
    error: str | None = None       # set when the call was recognised but could not be parsed


def _close_paren(text: str, i: int) -> int:
    """Index just past the ')' matching the '(' at text[i-1], skipping quoted strings; -1 if unclosed."""
    depth, quote = 1, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _compact(text: str, names: Collection[str] | None) -> list[ToolCall]:
    calls, pos = [], 0
    for m in _NAME.finditer(text):
        name = m.group(1)
        if m.start() < pos or (names is not None and name not in names):
            continue
        end = _close_paren(text, m.end())
        if end < 0:
            calls.append(ToolCall(name, start=m.start(), end=len(text), error=f"{name}(: unclosed parenthesis"))
            break
        pos = end
        src = text[m.start():end]
        try:
            node = ast.parse(src, mode="eval").body
            assert isinstance(node, ast.Call)
            args = tuple(ast.literal_eval(a) for a in node.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
            if len(kwargs) != len(node.keywords):
                raise ValueError("**kwargs are not allowed")
        except (SyntaxError, ValueError, AssertionError, TypeError) as e:
            reason = "arguments must be literals" if isinstance(e, ValueError) and "malformed" in str(e) else str(e)
            calls.append(ToolCall(name, start=m.start(), end=end, error=f"{src}: {reason}"))
            continue
        calls.append(ToolCall(name, args, kwargs, m.start(), end))
    return calls


def _json(text: str) -> list[ToolCall]:
    calls = []
    for m in _JSON.finditer(text):
        body, closed = m.group(1).strip(), bool(m.group(2))
        try:
            obj = json.loads(body)
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                raise ValueError('expected {"name": ..., "arguments": {...}}')
            arguments = obj.get("arguments", obj.get("parameters", {}))
            if isinstance(arguments, str):  # OpenAI style: arguments as a JSON string
                arguments = json.loads(arguments)
            if not isinstance(arguments, dict):
                raise ValueError("arguments must be an object")
        except ValueError as e:
            err = f"bad <tool_call> JSON: {e}" + ("" if closed else " (no </tool_call>)")
            calls.append(ToolCall("", start=m.start(), end=m.end(), error=err))
            continue
        calls.append(ToolCall(obj["name"], (), dict(arguments), m.start(), m.end()))
    return calls


def parse_tool_calls(text: str, names: Collection[str] | None = None) -> list[ToolCall]:
    """All tool calls in `text`, in order. `names` restricts compact calls to known tools (None = any name);
    text inside <tool_call> blocks is parsed as JSON only."""
    blocks = _json(text)
    spans = [(c.start, c.end) for c in blocks]
    compact = [c for c in _compact(text, names) if not any(s <= c.start < e for s, e in spans)]
    return sorted(blocks + compact, key=lambda c: c.start)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert one argument to its annotation (int, float, str, bool; others pass unchecked)."""
    if hint is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
    elif hint is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str and isinstance(value, str) or hint is bool and isinstance(value, bool):
        return value
    elif hint not in (int, float, str, bool):
        return value
    raise ToolError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")


class ToolSet:
    """Named typed functions: `describe()` for the prompt, `parse(text)` for calls, `run(call)` -> str."""

    def __init__(self, fns: Sequence[Callable[..., Any]]):
        self.fns = {f.__name__: f for f in fns}
        self.sigs = {n: inspect.signature(f) for n, f in self.fns.items()}
        self.hints = {n: typing.get_type_hints(f) for n, f in self.fns.items()}

    def describe(self) -> str:
        """One line per tool: `name(a: int, b: int) -> int`."""
        out = []
        for n, sig in self.sigs.items():
            params = ", ".join(f"{p}: {getattr(self.hints[n].get(p), '__name__', 'any')}" for p in sig.parameters)
            ret = self.hints[n].get("return")
            out.append(f"{n}({params})" + (f" -> {ret.__name__}" if ret is not None else ""))
        return "\n".join(out)

    def parse(self, text: str) -> list[ToolCall]:
        return parse_tool_calls(text, names=self.fns)

    def run(self, call: ToolCall) -> str:
        """Bind, type-check and call; the result as text. Raises ToolError for anything that goes wrong."""
        if call.error is not None:
            raise ToolError(call.error)
        if call.name not in self.fns:
            raise ToolError(f"unknown tool {call.name!r} (tools: {', '.join(self.fns)})")
        try:
            bound = self.sigs[call.name].bind(*call.args, **call.kwargs)
        except TypeError as e:
            raise ToolError(f"{call.name}: {e}") from None
        hints = self.hints[call.name]
        args = {k: _coerce(v, hints.get(k), f"{call.name}({k})") for k, v in bound.arguments.items()}
        try:
            return str(self.fns[call.name](**args))
        except Exception as e:  # noqa: BLE001 - the tool's own failure is feedback for the model
            raise ToolError(f"{call.name} raised {type(e).__name__}: {e}") from None
