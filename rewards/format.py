"""Format reward: 1.0 when the completion matches a regular expression (R1's think/answer template)."""

from __future__ import annotations

import re

from rltune.reward import RewardInput


class FormatReward:
    """1.0 if `re.match(pattern, completion, re.DOTALL)`, else 0.0. The default asks for
    `<think>…</think>` then `<answer>…</answer>` and nothing else (DeepSeek-R1's format reward).

    >>> from rltune.reward import RewardInput
    >>> inp = RewardInput(prompts=["q", "q"], completion_ids=[[], []], completions=[
    ...     "<think>2+2\\nis 4</think> <answer>4</answer>", "<answer>4</answer>"])
    >>> FormatReward()(inp)
    [1.0, 0.0]
    >>> FormatReward(pattern=r".*\\d$")(inp)
    [0.0, 0.0]
    """

    def __init__(self, pattern: str = r"^<think>.*?</think>\s*<answer>.*?</answer>$"):
        self.pattern = re.compile(pattern, re.DOTALL)

    def __call__(self, inp: RewardInput) -> list[float | None]:
        return [1.0 if self.pattern.match(c) else 0.0 for c in inp.completions]
