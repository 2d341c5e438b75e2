"""Exact-match reward: 1.0 when the completion equals a dataset column's value."""

from __future__ import annotations

from rltune.reward import RewardError, RewardInput


class ExactMatch:
    """1.0 if the completion equals `str(meta[column])` (both stripped when `strip`), else 0.0;
    None (n/a) where the row's value is None. With `after`, only the text after the last `after` in the
    completion is compared (all of it when absent): worked solutions such as builtin:chain's "46,102".

    >>> from rltune.reward import RewardInput
    >>> inp = RewardInput(prompts=["1+1=", "2+2=", "3+3="], completions=[" 2\\n", "5", "6"],
    ...                   completion_ids=[[], [], []], meta={"answer": [2, 4, None]})
    >>> ExactMatch()(inp)
    [1.0, 0.0, None]
    >>> ExactMatch(strip=False)(inp)
    [0.0, 0.0, None]
    >>> ExactMatch(after=",")(RewardInput(prompts=["1+2+3="], completions=["3,6"], completion_ids=[[]],
    ...                                   meta={"answer": ["6"]}))
    [1.0]
    """

    def __init__(self, column: str = "answer", strip: bool = True, after: str | None = None):
        if after == "":
            raise ValueError("exact_match: `after` must be a non-empty separator or null")
        self.column, self.strip, self.after = column, strip, after

    def __call__(self, inp: RewardInput) -> list[float | None]:
        if self.column not in inp.meta:
            raise RewardError(f"ExactMatch needs the column {self.column!r} (available columns: "
                              f"{', '.join(sorted(inp.meta)) or 'none'}); set args.column")
        out: list[float | None] = []
        for completion, gold in zip(inp.completions, inp.meta[self.column]):
            if gold is None:
                out.append(None)
                continue
            if self.after is not None:
                completion = completion.rpartition(self.after)[2]
            a, b = (completion.strip(), str(gold).strip()) if self.strip else (completion, str(gold))
            out.append(1.0 if a == b else 0.0)
        return out
