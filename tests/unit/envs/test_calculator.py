"""The calculator tool-use environment and its task rows."""

import pytest

from rltune.envs.calculator import Calculator, calculator_rows


def _env(answer: int, **kw) -> Calculator:
    env = Calculator(**kw)
    env.reset({"answer": str(answer), "expr": "x"})
    return env


@pytest.mark.parametrize("action, expected", [
    ("mul(23,4)", (" =92;", 0.0, False)),
    ('<tool_call>{"name": "sub", "arguments": {"a": 5, "b": 7}}</tool_call>', (" =-2;", 0.0, False)),
    ("answer(107)", ("", 1.0, True)),
    ("answer(106)", ("", 0.0, True)),
    ("the answer is 107", (" error: no tool call;", 0.0, False)),
    ("mul(x,4)", (" error: mul(x,4): arguments must be literals;", 0.0, False)),
    ("add(1)", (" error: add: missing a required argument: 'b';", 0.0, False)),
    ("mul(2,3) add(1,1)", (" =6;", 0.0, False)),            # one call per turn by default
])
def test_step(action, expected):
    assert _env(107).step(action)[:3] == expected


def test_several_calls_per_turn():
    assert _env(1, max_calls_per_turn=3).step("mul(2,3) add(1,1)")[0] == " =6; =2;"
    assert _env(2, max_calls_per_turn=3).step("add(1,1) answer(2) add(5,5)")[1:3] == (1.0, True)


def test_rows_and_expert_transcript_solve_the_task():
    rows = calculator_rows("test", n_ops=3, digits=2, n_test=20)
    assert rows == calculator_rows("test", n_ops=3, digits=2, n_test=20)
    for r in rows:
        value = None
        for tok in r["expr"].replace("+", " + ").replace("-", " - ").replace("*", " * ").split():
            if tok in "+-*":
                op = tok
            else:
                value = int(tok) if value is None else {"+": value + int(tok), "-": value - int(tok),
                                                        "*": value * int(tok)}[op]
        assert r["answer"] == str(value) and r["prompt"] == r["expr"] + "="
        env, turns = _env(value), r["solution"].split("<eos>")
        for k, turn in enumerate(turns):
            obs, reward, done, _ = env.step(turn if k == 0 else turn.split(";", 1)[1])
            if k + 1 < len(turns):
                assert turns[k + 1].startswith(obs)
        assert (reward, done, len(turns)) == (1.0, True, 4)
    assert calculator_rows("train", n_train=5)[0] != rows[0]
    with pytest.raises(ValueError, match="ops"):
        calculator_rows("test", ops="+/")
