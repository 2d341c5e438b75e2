"""Two rewards a recipe names by file path (`use: examples/custom_reward/my_reward.py:<Attr>`).

* `DigitCredit` is native: a class whose instance takes one `RewardInput` for the whole batch. `args:` in the
  recipe go to its constructor (checked by `rltune validate`).
* `right_length` is TRL-style: `fn(prompts, completions, **kwargs)`; every dataset column arrives as a
  keyword, so naming `answer` in the signature receives the answer column (a misspelt column name is an
  error that lists the columns).

Both return one `float | None` per completion; None means "not applicable" and is left out of the weighted
sum (it is not a zero).
"""

from __future__ import annotations

from rltune.reward import RewardInput


class DigitCredit:
    """1.0 for the exact answer, else `partial` × the fraction of the answer's digits that are right and in
    place (a dense signal that a random-init model can climb); None where the row has no answer.

    >>> inp = RewardInput(prompts=["12+30=", "1+1=", "5+5="], completions=["42", "3", "19"],
    ...                   completion_ids=[[], [], []], meta={"answer": ["42", "2", None]})
    >>> DigitCredit(partial=0.5)(inp)
    [1.0, 0.0, None]
    >>> DigitCredit(partial=0.5)(RewardInput(["q"], ["158"], [[]], meta={"answer": ["150"]}))
    [0.3333333333333333]
    """

    def __init__(self, partial: float = 0.5, column: str = "answer"):
        self.partial, self.column = partial, column

    def __call__(self, inp: RewardInput) -> list[float | None]:
        out: list[float | None] = []
        for completion, gold in zip(inp.completions, inp.meta[self.column]):
            if gold is None:
                out.append(None)
                continue
            got, want = completion.strip(), str(gold).strip()
            if got == want:
                out.append(1.0)
                continue
            right = sum(a == b for a, b in zip(got, want))
            out.append(self.partial * right / max(len(want), 1))
        return out


def right_length(completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """TRL-style: 1.0 when the completion has as many characters as the answer (stripped), else 0.0.

    >>> right_length(completions=["42", "4", " 158\\n"], answer=["42", "42", "158"])
    [1.0, 0.0, 1.0]
    """
    return [float(len(c.strip()) == len(str(a).strip())) for c, a in zip(completions, answer)]
