"""Calculator tool use: solve an arithmetic chain by calling typed tools, then submit the answer.

The row's `expr` is a chain evaluated left to right, e.g. `23*4+15` = (23*4)+15 = 107 (the `answer` column).
Numbers are too long for a tiny model to multiply in its head, so it must call the tools `add`, `sub`, `mul`
(compact `mul(23,4)` or Hermes JSON `<tool_call>...`, see rltune/envs/tools.py) and copy each result from the
observation into the next call. `answer(107)` ends the episode: reward 1.0 if right, else 0.0. A turn without a
call, or with a bad call, gets an error observation and costs a turn.

    23*4+15= | mul(23,4)<eos> =92;add(92,15)<eos> =107;answer(107)<eos>
"""

from __future__ import annotations

import random
from typing import Any

from rltune.envs.tools import ToolError, ToolSet

__all__ = ["Calculator", "calculator_rows", "add", "sub", "mul"]


def add(a: int, b: int) -> int:
    return a + b


def sub(a: int, b: int) -> int:
    return a - b


def mul(a: int, b: int) -> int:
    return a * b


def answer(x: int) -> int:
    return x


_OPS = {"+": "add", "-": "sub", "*": "mul"}
_TOOLS = ToolSet([add, sub, mul, answer])


class Calculator:
    """One episode. Args: max_calls_per_turn: tool calls executed per turn (the rest are ignored)."""

    def __init__(self, max_calls_per_turn: int = 1):
        self.max_calls_per_turn = max_calls_per_turn
        self.target: int | None = None

    def reset(self, row: dict[str, Any]) -> str:
        self.target = int(row["answer"])
        return ""

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self.target is None:
            raise RuntimeError("step() before reset()")
        calls = _TOOLS.parse(action)[: self.max_calls_per_turn]
        if not calls:
            return " error: no tool call;", 0.0, False, {"calls": 0}
        obs = []
        for call in calls:
            try:
                result = _TOOLS.run(call)
            except ToolError as e:
                obs.append(f" error: {e};")
                continue
            if call.name == "answer":
                return "", float(int(result) == self.target), True, {"calls": len(calls), "answer": int(result)}
            obs.append(f" ={result};")
        return "".join(obs), 0.0, False, {"calls": len(calls)}


def _chain(rng: random.Random, n_ops: int, digits: int, ops: str) -> tuple[str, int, str]:
    hi = 10**digits - 1
    value = rng.randint(2, hi)
    expr, calls = str(value), []
    for _ in range(n_ops):
        op, x = rng.choice(ops), rng.randint(2, hi)
        new = {"+": value + x, "-": value - x, "*": value * x}[op]
        calls.append(f"{_OPS[op]}({value},{x})<eos> ={new};")
        expr, value = f"{expr}{op}{x}", new
    return expr, value, "".join(calls) + f"answer({value})"


def calculator_rows(split: str, n_ops: int = 2, digits: int = 2, ops: str = "+-*", n_train: int = 4096,
                    train_seed: int = 11, n_test: int = 200, test_seed: int = 4321) -> list[dict]:
    """Builtin task rows {prompt, expr, answer, solution}; `solution` is the expert's tool-use transcript (the
    last <eos> is left to the SFT trainer). Train and test draw with their own seeds."""
    if bad := set(ops) - set(_OPS):
        raise ValueError(f"ops may hold + - * only, got {sorted(bad)}")
    rng = random.Random(test_seed if split == "test" else train_seed)
    rows = []
    for _ in range(n_test if split == "test" else n_train):
        expr, value, solution = _chain(rng, n_ops, digits, ops)
        rows.append({"prompt": f"{expr}=", "expr": expr, "answer": str(value), "solution": solution})
    return rows
