"""DAPO's soft overlong punishment on completion length (arXiv 2503.14476, eq. 13)."""

from __future__ import annotations

from rltune.reward import RewardInput


class LengthPenalty:
    """Penalty on the completion's token count L (len(completion_ids)), with the budget split as
    `max_len - cache_len` free tokens plus a `cache_len` soft zone:

        0                                         if L <= max_len - cache_len
        factor * (max_len - cache_len - L) / cache_len   in the soft zone (falls linearly to -factor)
        -factor                                   if L > max_len

    `factor` scales the whole penalty so that it stays continuous at L = max_len (DAPO uses 1.0).

    >>> from rltune.reward import RewardInput
    >>> inp = RewardInput(prompts=["q"] * 4, completions=[""] * 4,
    ...                   completion_ids=[[0] * 6, [0] * 9, [0] * 10, [0] * 11])
    >>> LengthPenalty(max_len=10, cache_len=4)(inp)
    [0.0, -0.75, -1.0, -1.0]
    >>> LengthPenalty(max_len=10, cache_len=4, factor=0.5)(inp)
    [0.0, -0.375, -0.5, -0.5]
    """

    def __init__(self, max_len: int, cache_len: int, factor: float = 1.0):
        if not 0 < cache_len <= max_len:
            raise ValueError(f"LengthPenalty needs 0 < cache_len <= max_len (got cache_len={cache_len}, "
                             f"max_len={max_len})")
        self.max_len, self.cache_len, self.factor = max_len, cache_len, factor

    def __call__(self, inp: RewardInput) -> list[float | None]:
        free = self.max_len - self.cache_len
        out: list[float | None] = []
        for ids in inp.completion_ids:
            n = len(ids)
            if n <= free:
                out.append(0.0)
            elif n <= self.max_len:
                out.append(self.factor * (free - n) / self.cache_len)
            else:
                out.append(-float(self.factor))
        return out
