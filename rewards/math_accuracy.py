"""Math accuracy: is the completion's final answer equal to the gold answer? (via math-verify)."""

from __future__ import annotations

import threading

from math_verify import parse, verify

from rltune.reward import RewardError, RewardInput


class MathAccuracy:
    """1.0 if math-verify finds the completion's answer (the last `\\boxed{}`, a `$…$` expression or a
    plain number) equal to the gold answer in `column`, else 0.0; None (n/a) where the gold answer is
    missing or cannot be parsed. Equality is mathematical: `\\boxed{1/2}` matches 0.5.

    math-verify's timeouts use SIGALRM, which works only in the main thread: there `timeout_s` bounds each
    parse and comparison; in other threads (a reward `timeout_s` in the recipe, a Ray worker thread) they
    run without one and the manager's timeout is the guard.

    >>> from rltune.reward import RewardInput
    >>> inp = RewardInput(prompts=["q"] * 4, completion_ids=[[]] * 4,
    ...                   completions=["so \\\\boxed{1/2}", "The answer is 42", "I don't know", "7"],
    ...                   meta={"answer": ["0.5", "42", "42", ""]})
    >>> MathAccuracy()(inp)
    [1.0, 1.0, 0.0, None]
    """

    def __init__(self, column: str = "answer", timeout_s: int = 5):
        self.column, self.timeout_s = column, timeout_s

    def __call__(self, inp: RewardInput) -> list[float | None]:
        if self.column not in inp.meta:
            raise RewardError(f"MathAccuracy needs the column {self.column!r} (available columns: "
                              f"{', '.join(sorted(inp.meta)) or 'none'}); set args.column")
        t = self.timeout_s if threading.current_thread() is threading.main_thread() else None
        golds: dict[str, list] = {}  # the G samples of a prompt share one gold answer: parse it once
        out: list[float | None] = []
        for completion, gold in zip(inp.completions, inp.meta[self.column]):
            key = "" if gold is None else str(gold).strip()
            if key not in golds:
                # gold is LaTeX math without delimiters ("1+x" alone would extract the number 1)
                golds[key] = (parse(f"${key}$", parsing_timeout=t) or parse(key, parsing_timeout=t)) if key else []
            if not golds[key]:
                out.append(None)
                continue
            pred = parse(completion, parsing_timeout=t)
            out.append(1.0 if pred and verify(golds[key], pred, timeout_seconds=t) else 0.0)
        return out
