"""Guess-the-number: a multi-turn game with feedback and a verifiable outcome (CPU demos, the EMPG bench).

The secret is the row's `secret` column, an integer in [low, high]. Each model turn is one guess (the first
integer in the text); the environment answers `higher;` or `lower;` (where the secret lies), or `invalid;` when
the turn holds no integer in range. Reward 1.0 on the turn that hits the secret (the episode ends), else 0.0.
A transcript for secret 11 in 1..16 (<eos> ends each model turn):

    guess 1-16: | 8<eos> higher;12<eos> lower;11<eos>         (prompt | model turns and observations)

Binary search wins in ⌈log2(high-low+2)⌉ turns (4 turns win 15 of 16 secrets); guessing uniformly among the
numbers still possible wins ~57% with 4 turns. `guess_number_rows` makes the builtin task rows, with an
expert transcript in `solution` for the SFT warm start (expert "random" leaves RL that headroom).
"""

from __future__ import annotations

import random
import re
from typing import Any, Literal

__all__ = ["GuessNumber", "guess_number_rows", "expert_transcript"]

_INT = re.compile(r"-?\d+")


class GuessNumber:
    """One episode of the game. Args: low, high: the secret's range (checked against the row's secret)."""

    def __init__(self, low: int = 1, high: int = 16):
        if low > high:
            raise ValueError(f"low={low} > high={high}")
        self.low, self.high = low, high
        self.secret: int | None = None

    def reset(self, row: dict[str, Any]) -> str:
        secret = int(row["secret"])
        if not self.low <= secret <= self.high:
            raise ValueError(f"secret {secret} outside [{self.low}, {self.high}]")
        self.secret = secret
        return ""

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self.secret is None:
            raise RuntimeError("step() before reset()")
        m = _INT.search(action)
        guess = int(m.group()) if m else None
        if guess is None or not self.low <= guess <= self.high:
            return " invalid;", 0.0, False, {"guess": guess}
        if guess == self.secret:
            return "", 1.0, True, {"guess": guess}
        return (" higher;" if guess < self.secret else " lower;"), 0.0, False, {"guess": guess}


def expert_transcript(secret: int, low: int, high: int, max_turns: int, rng: random.Random,
                      expert: Literal["binary", "random"] = "random") -> str:
    """The expert's episode as SFT text (the last turn's <eos> is left to the SFT trainer). `binary` guesses
    the midpoint of the numbers still possible, `random` any of them uniformly."""
    a, b, parts = low, high, []
    for t in range(max_turns):
        g = (a + b) // 2 if expert == "binary" else rng.randint(a, b)
        parts.append(str(g))
        if g == secret or t == max_turns - 1:
            break
        parts.append("<eos>" + (" higher;" if g < secret else " lower;"))
        a, b = (g + 1, b) if g < secret else (a, g - 1)
    return "".join(parts)


def guess_number_rows(split: str, low: int = 1, high: int = 16, max_turns: int = 4, n_train: int = 2048,
                      train_seed: int = 7, expert: Literal["binary", "random"] = "random") -> list[dict]:
    """Builtin task rows {prompt, secret, answer, solution}. `test` holds every secret once (an exact
    success rate); `train` draws n_train secrets with `train_seed` (the SFT data draws its own)."""
    rng = random.Random(train_seed)
    secrets = list(range(low, high + 1)) if split == "test" else [rng.randint(low, high) for _ in range(n_train)]
    prompt = f"guess {low}-{high}:"
    return [{"prompt": prompt, "secret": s, "answer": str(s),
             "solution": expert_transcript(s, low, high, max_turns, rng, expert)} for s in secrets]
