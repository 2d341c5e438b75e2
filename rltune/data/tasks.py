"""Built-in synthetic tasks with verifiable answers, for CPU demos and tests (no downloads).

`addition`: "{a}+{b}=" -> "{a+b}", N-digit operands. The held-out test split is a fixed set of distinct
problems drawn with its own seed; training problems never contain a test problem. ADHint needs reference
solutions: for addition the reference is the answer itself, so `solution` = `answer`.
"""

from __future__ import annotations

import random
from typing import Callable

Rows = list[dict]


def _pair(rng: random.Random, digits: int) -> tuple[int, int]:
    hi = 10**digits - 1
    return rng.randint(0, hi), rng.randint(0, hi)


def addition_test(digits: int = 3, n_test: int = 500, test_seed: int = 1234) -> list[tuple[int, int]]:
    rng, seen, out = random.Random(test_seed), set(), []
    while len(out) < n_test:
        p = _pair(rng, digits)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def addition_train(digits: int, n: int, seed: int, n_test: int = 500, test_seed: int = 1234) -> list[tuple[int, int]]:
    held_out = set(addition_test(digits, n_test, test_seed))
    rng, out = random.Random(seed), []
    while len(out) < n:
        p = _pair(rng, digits)
        if p not in held_out:
            out.append(p)
    return out


def _rows(pairs: list[tuple[int, int]]) -> Rows:
    return [{"prompt": f"{a}+{b}=", "answer": str(a + b), "solution": str(a + b)} for a, b in pairs]


def addition(split: str, digits: int = 3, n_train: int = 6400, train_seed: int = 142, n_test: int = 500,
             test_seed: int = 1234) -> Rows:
    if split == "test":
        return _rows(addition_test(digits, n_test, test_seed))
    return _rows(addition_train(digits, n_train, train_seed, n_test, test_seed))


TASKS: dict[str, Callable[..., Rows]] = {"addition": addition}
