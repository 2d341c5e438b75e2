"""The tool-call parser and ToolSet: table-driven cases with exact expected calls, errors and results."""

import pytest

from rltune.envs.tools import ToolCall, ToolError, ToolSet, parse_tool_calls


def add(a: int, b: int) -> int:
    return a + b


def scale(x: float, by: float = 2.0) -> float:
    return x * by


def shout(text: str, times: int = 1) -> str:
    return text.upper() * times


def boom(a: int) -> int:
    raise ZeroDivisionError("nope")


TOOLS = ToolSet([add, scale, shout, boom])
NAMES = ("add", "scale", "shout", "boom")


@pytest.mark.parametrize("text, expected", [
    ("add(2,3)", [("add", (2, 3), {})]),
    ("add( 2 , -3 )", [("add", (2, -3), {})]),
    ("I will call add(a=1, b=2) now", [("add", (), {"a": 1, "b": 2})]),
    ("add(1,2) then scale(1.5, by=4)", [("add", (1, 2), {}), ("scale", (1.5,), {"by": 4})]),
    ("shout('a(b)c')", [("shout", ("a(b)c",), {})]),             # parentheses inside a string
    ('shout("x\\"y", 2)', [("shout", ('x"y', 2), {})]),          # escaped quote inside a string
    ("f(x) and g(1) are not tools", []),                           # unknown names are prose
    ("myadd(1,2) obj.add(1,2)", []),                               # not a whole identifier / a method
    ("no calls here", []),
    ("add(1,2)add(3,4)", [("add", (1, 2), {}), ("add", (3, 4), {})]),
    ("add([1, 2], 3)", [("add", ([1, 2], 3), {})]),               # literal lists parse; typing rejects later
])
def test_compact_calls(text, expected):
    calls = parse_tool_calls(text, names=NAMES)
    assert [(c.name, c.args, c.kwargs) for c in calls] == expected
    assert all(c.error is None for c in calls)
    for c in calls:  # the span covers exactly the call text
        assert text[c.start:c.end].startswith(c.name + "(") and text[c.start:c.end].endswith(")")


@pytest.mark.parametrize("text, name, error_part", [
    ("add(1,", "add", "unclosed"),
    ("add(x, 1)", "add", "literals"),
    ("add(1+2, 3)", "add", "literals"),
    ("add(**{'a': 1})", "add", "**kwargs"),
    ("add(1 2)", "add", "add(1 2)"),                               # a syntax error names the source
])
def test_compact_errors(text, name, error_part):
    (call,) = parse_tool_calls(text, names=NAMES)
    assert call.name == name and call.error is not None and error_part in call.error
    with pytest.raises(ToolError, match="add"):
        TOOLS.run(call)


def test_no_name_filter_accepts_any_identifier():
    calls = parse_tool_calls("f(1) g(x=2)")
    assert [(c.name, c.args, c.kwargs) for c in calls] == [("f", (1,), {}), ("g", (), {"x": 2})]


@pytest.mark.parametrize("text, expected", [
    ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', ("add", {"a": 1, "b": 2})),
    ('x <tool_call>\n{"name": "scale", "arguments": "{\\"x\\": 3}"}\n</tool_call> y', ("scale", {"x": 3})),
    ('<tool_call>{"name": "shout", "parameters": {"text": "hi"}}</tool_call>', ("shout", {"text": "hi"})),
])
def test_json_calls(text, expected):
    (call,) = parse_tool_calls(text, names=NAMES)
    assert (call.name, call.kwargs, call.args, call.error) == (*expected, (), None)


def test_json_without_closing_tag_is_accepted_when_complete():
    # Generation often stops at a stop string before the closing tag; complete JSON is still a call.
    (call,) = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}', names=NAMES)
    assert (call.name, call.kwargs, call.error) == ("add", {"a": 1, "b": 2}, None)


def test_json_and_compact_in_order_and_json_body_not_reparsed():
    text = 'add(1,2) <tool_call>{"name": "add", "arguments": {"a": 3, "b": 4}}</tool_call> add(5,6)'
    calls = parse_tool_calls(text, names=NAMES)
    assert [(c.args, c.kwargs) for c in calls] == [((1, 2), {}), ((), {"a": 3, "b": 4}), ((5, 6), {})]


@pytest.mark.parametrize("text, error_part", [
    ('<tool_call>{"name": "add", "arguments": {"a": 1</tool_call>', "bad <tool_call> JSON"),
    ('<tool_call>{"name": "add", "arguments": {"a": 1', "no </tool_call>"),
    ('<tool_call>["add"]</tool_call>', '"name"'),
    ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>', "arguments must be an object"),
])
def test_json_errors(text, error_part):
    (call,) = parse_tool_calls(text, names=NAMES)
    assert call.error is not None and error_part in call.error


@pytest.mark.parametrize("call, result", [
    (ToolCall("add", (2, 3)), "5"),
    (ToolCall("add", (), {"a": "4", "b": 5.0}), "9"),      # JSON-ish strings and whole floats coerce to int
    (ToolCall("scale", (3,)), "6.0"),                       # int -> float, default argument
    (ToolCall("shout", ("ab",), {"times": 2}), "ABAB"),
])
def test_run(call, result):
    assert TOOLS.run(call) == result


@pytest.mark.parametrize("call, error_part", [
    (ToolCall("nope", (1,)), "unknown tool 'nope'"),
    (ToolCall("add", (1,)), "missing a required argument: 'b'"),
    (ToolCall("add", (1, 2, 3)), "too many positional arguments"),
    (ToolCall("add", (1.5, 2)), "add(a): expected int, got float 1.5"),
    (ToolCall("add", (True, 2)), "expected int, got bool"),
    (ToolCall("add", ("x", 2)), "expected int, got str 'x'"),
    (ToolCall("shout", (3,)), "expected str, got int"),
    (ToolCall("boom", (1,)), "boom raised ZeroDivisionError: nope"),
])
def test_run_errors(call, error_part):
    with pytest.raises(ToolError) as e:
        TOOLS.run(call)
    assert error_part in str(e.value)


def test_describe_lists_typed_signatures():
    assert TOOLS.describe().splitlines() == [
        "add(a: int, b: int) -> int", "scale(x: float, by: float) -> float", "shout(text: str, times: int) -> str",
        "boom(a: int) -> int"]
