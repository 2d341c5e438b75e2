"""`chain`: multi-step addition with worked solutions, a builtin task for hint and sparse-reward experiments.

Prompt "{x1}+{x2}+...+{xk}=", worked solution = the running sums joined by commas, answer = the last one:

    12+34+56=  ->  solution "46,102", answer "102"

A policy trained on the solutions writes its intermediate results before the answer, so a prefix of the
solution (ADHint's hint, arXiv 2512.13095) is a real reasoning step, not characters of the answer. Score it
with `exact_match` and `after: ","` (the text after the last comma is compared with the answer). The test split
is a fixed set of distinct problems drawn with its own seed; training problems never contain one.
"""

from __future__ import annotations

import random

__all__ = ["chain_rows", "chain_solution"]


def chain_solution(xs: list[int]) -> str:
    """The running sums after the first operand: [12, 34, 56] -> "46,102"."""
    sums, s = [], xs[0]
    for x in xs[1:]:
        s += x
        sums.append(str(s))
    return ",".join(sums)


def _draw(rng: random.Random, terms: int, digits: int) -> tuple[int, ...]:
    return tuple(rng.randint(0, 10**digits - 1) for _ in range(terms))


def chain_rows(split: str, terms: int = 3, digits: int = 2, n_train: int = 6400, train_seed: int = 142,
               n_test: int = 500, test_seed: int = 1234) -> list[dict]:
    """Rows {prompt, answer, solution}. `terms` operands of up to `digits` digits each (terms >= 2)."""
    if terms < 2 or digits < 1:
        raise ValueError(f"chain needs terms >= 2 and digits >= 1, got terms={terms}, digits={digits}")
    if n_test > (10**digits) ** terms // 2:
        raise ValueError(f"n_test={n_test} is too many distinct problems for terms={terms}, digits={digits}")
    rng, test, seen = random.Random(test_seed), [], set()
    while len(test) < n_test:
        p = _draw(rng, terms, digits)
        if p not in seen:
            seen.add(p)
            test.append(p)
    if split == "test":
        probs = test
    else:
        rng, probs = random.Random(train_seed), []
        while len(probs) < n_train:
            p = _draw(rng, terms, digits)
            if p not in seen:
                probs.append(p)
    return [{"prompt": "+".join(map(str, p)) + "=", "answer": str(sum(p)), "solution": chain_solution(list(p))}
            for p in probs]
